"""Former home of the ``fit`` subcommand, now :mod:`bayes_defense.commands.fit` (names kept)."""

from bayes_defense.commands.fit import register, run_fit

__all__ = ["register", "run_fit"]
