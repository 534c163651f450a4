"""The executor registry, and the rule that the decision path never imports torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from executors import ExecutorMismatch, UnknownMethodError, available_methods, executor_class, get_executor
from executors.base import Executor
from ruleengine.paths import example

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "trl", "pyarrow", "matplotlib",
         "tensorboard", "wandb", "mlflow", "huggingface_hub")


def test_every_method_of_the_vocabulary_has_an_executor():
    from ruleengine.vocabulary import METHODS

    assert available_methods() == sorted(METHODS)
    for method in METHODS:
        ex = get_executor(method)
        assert isinstance(ex, Executor) and ex.method == method


def test_qlora_and_dora_reuse_the_lora_recipe():
    from executors.lora import LoraExecutor

    qlora, dora = get_executor("qlora"), get_executor("dora")
    assert isinstance(qlora, LoraExecutor) and qlora.always_quantized
    assert isinstance(dora, LoraExecutor) and dora.use_dora
    assert type(qlora).peft_kwargs is LoraExecutor.peft_kwargs  # not a copy


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(UnknownMethodError, match="registered: adalora, adapter"):
        get_executor("loha")


def test_each_method_entry_names_its_executor():
    from ruleengine import methods

    for name, spec in methods.registry().items():
        cls = executor_class(name)
        assert f"{cls.__module__}:{cls.__name__}".endswith(spec.executor.split(":")[1])
        assert cls.method == name


def test_an_entry_naming_another_methods_executor_is_refused(monkeypatch):
    import dataclasses

    from ruleengine import methods

    wrong = dataclasses.replace(methods.get("dora"), executor="executors.lora:LoraExecutor")
    monkeypatch.setitem(methods.registry(), "dora", wrong)
    executor_class.cache_clear()
    try:
        with pytest.raises(ExecutorMismatch, match="method = 'dora'"):
            executor_class("dora")
    finally:
        executor_class.cache_clear()


def test_adapter_method_refuses_with_the_reason():
    reason = get_executor("adapter").unsupported_reason()
    assert "adapters" in reason and "transformers" in reason


@pytest.mark.parametrize("module", ["executors", "ruleengine.cli.train", "executors.plan", "executors.data",
                                   "executors.decision_bridge", "executors.runner", "executors.manifest", "executors.registry",
                                   "executors.accelerate_config", "executors.formats", "executors.datasets_io",
                                   "executors.hub", "executors.chat_template", "executors.tokenized",
                                   "executors.rundir", "executors.tracking", "executors.merge", "executors.evaluate",
                                   "executors.combine"])
def test_importing_does_not_import_the_training_stack(module):
    code = textwrap.dedent(f"""
        import sys
        import {module}
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        print(",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} imported {out.stdout.strip()}"


def test_decision_path_does_not_import_torch(engine, tmp_path):
    """Validating data and running the decision (plan's first half) leaves torch unimported."""
    code = textwrap.dedent(f"""
        import os, sys
        from ruleengine.facts import load_facts_file
        from executors.data import scan_files
        from executors.decision_bridge import run_decision
        scans = scan_files([{str(example("data/alpaca.jsonl"))!r}])
        os.makedirs({str(tmp_path / "m")!r}, exist_ok=True)
        open({str(tmp_path / "m" / "config.json")!r}, "w").write('{{"model_type": "llama", "hidden_size": 64, '
            '"intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, '
            '"vocab_size": 512, "max_position_embeddings": 512, "architectures": ["LlamaForCausalLM"]}}')
        facts = load_facts_file({str(example("job.yaml"))!r})
        out = run_decision(facts, policy_path=None, model_path={str(tmp_path / "m")!r}, scans=scans, method=None,
                           origin=".", no_audit=True)
        assert out.verdict["method"]
        print(",".join(m for m in {HEAVY!r} if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
