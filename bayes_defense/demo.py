"""Former home of the ``demo`` subcommand, now :mod:`bayes_defense.commands.demo` (names kept)."""

from bayes_defense.commands.demo import demo_scenario, register, run_demo

__all__ = ["register", "run_demo", "demo_scenario"]
