"""Inference backends in one registry: exact, importance, svi, nuts, analytic, cluster_engine."""

# Importing the backend modules registers them.
from bayes_defense.inference import analytic as _analytic  # noqa: F401
from bayes_defense.inference import cluster_engine as _cluster_engine  # noqa: F401
from bayes_defense.inference import exact as _exact  # noqa: F401
from bayes_defense.inference import importance as _importance  # noqa: F401
from bayes_defense.inference import nuts as _nuts  # noqa: F401
from bayes_defense.inference import svi as _svi  # noqa: F401
from bayes_defense.inference.base import (
    Backend,
    Problem,
    Query,
    backends,
    get_backend,
    register_backend,
)

__all__ = ["Backend", "Problem", "Query", "backends", "get_backend", "register_backend"]
