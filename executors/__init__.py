"""Executors: turn a decision's verdict into a real training run, one registered executor per method.

The registry works the way peft registers its tuners: every method folder (``executors/lora``,
``executors/qlora`` ...) decorates its executor class with :func:`register` in its own
``__init__.py``, and this package imports the folders at the bottom of this file.

Importing ``executors`` (or ``executors.cli``) never imports torch, transformers or peft: the
executors import them lazily, only in the methods that build or train a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .base import Executor

__all__ = ["UnknownMethodError", "available_methods", "get_executor", "register"]

_REGISTRY: dict[str, type[Executor]] = {}
T = TypeVar("T", bound=type)


class UnknownMethodError(KeyError):
    """No executor is registered under this method name."""


def register(name: str) -> Callable[[T], T]:
    """Return a class decorator that registers an Executor subclass under method ``name``.

    The decorated class gets ``name`` as its ``method`` attribute. Raises ValueError when another
    class is already registered under ``name`` (re-registering the same class is a no-op).
    """

    def decorator(cls: T) -> T:
        """Register ``cls`` and return it unchanged (raises ValueError on a name clash)."""
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"executor `{name}` is already registered by {existing.__module__}.{existing.__name__}")
        cls.method = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_executor(method: str) -> Executor:
    """Return a new executor instance for ``method``.

    Raises UnknownMethodError (a KeyError) naming the registered methods when there is none.
    """
    try:
        cls = _REGISTRY[method]
    except KeyError:
        raise UnknownMethodError(f"no executor for method `{method}`; registered: "
                                 + ", ".join(available_methods())) from None
    return cls()


def available_methods() -> list[str]:
    """Return the registered method names, sorted."""
    return sorted(_REGISTRY)


# Each method folder registers itself on import (keep this list in sync with the folders).
from . import adalora, adapter, dora, full_ft, ia3, lora, prefix_tuning, prompt_tuning, qlora  # noqa: E402,F401
