"""Submodules that share their name with the function they export.

``bd.explain`` and ``bd.models.cluster`` are functions (DESIGN.md), defined in
the submodules ``bayes_defense.explain`` and ``bayes_defense.models.cluster``. Importing such
a submodule makes Python bind the package attribute of the same name to the
module, replacing the function. Making the module callable, forwarding to its
function, keeps ``bd.explain(...)`` and ``bd.models.cluster(...)`` working whichever
of the two the attribute holds, while ``import bayes_defense.explain as m`` still
gives the module.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def make_module_callable(module_name: str) -> None:
    """Make ``sys.modules[module_name]`` callable as its same-named function.

    Examples
    --------
    >>> import bayes_defense as bd
    >>> import bayes_defense.explain
    >>> callable(bd.explain)
    True
    """
    sys.modules[module_name].__class__ = _CallableModule
