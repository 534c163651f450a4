"""--report-to trackers (TensorBoard, MLflow file store, W&B offline), the run's pictures, missing trackers."""

from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = pytest.mark.train


def test_tensorboard_and_the_pictures(tiny_model, verdict, examples, tmp_path, trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = trained(verdict("lora"), tiny_model, [str(examples / "alpaca.jsonl")], run, max_steps=4,
                     report_to=("tensorboard",), eval_strategy="steps", eval_steps=2)
    events = [os.path.join(root, f) for root, _, files in os.walk(run / "tensorboard") for f in files
              if f.startswith("events.out.tfevents")]
    assert events, "no TensorBoard event file in the run"
    acc = EventAccumulator(os.path.dirname(events[0]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("eval/loss")][:3] == [0, 2, 4]
    assert result.manifest["artifacts"]["tensorboard"] == "tensorboard"
    for name in ("loss_curve.png", "memory.png"):
        data = (run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert result.metrics["eval_curve"][0]["step"] == 0 and len(result.metrics["eval_curve"]) >= 3
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # the run's environment is restored


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (tracking extra)")
def test_mlflow_to_a_local_file_store(tiny_model, verdict, examples, tmp_path, monkeypatch, trained):
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{store}")
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants an opt-in for file stores
    trained(verdict("lora"), tiny_model, [str(examples / "alpaca.jsonl")], tmp_path / "run", max_steps=3,
            report_to=("mlflow",))
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"file:{store}")
    experiment = client.get_experiment_by_name("finetune-policy")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "run"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2, 3]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (tracking extra)")
def test_wandb_offline_writes_into_the_run(tiny_model, verdict, examples, tmp_path, monkeypatch, trained):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    result = trained(verdict("lora"), tiny_model, [str(examples / "alpaca.jsonl")], run, max_steps=2,
                     report_to=("wandb",))
    offline = [d for d in os.listdir(run / "wandb") if d.startswith("offline-run-")]
    assert offline and any(f.endswith(".wandb") for f in os.listdir(run / "wandb" / offline[0]))
    assert result.manifest["artifacts"]["wandb"] == "wandb"


def test_a_missing_tracker_is_a_located_error_naming_the_package(tiny_model, verdict, examples, tmp_path,
                                                                 monkeypatch, trained):
    import executors.tracking as tracking
    from executors.errors import RunError

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(RunError) as err:
        trained(verdict("lora"), tiny_model, [str(examples / "alpaca.jsonl")], tmp_path / "run", max_steps=1,
                report_to=("wandb",))
    d = err.value.diagnostics[0]
    assert d.code == "run-tracker-missing" and "`wandb`" in d.message and d.help.startswith("pip install wandb")
    assert not (tmp_path / "run.partial").exists()
