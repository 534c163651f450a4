"""Which executor trains each method: read from the method's registry entry (``ruleengine.methods``).

A method's entry names its executor as ``"module:Class"``; the class is imported on first use and
must be an ``Executor`` whose ``method`` is the entry's name. There is no list of executors to keep
in sync: adding a method is its entry, its executor folder and the policy rows that choose it.
Importing this module imports neither the executors nor torch.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

from ruleengine import methods

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .base import Executor

__all__ = ["ExecutorMismatch", "UnknownMethodError", "available_methods", "executor_class", "get_executor"]


class UnknownMethodError(KeyError):
    """No method of this name is registered (the message lists the registered ones)."""


class ExecutorMismatch(TypeError):
    """A registry entry names something that is not the Executor of that method."""


@cache
def executor_class(method: str) -> type[Executor]:
    """Return the Executor class of ``method``, imported from its registry entry.

    Raises UnknownMethodError for an unknown method and ExecutorMismatch when the entry names
    something that is not an Executor subclass whose ``method`` is ``method``.
    """
    from .base import Executor

    try:
        spec = methods.get(method)
    except methods.UnknownMethod:
        raise UnknownMethodError(f"no executor for method `{method}`; registered: "
                                 + ", ".join(available_methods())) from None
    module_name, _, attr = spec.executor.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Executor)) or cls.method != method:
        raise ExecutorMismatch(f"method `{method}` names `{spec.executor}` as its executor, which is not an "
                               f"Executor with method = {method!r}")
    return cls


def get_executor(method: str) -> Executor:
    """Return a new executor instance for ``method`` (see ``executor_class`` for the errors)."""
    return executor_class(method)()


def available_methods() -> list[str]:
    """Return the registered method names, sorted."""
    return sorted(methods.method_names())
