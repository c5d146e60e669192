"""Exceptions a user can act on, shared by every part of the package.

Every message says what was expected, what came, and what to do instead. All
of them subclass :class:`ValueError` (bad input is a value problem) through
:class:`BayesDefenseError`, so callers can catch the whole family at once.
"""

from __future__ import annotations

__all__ = [
    "BayesDefenseError",
    "InvalidInputError",
    "UnknownSiteError",
    "ImpossibleEvidenceError",
    "UnsupportedModelError",
    "DegenerateWeightsError",
    "ConfigError",
    "MalformedEventError",
]


class BayesDefenseError(ValueError):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(BayesDefenseError):
    """An argument has the wrong type, shape, range or name."""


class UnknownSiteError(InvalidInputError):
    """A ``do``, ``evidence`` or query names a site the model does not have."""


class ImpossibleEvidenceError(BayesDefenseError):
    """The evidence has probability (or density) zero under the model."""


class UnsupportedModelError(BayesDefenseError):
    """A backend cannot answer this model or query; the message names one that can."""


class DegenerateWeightsError(BayesDefenseError):
    """Every importance weight vanished: the sample carries no information."""


class ConfigError(InvalidInputError):
    """A simulator or command-line configuration is invalid."""


class MalformedEventError(InvalidInputError):
    """An event or a log line does not follow the event schema."""
