"""The streaming defender: ``bd.StreamingDefender``, online Bayesian beliefs about attacks from an event log.

``StreamingDefender`` is the package's default defender: the model filter
(:class:`bayes_defense.stream.model_filter.ModelDefender`), which filters the
cluster model's attacks, signals and benign faults online and runs the
shipped default posterior unless given one
(:func:`bayes_defense.fitting.signal_posterior.default_posterior`). The
hand-scored defender of earlier releases is kept as a named baseline,
``scored`` (:class:`bayes_defense.stream.scored.ScoredDefender`); its
parameter names (``PARAMETER_KEYS``, ``default_parameters``, ...) are
re-exported here for code that imported them from this module. Alerts,
beliefs and event admission, shared by both, live in
:mod:`bayes_defense.stream.base`.

Examples
--------
>>> from bayes_defense.stream.defender import StreamingDefender, Belief
>>> isinstance(StreamingDefender(planner=None).belief, Belief), StreamingDefender.__name__
(True, 'ModelDefender')
"""

from __future__ import annotations

from typing import Any

from bayes_defense.errors import InvalidInputError
from bayes_defense.stream.base import Alert, Belief
from bayes_defense.stream.model_filter import ModelDefender
from bayes_defense.stream.scored import (
    ATTACK_HYPOTHESES,
    COUNTERMEASURE_FOR,
    PARAMETER_KEYS,
    PHASES,
    ScoredDefender,
    check_parameters,
    default_parameters,
    parameter_problem,
)

StreamingDefender = ModelDefender

#: The defenders a command or sweep can name: ``scored`` (:mod:`bayes_defense.stream.scored`) and ``model``
#: (the model filter, :mod:`bayes_defense.stream.model_filter`).
DEFENDERS = ("scored", "model")
#: The one the package runs when none is named.
DEFAULT_DEFENDER = "model"

__all__ = ["ATTACK_HYPOTHESES", "COUNTERMEASURE_FOR", "DEFAULT_DEFENDER", "DEFENDERS", "PARAMETER_KEYS", "PHASES",
           "Alert", "Belief", "ModelDefender", "ScoredDefender", "StreamingDefender", "check_parameters",
           "choose_defender", "defender_class", "default_parameters", "parameter_problem"]


def defender_class(name: str) -> type:
    """The class of the defender named ``name`` (one of :data:`DEFENDERS`).

    Examples
    --------
    >>> defender_class("model").__name__, defender_class("scored").__name__
    ('ModelDefender', 'ScoredDefender')
    """
    if name == "scored":
        return ScoredDefender
    if name == "model":
        return ModelDefender
    raise InvalidInputError(f"unknown defender {name!r}; expected one of {', '.join(DEFENDERS)}")


def choose_defender(name: str | None = None, *, posterior: Any = None, observation_map: Any = None) -> str:
    """Which defender runs, given what the user named and gave; a clear error where they disagree.

    A posterior decides by what it was fitted for (``signal_parameters``: the
    model filter; ``defender_parameters``: the scored defender), an
    observation map needs the model filter (the scored defender reads the
    schema-1.0 vocabulary only), and otherwise :data:`DEFAULT_DEFENDER` runs.

    Examples
    --------
    >>> choose_defender(), choose_defender(observation_map="plenum"), choose_defender("scored")
    ('model', 'model', 'scored')
    >>> choose_defender("scored", observation_map="plenum")
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: the scored defender reads the schema-1.0 vocabulary only and takes no observation map; drop the map or run the model filter (--defender model)
    """
    if name is not None and name not in DEFENDERS:
        raise InvalidInputError(f"unknown defender {name!r}; expected one of {', '.join(DEFENDERS)}")
    fitted_for = None
    if posterior is not None:
        if callable(getattr(posterior, "signal_parameters", None)):
            fitted_for = "model"
        elif callable(getattr(posterior, "defender_parameters", None)):
            fitted_for = "scored"
        else:
            raise InvalidInputError(f"the posterior ({type(posterior).__name__}) was fitted for neither defender; give "
                                    "one written by `bayes-defense fit` on event logs")
    if name is None:
        name = fitted_for or ("model" if observation_map is not None else DEFAULT_DEFENDER)
    if fitted_for is not None and fitted_for != name:
        raise InvalidInputError(f"the posterior was fitted for the {fitted_for} defender, not the {name} one; refit "
                                f"with `bayes-defense fit --defender {name}` or run --defender {fitted_for}")
    if name == "scored" and observation_map is not None:
        raise InvalidInputError("the scored defender reads the schema-1.0 vocabulary only and takes no observation "
                                "map; drop the map or run the model filter (--defender model)")
    return name
