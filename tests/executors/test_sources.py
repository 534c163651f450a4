"""Data sources through Hugging Face datasets, and models and datasets by Hub id from a local cache (offline)."""

from __future__ import annotations

import json
import shutil

import pytest

from executors.data import DataError, scan_file, scan_files

pytestmark = pytest.mark.train

REV = "0123456789abcdef0123456789abcdef01234567"
ROWS = [{"instruction": f"Spell {i}", "output": f"{i} in words"} for i in range(12)]


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty, offline Hugging Face cache (HF_HOME) in a temp dir."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds-cache"))
    monkeypatch.setenv("FINETUNE_POLICY_CACHE", str(tmp_path / "fp-cache"))
    return home


def cached_snapshot(home, kind, repo_id):
    """Return the snapshot folder of ``repo_id`` in the cache layout huggingface_hub writes (refs/main -> commit)."""
    root = home / "hub" / f"{kind}--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / REV
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REV)
    return snapshot


def test_csv_tsv_parquet_and_arrow_files(tmp_path, hf_home):
    import datasets

    table = datasets.Dataset.from_list(ROWS)
    table.to_csv(str(tmp_path / "d.csv"))
    table.to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.tsv").write_text("instruction\toutput\n" + "".join(f"{r['instruction']}\t{r['output']}\n"
                                                                      for r in ROWS))
    for name in ("d.csv", "d.parquet", "d.tsv"):
        scan = scan_file(str(tmp_path / name))
        assert scan.format == "alpaca" and [e.record for e in scan.examples] == ROWS, name
        assert scan.source.kind == name.split(".")[1]


def test_nested_columns_and_nulls_from_arrow(tmp_path, hf_home):
    """Parquet gives every row every column (nulls where a record had none) and JSON text in CSV cells."""
    import datasets

    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                            "tool_calls": None}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "m.parquet"))
    scan = scan_file(str(tmp_path / "m.parquet"))
    assert scan.format == "chat" and "tool_calls" not in scan.examples[0].record["messages"][1]
    (tmp_path / "m.csv").write_text('messages\n"[{""role"": ""user"", ""content"": ""q""}, {""role"": '
                                    '""assistant"", ""content"": ""a""}]"\n')
    assert scan_file(str(tmp_path / "m.csv")).examples[0].record["messages"][1]["content"] == "a"


def test_bad_rows_of_a_table_are_located(tmp_path, hf_home):
    (tmp_path / "bad.csv").write_text("instruction,output\nfine,yes\nempty,\n")
    with pytest.raises(DataError) as err:
        scan_file(str(tmp_path / "bad.csv"))
    d = err.value.diagnostics[0]
    assert (d.code, d.location.line) == ("data-missing-field", 3)  # an empty cell is a missing value
    import datasets

    datasets.Dataset.from_list([{"text": "ok"}, {"text": ""}]).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError) as err:
        scan_file(str(tmp_path / "bad.parquet"))
    assert str(err.value.diagnostics[0].location) == f"{tmp_path / 'bad.parquet'}[1]"


def test_dataset_folders_saved_or_of_files_and_their_splits(tmp_path, hf_home):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:3])})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert len(scan_file(str(tmp_path / "saved")).examples) == 12
    assert len(scan_file(str(tmp_path / "saved"), split="test").examples) == 3
    with pytest.raises(DataError, match="has no split `validation`; splits: train, test"):
        scan_file(str(tmp_path / "saved"), split="validation")
    files = tmp_path / "files"
    files.mkdir()
    datasets.Dataset.from_list(ROWS).to_json(str(files / "train.jsonl"))
    scan = scan_file(str(files))
    assert scan.source.kind == "folder" and len(scan.examples) == 12
    first = scan.sha256
    (files / "train.jsonl").write_text((files / "train.jsonl").read_text().replace("Spell 0", "Spell zero"))
    assert scan_file(str(files)).sha256 != first  # a folder's hash covers its files' content


