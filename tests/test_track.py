"""MLflow mirrors finished work from its files: a training run with its curves, final numbers, attempts and
files; a learning-rate search; and a run whose mirroring fails ends FAILED, never RUNNING."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cnnablate import layout
from cnnablate.tracking import JOB_KEY_TAG, ROLE_TAG, setup_study, track_run, track_tuning
from cnnablate.train import train
from test_train import make_job


@pytest.fixture
def setup(tmp_path):
    setup_study("tiny", f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "mlflow.json", tmp_path / "artifacts")
    return tmp_path / "mlflow.json"


def test_a_finished_training_run_is_mirrored_with_its_curves_numbers_attempts_and_files(tmp_path, setup) -> None:
    tuning = {"chosen_lr": 0.05, "grid": [{"lr": 0.02, "val_acc": 0.1}, {"lr": 0.05, "val_acc": 1.0}]}
    job = dataclasses.replace(make_job(tmp_path, "run", max_steps=6), tuning=tuning)
    metrics = train(job)
    run_id = track_run(setup, job.run_dir, tmp_path / "tracked.json")
    assert json.loads((tmp_path / "tracked.json").read_text()) == {"run_id": run_id}
    client = MlflowClient(json.loads(setup.read_text())["tracking_uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[JOB_KEY_TAG] == "tiny/base/seed0"
    assert run.data.params["model.arch"] == "conv"
    assert float(run.data.params["train.peak_lr"]) == metrics["lr"]
    assert run.data.metrics["final_test_acc"] == metrics["test_acc"]
    assert run.data.metrics["final_retried"] == 1.0
    assert run.data.metrics["attempt2.lr"] == 0.02
    history = pd.read_csv(job.run_dir / "history.csv")
    curve = client.get_metric_history(run_id, "val_acc")
    assert [point.step for point in curve] == history["step"].tolist()
    assert [point.value for point in curve] == pytest.approx(history["val_acc"].tolist())
    assert {f.path for f in client.list_artifacts(run_id)} >= {
        "metrics.json",
        "history.csv",
        "model.pt",
        layout.PREDICTIONS,
    }


def test_a_learning_rate_search_is_mirrored_as_a_tuning_run(tmp_path, setup) -> None:
    search = {
        "study": "tiny",
        "variant": "base",
        "chosen_lr": 0.1,
        "trained": True,
        "max_steps": 3,
        "grid": [{"lr": 0.01, "val_curve": [0.1, 0.2]}, {"lr": 0.1, "val_curve": [0.3, math.nan, 0.5]}],
    }
    (tmp_path / "search.json").write_text(json.dumps(search))
    run_id = track_tuning(setup, tmp_path / "search.json", tmp_path / "tracked.json")
    client = MlflowClient(json.loads(setup.read_text())["tracking_uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[ROLE_TAG] == "tuning"
    assert run.data.metrics["chosen_lr"] == 0.1
    assert [p.value for p in client.get_metric_history(run_id, "lr_0.1/val_acc")] == [0.3, 0.5]  # NaN skipped


def test_a_run_whose_mirroring_fails_ends_failed(tmp_path, setup) -> None:
    job = make_job(tmp_path, "broken", max_steps=3)
    train(job)
    (job.run_dir / "history.csv").write_text("step,val_acc\nnot-a-step,0.5\n")
    with pytest.raises(ValueError):
        track_run(setup, job.run_dir, tmp_path / "tracked.json")
    client = MlflowClient(json.loads(setup.read_text())["tracking_uri"])
    experiment = json.loads(setup.read_text())["experiment_id"]
    runs = client.search_runs([experiment], f"tags.`{JOB_KEY_TAG}` = 'tiny/base/seed0'")
    assert [run.info.status for run in runs] == ["FAILED"]
    assert not (tmp_path / "tracked.json").exists()
