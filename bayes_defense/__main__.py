"""Allow ``python -m bayes_defense``."""

import sys

from bayes_defense.cli import main

sys.exit(main())
