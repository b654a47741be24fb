"""Resume after SIGKILL at every kill point: after the first epoch, mid-run, after the last checkpoint but before
metrics.json, and inside an analysis job (measure).

The kill is driven by the test hook ``cnnablate.train.kill_point`` (environment variable CNNABLATE_KILL_AT), so
the job dies at an exact place, not after a timer. Each killed study is rerun without the hook and must match
one uninterrupted reference run: the resume epoch exactly, the same metrics and history, the same measures,
and the same MLflow metric history on the FINISHED run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cnnablate.train import KILL_AT_ENV
from conftest import snakemake, tiny_config, write_config

pytestmark = pytest.mark.e2e  # every test here runs Snakemake

STUDY = "kill"
RUN = f"results/{STUDY}/runs/base/seed0"
METRICS, MEASURES, TRACKED = f"{RUN}/metrics.json", f"{RUN}/measures.json", f"{RUN}/mlflow_run.json"
TRAIN_LOG = f"results/{STUDY}/logs/train/base/seed0.log"
TIMING_COLUMNS = {"segment_seconds", "images_per_second", "eval_seconds", "elapsed_seconds"}
TIMING_METRICS = TIMING_COLUMNS | {"train_seconds", "final_train_seconds"}
SAME_METRICS = (
    "test_acc",
    "test_loss",
    "val_acc",
    "val_loss",
    "best_val_acc",
    "train_loss",
    "train_acc",
    "steps",
    "epochs_completed",
    "stop_reason",
    "trained",
    "lr",
    "params",
)


def _config(workdir: Path) -> Path:
    """The tiny config, one variant, no tuning (resume is what is tested), with 3 epochs of 3 steps."""
    return write_config(workdir, tiny_config(study=STUDY, tune={"enabled": False}, ablations={}))


def _job_runs(workdir: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{workdir}/results/mlflow.db")
    experiment = client.get_experiment_by_name(STUDY)
    return client, client.search_runs([experiment.experiment_id], "tags.`cnnablate.role` = 'job'")


def _metric_history(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every non-timing metric of the one FINISHED job run, as (step, value) pairs."""
    client, runs = _job_runs(workdir)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert len(finished) == 1, [run.info.status for run in runs]
    run_id = finished[0].info.run_id
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in finished[0].data.metrics
        if key not in TIMING_METRICS
    }


def _history(workdir: Path) -> pd.DataFrame:
    history = pd.read_csv(workdir / RUN / "history.csv")
    return history[[c for c in history.columns if c not in TIMING_COLUMNS]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study with its data prepared and its MLflow experiment set up, copied by every case (saves two jobs each).

    The experiment's artifact root stays in this folder; each copy's runs log there under their own run ids.
    """
    workdir = tmp_path_factory.mktemp("prepared")
    snakemake(
        workdir, _config(workdir), "--cores", "1", f"results/{STUDY}/data/dataset.npz", f"results/{STUDY}/mlflow.json"
    )
    return workdir


def _copy(prepared: Path, workdir: Path) -> Path:
    shutil.copytree(prepared, workdir, symlinks=True)
    return workdir / "config.yaml"


@pytest.fixture(scope="module")
def reference(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same study run once without a kill: every killed case must end where this one does."""
    workdir = tmp_path_factory.mktemp("uninterrupted") / "study"
    snakemake(workdir, _copy(prepared, workdir), "--cores", "1", MEASURES, TRACKED)
    return workdir


def test_reference_runs_long_enough_for_a_mid_run_kill(reference: Path) -> None:
    metrics = json.loads((reference / METRICS).read_text())
    assert metrics["epochs_completed"] == 3
    assert metrics["resumed_from_epoch"] is None


@pytest.mark.parametrize(
    ("kill_at", "target", "resumed_from"),
    [
        ("epoch-1", METRICS, 1),
        ("epoch-2", METRICS, 2),  # mid-run: after epoch 2 of 3
        ("before-metrics", METRICS, 3),  # after the last checkpoint, before metrics.json
        ("measure", MEASURES, None),  # inside the measure job: training is untouched
    ],
)
def test_a_killed_job_resumes_to_the_uninterrupted_result(
    prepared: Path,
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kill_at: str,
    target: str,
    resumed_from: int | None,
) -> None:
    workdir = tmp_path / "study"
    config = _copy(prepared, workdir)
    monkeypatch.setenv(KILL_AT_ENV, kill_at)
    killed = snakemake(workdir, config, "--cores", "1", target, check=False)
    assert killed.returncode != 0, killed.stderr[-4000:]
    assert not (workdir / target).exists()
    monkeypatch.delenv(KILL_AT_ENV)
    snakemake(workdir, config, "--cores", "1", target, TRACKED)

    metrics, expected = (json.loads((d / METRICS).read_text()) for d in (workdir, reference))
    assert metrics["resumed_from_epoch"] == resumed_from
    log = (workdir / TRAIN_LOG).read_text()
    if resumed_from is None:
        assert "resumed from checkpoint" not in log
    else:
        assert f"seed0.pt at epoch {resumed_from}\n" in log
    assert {k: metrics[k] for k in SAME_METRICS} == {k: expected[k] for k in SAME_METRICS}
    pd.testing.assert_frame_equal(_history(workdir), _history(reference))
    if target == MEASURES:
        assert json.loads((workdir / MEASURES).read_text()) == json.loads((reference / MEASURES).read_text())
        for name in ("erf_init.npy", "erf_trained.npy"):
            np.testing.assert_array_equal(np.load(workdir / RUN / name), np.load(reference / RUN / name))

    _, runs = _job_runs(workdir)
    # MLflow mirrors the run only once it is finished (the track job): a kill leaves no stale RUNNING run behind
    assert [run.info.status for run in runs] == ["FINISHED"]
    assert {run.data.tags["cnnablate.job_key"] for run in runs} == {f"{STUDY}/base/seed0"}
    assert _metric_history(workdir) == _metric_history(reference)
