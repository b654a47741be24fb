"""MLflow tracking: one-time setup, killed runs marked, no two FINISHED runs per job key, idempotent sync."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from cnnablate import tracking
from cnnablate.tracking import (
    GIT_COMMIT_TAG,
    JOB_KEY_TAG,
    JobRun,
    finish_study,
    git_commit,
    job_run_logger,
    setup_study,
    sync_analyses,
)


def _setup(tmp_path):
    return setup_study("demo", f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "mlflow.json", tmp_path / "artifacts")


@pytest.fixture(scope="module")
def first_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The study set up once on a new database, which setup_study creates and migrates (seconds)."""
    directory = tmp_path_factory.mktemp("mlflow")
    return directory, _setup(directory)


@pytest.fixture
def study_setup(tmp_path: Path, first_setup: tuple[Path, dict[str, str]]) -> dict[str, str]:
    """setup_study on a copy of the set-up database: the same experiment and parent run, no migration to wait for."""
    database = first_setup[0] / "mlflow.db"
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the write-ahead log into the file, then copy the file
    connection.close()
    shutil.copy(database, tmp_path / "mlflow.db")
    return _setup(tmp_path)


def _runs(setup, key, deleted=False):
    client = MlflowClient(setup["tracking_uri"])
    view = 3 if deleted else 1  # ALL or ACTIVE_ONLY
    return client.search_runs([setup["experiment_id"]], f"tags.`{JOB_KEY_TAG}` = '{key}'", run_view_type=view)


def test_setup_is_idempotent_and_uses_wal(first_setup) -> None:
    directory, first = first_setup
    second = _setup(directory)
    assert first == second
    mode = sqlite3.connect(directory / "mlflow.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert json.loads((directory / "mlflow.json").read_text())["parent_run_id"] == first["parent_run_id"]


def test_killed_run_is_marked_and_rerun_leaves_one_finished(study_setup) -> None:
    setup = study_setup
    killed = JobRun(setup, "demo/base/seed0", "base/seed0", {"variant": "base"})  # never finished: a kill
    retry = JobRun(setup, "demo/base/seed0", "base/seed0", {"variant": "base"})
    retry.log_metrics({"test_acc": 0.5}, step=1)
    retry.finish()
    statuses = {r.info.run_id: r.info.status for r in _runs(setup, "demo/base/seed0")}
    assert statuses == {killed.run_id: "KILLED", retry.run_id: "FINISHED"}
    rerun = JobRun(setup, "demo/base/seed0", "base/seed0", {"variant": "base"})
    rerun.finish()
    active = _runs(setup, "demo/base/seed0")
    assert [r.info.run_id for r in active if r.info.status == "FINISHED"] == [rerun.run_id]
    assert len(_runs(setup, "demo/base/seed0", deleted=True)) == 3
    parent = MlflowClient(setup["tracking_uri"]).get_run(rerun.run_id).data.tags["mlflow.parentRunId"]
    assert parent == setup["parent_run_id"]


def test_large_files_are_logged_by_reference_small_ones_copied(tmp_path, study_setup, monkeypatch) -> None:
    small, large = tmp_path / "metrics.json", tmp_path / "model.pt"
    small.write_text("{}")
    large.write_bytes(bytes(range(256)) * 8)
    monkeypatch.setattr(tracking, "COPY_LIMIT_BYTES", 1024)  # 2 KiB stands for a 612 MB model
    run = JobRun(study_setup, "demo/base/seed0", "base/seed0", {"variant": "base"})
    run.log_artifacts([small, large, tmp_path / "absent.csv"])
    run.finish()
    client = MlflowClient(study_setup["tracking_uri"])
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["metrics.json"]
    tags = client.get_run(run.run_id).data.tags
    assert tags["cnnablate.file.model.pt.path"] == str(large.resolve())
    assert tags["cnnablate.file.model.pt.bytes"] == "2048"
    assert tags["cnnablate.file.model.pt.sha256"] == hashlib.sha256(large.read_bytes()).hexdigest()


def test_sync_logs_analysis_numbers_once(tmp_path, study_setup) -> None:
    setup = study_setup
    run = JobRun(setup, "demo/base/seed0", "base/seed0", {})
    run.finish()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "shift.json").write_text(json.dumps({"shift_acc_0px": 0.9, "nested": {"a": 1, "label": "x"}}))
    first = sync_analyses(setup, [("demo/base/seed0", run_dir)], ["shift"], {"base": "pooling,norm"})
    second = sync_analyses(setup, [("demo/base/seed0", run_dir)], ["shift"])
    assert sorted(first["demo/base/seed0"]["logged"]) == ["shift.nested.a", "shift.shift_acc_0px"]
    assert second["demo/base/seed0"]["logged"] == []
    client = MlflowClient(setup["tracking_uri"])
    assert len(client.get_metric_history(run.run_id, "shift.shift_acc_0px")) == 1
    assert job_run_logger(setup, "demo/base/seed0").run_id == run.run_id
    assert client.get_run(run.run_id).data.tags["ablation"] == "pooling,norm"


def test_parent_run_holds_the_study_and_finishes_with_it(tmp_path) -> None:
    setup = _setup(tmp_path)
    client = MlflowClient(setup["tracking_uri"])
    assert client.get_run(setup["parent_run_id"]).info.status == "RUNNING"  # until the study is complete
    child = JobRun(setup, "demo/base/seed0", "base/seed0", {})
    child.finish()
    summary = tmp_path / "summary.csv"
    summary.write_text("variant,test_acc_mean,seeds\nbase,0.75,2\npool-avg,0.5,2\narch-fc,,2\n")
    (tmp_path / "results.csv").write_text("variant,seed,test_acc\nbase,0,0.75\n")
    (tmp_path / "index.html").write_text("<html></html>")
    config = {"study": "demo", "seeds": [0, 1], "data": {"dataset": "synthetic"}}
    artifacts = [summary, tmp_path / "results.csv", tmp_path / "index.html"]
    finish_study(setup, config, summary, artifacts)
    parent = client.get_run(setup["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == {"test_acc_mean.base": 0.75, "test_acc_mean.pool-avg": 0.5}  # no mean: no metric
    logged = {item.path for item in client.list_artifacts(parent.info.run_id, "study")}
    assert logged == {"study/config.yaml", "study/summary.csv", "study/results.csv", "study/index.html"}
    commit = git_commit()
    assert commit != "unknown"
    assert len(commit.removesuffix("+dirty")) == 40
    for run in (parent, client.get_run(child.run_id)):
        assert run.data.tags[GIT_COMMIT_TAG] == commit.removesuffix("+dirty")
        assert run.data.tags["git_commit"] == commit
    path = client.download_artifacts(parent.info.run_id, "study/config.yaml", str(tmp_path / "download"))
    assert yaml.safe_load(Path(path).read_text()) == config
