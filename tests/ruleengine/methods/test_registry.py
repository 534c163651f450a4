"""The method registry: one entry per method, and everything method-specific found from it."""

from __future__ import annotations

import dataclasses

import pytest

from ruleengine import methods
from ruleengine.architecture import infer_from_params
from ruleengine.cost import CostConstants, estimate_cost
from ruleengine.memory import MemoryConstants, MethodConfig, TrainingSetup, estimate
from ruleengine.vocabulary import METHODS, RANKED_METHODS


def test_the_registry_lists_every_method_once_in_order():
    names = list(methods.registry())
    assert names == ["full_ft", "lora", "qlora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "adapter",
                     "adalora"]
    assert tuple(names) == METHODS
    assert RANKED_METHODS == ("lora", "qlora", "dora", "adalora")


def test_unknown_methods_are_refused_with_the_registered_names():
    with pytest.raises(methods.UnknownMethod, match="unknown method `loha`; use one of full_ft, lora"):
        methods.get("loha")
    with pytest.raises(ValueError, match="unknown method `loha`"):  # callers that catch ValueError keep working
        methods.trainable_params(infer_from_params(7e9), "loha", rank=8)


def test_vocabulary_comes_from_the_entry():
    assert methods.get("lora").uses("rank") and not methods.get("ia3").uses("rank")
    assert methods.get("qlora").uses("quantization") and methods.get("qlora").memory.base == "nf4"
    assert methods.get("prefix_tuning").uses("num_virtual_tokens")
    assert methods.get("full_ft").memory.trains_base and methods.get("full_ft").cost.trains_base


def test_a_new_method_is_one_entry(monkeypatch):
    """A method added to the registry is estimated, counted and costed with no other change."""
    lora = methods.get("lora")
    loha = dataclasses.replace(lora, name="loha", label="LoHa", order=99,
                               trainable=lambda arch, cfg: 2 * lora.trainable(arch, dataclasses.replace(cfg, method="lora")),
                               memory=dataclasses.replace(lora.memory, layer=None), executor="executors.lora:LoraExecutor")
    table = dict(methods.registry())
    table["loha"] = loha
    monkeypatch.setattr(methods, "registry", lambda: table)
    arch = infer_from_params(7e9)
    consts = MemoryConstants.from_policy(None)
    # without checkpointing every layer's adapter tensors count (with it, only the recomputed layer's excess over
    # the logits does)
    setup = TrainingSetup(micro_batch_size=1, seq_len=1024, gradient_checkpointing=False)
    est = estimate(arch, MethodConfig("loha", rank=8, target_modules="attention"), setup, consts)
    base = estimate(arch, MethodConfig("lora", rank=8, target_modules="attention"), setup, consts)
    assert est.trainable_params == 2 * base.trainable_params
    assert est.activations_gib < base.activations_gib  # its entry keeps no adapter activations
    cost = estimate_cost(arch, MethodConfig("loha", rank=8, target_modules="attention"), setup, tokens_total=1e6,
                         epochs=1, gpu_tflops=312, price_per_hour=4.1, constants=CostConstants.from_policy(None))
    assert cost.gpu_hours > 0


def test_trainable_params_dispatches_to_the_entry_rule():
    arch = infer_from_params(7e9)
    lora = methods.trainable_params(arch, "lora", rank=16, target_modules="all-linear")
    dora = methods.trainable_params(arch, "dora", rank=16, target_modules="all-linear")
    also_dora = methods.trainable_params(arch, "lora", rank=16, target_modules="all-linear", use_dora=True)
    ada = methods.trainable_params(arch, "adalora", rank=16, target_modules="all-linear")
    layers, modules = arch.num_layers, arch.linear_modules()
    assert dora - lora == also_dora - lora == layers * sum(d_out for _, d_out in modules.values())
    assert ada - lora == layers * 16 * len(modules)
