"""Former home of the ``simulate`` subcommand, now :mod:`bayes_defense.commands.simulate` (names kept)."""

from bayes_defense.commands.simulate import register, run_simulate, scenario_from_args

__all__ = ["register", "run_simulate", "scenario_from_args"]
