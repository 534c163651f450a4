"""`decide combine`: weighted / TIES / DARE combinations of LoRA adapters, checked against their definitions."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory, trained, verdict, examples):
    """Two LoRA runs of the same rank on the tiny model (different data) and a DoRA run."""
    root = tmp_path_factory.mktemp("combine")
    a = trained(verdict("lora"), tiny_model, [str(examples / "alpaca.jsonl")], root / "a", max_steps=4)
    b = trained(verdict("qlora"), tiny_model, [str(examples / "chat.jsonl")], root / "b", max_steps=4, seed=1)
    d = trained(verdict("dora"), tiny_model, [str(examples / "alpaca.jsonl")], root / "d", max_steps=1)
    return a.output_dir, b.output_dir, d.output_dir


def deltas(tiny_model, adapter):
    """Return {module: ΔW} of an adapter folder, computed by peft on the tiny model."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter))
    return {name.replace("base_model.model.", ""): m.get_delta_weight("default").detach()
            for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def combine(*args):
    from ruleengine.cli import main

    result = CliRunner().invoke(main, ["combine", *(str(a) for a in args)])
    return result


def test_weighted_is_the_exact_weighted_sum_and_differs_from_each_input(runs, tiny_model, tmp_path):
    import torch

    a, b, _ = runs
    r = combine(a, b, "-o", tmp_path / "w", "--weights", "0.7,0.3")
    assert r.exit_code == 0, r.output
    da, db, dc = deltas(tiny_model, f"{a}/adapter"), deltas(tiny_model, f"{b}/adapter"), deltas(tiny_model, tmp_path / "w")
    assert da.keys() == db.keys() == dc.keys() and len(dc) == 14
    for k in dc:
        torch.testing.assert_close(dc[k], 0.7 * da[k] + 0.3 * db[k], atol=1e-6, rtol=1e-5)
    report = json.loads((tmp_path / "w" / "combine.json").read_text())
    assert report["rank"] == 16 and report["peft_combination_type"] == "cat"
    assert all(d["relative_distance"] > 0.1 for d in report["distance_from_inputs"])
    assert "relative distance from" in r.output


def exact(k, delta):
    """True for the modules whose update the rank-32 factorisation represents exactly (k/v: 32 x 64)."""
    return min(delta.shape) <= 32


def best_approximation(m, rank):
    """Return the best rank-``rank`` approximation of ``m`` (truncated SVD, Eckart-Young)."""
    import torch

    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def test_ties_follows_its_definition_on_the_full_updates(runs, tiny_model, tmp_path):
    """density 1 (no trimming): elect the sign of ΔA+ΔB per entry, average the weighted updates that agree;
    factored back at rank 32, which is exact for the 32-wide projections and the best rank-32 approximation
    elsewhere."""
    import torch

    a, b, _ = runs
    r = combine(a, b, "-o", tmp_path / "t", "--method", "ties", "--density", "1", "--weights", "1,0.5",
                "--rank", "128")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "t" / "combine.json").read_text())["svd_rank"] == 32  # capped: 32-wide modules
    da, db, dc = deltas(tiny_model, f"{a}/adapter"), deltas(tiny_model, f"{b}/adapter"), deltas(tiny_model, tmp_path / "t")
    for k in dc:
        stacked = torch.stack([da[k], db[k]])
        sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
        agree = stacked.sign() == sign
        weighted = torch.stack([1.0 * da[k], 0.5 * db[k]])
        expected = (weighted * agree).sum(0) / agree.sum(0).clamp(min=1)
        target = expected if exact(k, expected) else best_approximation(expected, 32)
        torch.testing.assert_close(dc[k], target, atol=1e-5, rtol=1e-4)
        if exact(k, expected):  # not a plain sum where the signs disagree
            assert not torch.allclose(dc[k], da[k] + 0.5 * db[k], atol=1e-5)


def test_dare_drops_and_rescales(runs, tiny_model, tmp_path):
    import torch

    a, b, _ = runs
    r = combine(a, b, "-o", tmp_path / "d", "--method", "dare", "--density", "0.5", "--seed", "3", "--rank", "32")
    assert r.exit_code == 0, r.output
    da, db, dc = deltas(tiny_model, f"{a}/adapter"), deltas(tiny_model, f"{b}/adapter"), deltas(tiny_model, tmp_path / "d")
    zeros = total = 0
    for k in (k for k in dc if exact(k, dc[k])):
        # every entry is one of: both dropped, one kept (rescaled by 1/0.5), both kept
        options = torch.stack([torch.zeros_like(da[k]), 2 * da[k], 2 * db[k], 2 * (da[k] + db[k])])
        assert torch.isclose(options, dc[k].unsqueeze(0), atol=1e-5, rtol=1e-4).any(0).all(), k
        zeros += int((dc[k].abs() < 1e-7).sum())
        total += dc[k].numel()
    assert total and 0.2 < zeros / total < 0.3  # both dropped with probability 1/4
    again = combine(a, b, "-o", tmp_path / "d2", "--method", "dare", "--density", "0.5", "--seed", "3", "--rank", "32")
    assert again.exit_code == 0
    d2 = deltas(tiny_model, tmp_path / "d2")
    assert all(torch.equal(d2[k], dc[k]) for k in dc)  # the seed makes the drops reproducible
    same = combine(a, b, "-o", tmp_path / "d1", "--method", "dare", "--density", "1")
    assert same.exit_code == 0
    d1 = deltas(tiny_model, tmp_path / "d1")
    for k in d1:  # nothing dropped: the plain sum (rank <= 16, exact at the default rank 16)
        torch.testing.assert_close(d1[k], da[k] + db[k], atol=1e-5, rtol=1e-4)


def test_incompatible_runs_are_refused(runs, tiny_model, tmp_path, trained, verdict, examples):
    from executors.tiny import build_tiny_model

    a, b, d = runs
    r = combine(a, d, "-o", tmp_path / "x")
    assert r.exit_code == 2 and "error[combine-incompatible-method]" in r.output and "DoRA" in r.output
    other = build_tiny_model(str(tmp_path / "other-model"), seed=5)
    c = trained(verdict("lora"), other, [str(examples / "alpaca.jsonl")], tmp_path / "c", max_steps=1)
    r = combine(a, c.output_dir, "-o", tmp_path / "x")
    assert r.exit_code == 2 and "error[combine-different-base]" in r.output
    r = combine(a, b, "-o", tmp_path / "x", "--weights", "1,2,3")
    assert r.exit_code == 2 and "combine-weights-count" in r.output
    r = combine(a, "-o", tmp_path / "x")
    assert r.exit_code == 2 and "combine-too-few" in r.output
    assert not (tmp_path / "x").exists()