def test_a_hub_dataset_is_read_from_the_local_cache(tmp_path, hf_home):
    snapshot = cached_snapshot(hf_home, "datasets", "acme/spelling")
    with (snapshot / "train.jsonl").open("w") as fh:
        for row in ROWS:
            fh.write(json.dumps(row) + "\n")
    scans = scan_files(["acme/spelling"])
    assert scans[0].path == "acme/spelling" and len(scans[0].examples) == 12
    assert scans[0].summary()["source"] == {"kind": "folder", "split": "train", "hub_id": "acme/spelling",
                                            "revision": REV}
    from executors.data import current_sha256

    assert current_sha256(scans[0].summary()) == scans[0].sha256
    with pytest.raises(DataError) as err:
        scan_file("acme/not-downloaded")
    assert err.value.diagnostics[0].code == "data-not-cached" and str(hf_home / "hub") in str(err.value)


def test_a_hub_model_is_resolved_from_the_local_cache(tiny_model, hf_home):
    from executors.errors import PlanError
    from executors.hub import resolve_model

    snapshot = cached_snapshot(hf_home, "models", "acme/tiny-llama")
    for item in (p for p in __import__("pathlib").Path(tiny_model).iterdir()):
        shutil.copy(item, snapshot / item.name)
    resolved = resolve_model("acme/tiny-llama")
    assert resolved.path == str(snapshot) and resolved.hub_id == "acme/tiny-llama" and resolved.revision == REV
    assert resolve_model(tiny_model).hub_id is None
    with pytest.raises(PlanError) as err:
        resolve_model("meta-llama/Llama-3.2-1B")
    d = err.value.diagnostics[0]
    assert d.code == "plan-model-not-cached" and "HF_HUB_OFFLINE is set" in d.message
    assert str(hf_home / "hub") in d.message and "hf download meta-llama/Llama-3.2-1B" in d.help
    with pytest.raises(PlanError, match="plan-no-model"):
        resolve_model("./no/such/dir")


def test_plan_and_train_from_hub_ids_offline(tiny_model, hf_home, verdict, tmp_path):
    """`decide train --model org/name --data org/dataset` works offline from the cache and records the origin."""
    from executors.plan import PlanOptions, build_plan
    from executors.runner import run_training

    model_snapshot = cached_snapshot(hf_home, "models", "acme/tiny-llama")
    for item in __import__("pathlib").Path(tiny_model).iterdir():
        shutil.copy(item, model_snapshot / item.name)
    data_snapshot = cached_snapshot(hf_home, "datasets", "acme/spelling")
    with (data_snapshot / "train.jsonl").open("w") as fh:
        for row in ROWS * 3:
            fh.write(json.dumps(row) + "\n")
    cpu = {"type": "cpu", "count": 1, "name": "x86_64", "bf16": False, "fp16": False}
    plan = build_plan(verdict("lora"), model_path="acme/tiny-llama", data_files=["acme/spelling"], device=cpu,
                      options=PlanOptions(max_steps=2))
    assert plan["model"]["hub_id"] == "acme/tiny-llama" and plan["model"]["revision"] == REV
    assert plan["model"]["path"] == str(model_snapshot) and plan["data"]["files"][0]["path"] == "acme/spelling"
    result = run_training(plan, str(tmp_path / "run"), progress=False, log=lambda m: None)
    assert result.manifest["model"]["hub_id"] == "acme/tiny-llama" and result.metrics["global_step"] == 2


def test_two_splits_of_one_folder_are_tokenized_separately(tiny_model, hf_home, tmp_path):
    """A folder's content hash covers every split; the cache key also names the split read."""
    import datasets

    from executors.chat_template import choose_template
    from executors.modeling import load_tokenizer
    from executors.tokenized import tokenized_source, tokenizer_fingerprint

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[:3])}).save_to_disk(str(tmp_path / "saved"))
    tok = load_tokenizer(tiny_model)
    template = choose_template("alpaca", None, ["alpaca"])
    sha = tokenizer_fingerprint(tiny_model)
    train = tokenized_source(scan_file(str(tmp_path / "saved")), tok, template, 64, sha)
    test = tokenized_source(scan_file(str(tmp_path / "saved"), split="test"), tok, template, 64, sha)
    assert (len(train.table), len(test.table)) == (12, 3) and train.key != test.key and not test.cached
