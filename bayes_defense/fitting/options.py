"""Validation of the options every fit takes: the method and the sizes of the inference."""

from __future__ import annotations

from bayes_defense.errors import InvalidInputError

__all__ = ["METHODS", "LEAST", "check_method", "check_sizes"]

#: Inference methods every fitted model offers.
METHODS = ("svi", "nuts")

#: The least value each size option may take.
LEAST = {"num_samples": 4, "num_chains": 1, "num_steps": 1, "batch_size": 1, "num_warmup": 0, "ppc_draws": 0}


def check_method(method: str) -> None:
    """Refuse a method other than ``"svi"`` or ``"nuts"``.

    Examples
    --------
    >>> check_method("mcmc")
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: method must be 'svi' or 'nuts', got 'mcmc'
    """
    if method not in METHODS:
        raise InvalidInputError(f"method must be 'svi' or 'nuts', got {method!r}")


def check_sizes(**sizes: int) -> None:
    """Refuse sizes that are not integers of at least their :data:`LEAST` value.

    Examples
    --------
    >>> check_sizes(num_samples=1000, num_steps=0)
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: num_steps must be an integer >= 1, got 0
    """
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < LEAST[name]:
            raise InvalidInputError(f"{name} must be an integer >= {LEAST[name]}, got {value!r}")
