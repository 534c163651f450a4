"""The method registry: one entry per fine-tuning method, found by scanning this package.

Every module here except ``spec`` and ``terms`` is an entry that defines ``SPEC`` (a
:class:`MethodSpec`). Adding a method is one entry module (plus its executor folder and the policy
rows that choose it): nothing else lists the methods. Entries import only ``spec``, ``terms`` and
``ruleengine.trainable``; nothing they import imports this package back.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from functools import cache
from typing import Any

from .spec import HYPERPARAMETERS, CostTerms, MemoryTerms, MethodConfig, MethodSpec

__all__ = ["HYPERPARAMETERS", "CostTerms", "MemoryTerms", "MethodConfig", "MethodSpec", "UnknownMethod", "get",
           "method_names", "ranked_method_names", "registry", "trainable_params"]

_NOT_ENTRIES = frozenset({"spec", "terms"})


class UnknownMethod(ValueError):
    """No method of this name is registered; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown method"


@cache
def registry() -> dict[str, MethodSpec]:
    """Return every registered method by name, in listing order (``MethodSpec.order``).

    Raises RuntimeError when an entry module has no ``SPEC`` or two entries share a name or order.
    """
    specs: list[MethodSpec] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_ENTRIES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, MethodSpec):
            raise RuntimeError(f"method entry {module.__name__} defines no SPEC (a MethodSpec)")
        specs.append(spec)
    names = [s.name for s in specs]
    orders = [s.order for s in specs]
    if len(set(names)) != len(names) or len(set(orders)) != len(orders):
        raise RuntimeError(f"method entries clash in name or order: {sorted(zip(orders, names, strict=True))}")
    return {s.name: s for s in sorted(specs, key=lambda s: s.order)}


def get(name: str) -> MethodSpec:
    """Return the entry of method ``name``; raises UnknownMethod naming the registered methods."""
    try:
        return registry()[name]
    except KeyError:
        raise UnknownMethod(f"unknown method `{name}`; use one of {', '.join(registry())}") from None


@cache
def method_names() -> tuple[str, ...]:
    """Return the registered method names in listing order."""
    return tuple(registry())


@cache
def ranked_method_names() -> tuple[str, ...]:
    """Return the methods that take a rank (the LoRA family), in listing order."""
    return tuple(s.name for s in registry().values() if s.ranked)


def trainable_params(arch: Any, method: str, *, rank: int | None = None,
                     target_modules: str | Iterable[str] | None = "all-linear",
                     num_virtual_tokens: int | None = None, adapter_size: int | None = None,
                     use_dora: bool = False) -> int:
    """Return the number of trainable parameters of ``method`` on ``arch`` (peft's count for peft methods).

    ``rank`` is LoRA's r (QLoRA, DoRA) or AdaLoRA's init_r; ``use_dora`` adds DoRA's magnitude
    vectors to lora/qlora; ``target_modules`` as in ``ruleengine.trainable.resolve_targets``.
    Raises UnknownMethod for an unknown method and ValueError for a missing or non-positive
    rank / num_virtual_tokens / adapter_size, or bad target modules.
    """
    spec = get(method)
    targets = tuple(target_modules) if isinstance(target_modules, (list, tuple)) else target_modules
    cfg = MethodConfig(method=method, rank=rank, target_modules=targets, num_virtual_tokens=num_virtual_tokens,
                       adapter_size=adapter_size, use_dora=use_dora)
    return spec.trainable(arch, cfg)
