"""The workflow end to end on tiny configs: outputs, MLflow runs, reruns, concurrency and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, SNAKEMAKE, snakemake, tiny_config, workflow_env, write_config

pytestmark = pytest.mark.e2e  # every test here runs Snakemake


def finished_runs(workdir: Path, study: str) -> list:
    client = MlflowClient(f"sqlite:///{workdir}/results/mlflow.db")
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], "tags.`cnnablate.role` = 'job'")
    return [run for run in runs if run.info.status == "FINISHED"]


def test_tiny_study_has_one_result_and_one_finished_run_per_variant_and_seed(tiny_study: Path) -> None:
    metrics = sorted(tiny_study.glob("results/tiny/runs/*/seed*/metrics.json"))
    assert len(metrics) == 3 * 2
    keys = [run.data.tags["cnnablate.job_key"] for run in finished_runs(tiny_study, "tiny")]
    assert sorted(keys) == sorted(f"tiny/{p.parent.parent.name}/{p.parent.name}" for p in metrics)
    for path in metrics:
        values = json.loads(path.read_text())
        run = next(r for r in finished_runs(tiny_study, "tiny") if r.info.run_id == values["mlflow_run_id"])
        assert run.data.metrics["final_test_acc"] == values["test_acc"]
        assert "measures.params" in run.data.metrics and "shift.shift_acc_2px" in run.data.metrics
        assert run.data.params["model.arch"] == values["spec"]["arch"]
    assert (tiny_study / "reports" / "tiny" / "index.html").exists()


def test_rerunning_a_finished_study_does_nothing(own_tiny_study: Path) -> None:
    before = len(finished_runs(own_tiny_study, "tiny"))
    result = snakemake(own_tiny_study, own_tiny_study / "config.yaml", "--cores", "2")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert len(finished_runs(own_tiny_study, "tiny")) == before


def test_a_reordered_but_equal_config_reruns_nothing(tiny_study: Path) -> None:
    config = tiny_config(seeds=[0, 1])  # the fixture's config, keys in reverse order (as yaml.safe_dump sorts them)
    config["data"]["synthetic"] = dict(reversed(config["data"]["synthetic"].items()))
    config = dict(reversed(config.items()))
    result = snakemake(tiny_study, write_config(tiny_study, config, "reordered.yaml"), "-n")
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_eight_training_jobs_at_once_against_sqlite(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        tiny_config(study="parallel", seeds=[0, 1, 2, 3], ablations={"fc_vs_conv": {"arch": ["fc"]}}),
    )
    targets = [
        f"results/parallel/runs/{variant}/seed{seed}/metrics.json"
        for variant in ("base", "arch-fc")
        for seed in range(4)
    ]
    snakemake(tmp_path, config, "--cores", "8", *targets)
    logs = "".join(p.read_text() for p in (tmp_path / "results/parallel/logs/train").rglob("*.log"))
    assert "locked" not in logs.lower()
    runs = finished_runs(tmp_path, "parallel")
    assert sorted(r.data.tags["cnnablate.job_key"] for r in runs) == sorted(
        f"parallel/{variant}/seed{seed}" for variant in ("base", "arch-fc") for seed in range(4)
    )
    snakemake(tmp_path, config, "--cores", "8", *targets)
    assert len(finished_runs(tmp_path, "parallel")) == 8


def _kill_training_process(workdir: Path, timeout: float = 300) -> None:
    """SIGKILL the training job's process (not Snakemake) once its first checkpoint exists."""
    checkpoint = workdir / "results/resume/checkpoints/base/seed0.pt"
    deadline = time.time() + timeout
    while not checkpoint.exists():
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if "train.py" in cmdline and cwd == str(workdir):
            os.kill(int(pid), signal.SIGKILL)
            return
    raise AssertionError("training process not found")


def test_training_killed_mid_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    recipe = {**tiny_config()["train"], "max_steps": 70, "patience": 50}
    data = {"dataset": "synthetic", "synthetic": {"train_size": 1024, "test_size": 128, "contrast": 1.0}}
    target = "results/resume/runs/base/seed0/metrics.json"
    results = {}
    for name in ("killed", "uninterrupted"):
        workdir = tmp_path / name
        workdir.mkdir()
        config = write_config(workdir, tiny_config(study="resume", train=recipe, data=data, ablations={}))
        if name == "killed":
            process = subprocess.Popen(
                [
                    SNAKEMAKE,
                    "-s",
                    str(ROOT / "Snakefile"),
                    "-d",
                    str(workdir),
                    "--configfile",
                    str(config),
                    "--cores",
                    "1",
                    target,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=workflow_env(workdir),
            )
            _kill_training_process(workdir)
            output = process.communicate(timeout=300)[0]
            assert process.returncode != 0, output
            assert not (workdir / target).exists()
        snakemake(workdir, config, "--cores", "1", target)
        results[name] = json.loads((workdir / target).read_text())
        results[name + "_history"] = pd.read_csv(workdir / "results/resume/runs/base/seed0/history.csv")
    log = (tmp_path / "killed/results/resume/logs/train/base/seed0.log").read_text()
    assert "resumed from checkpoint" in log
    assert results["killed"]["resumed_from_epoch"] >= 1
    for key in ("test_acc", "test_loss", "val_acc", "train_loss", "epochs_completed", "steps", "lr"):
        assert results["killed"][key] == results["uninterrupted"][key]
    columns = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    pd.testing.assert_frame_equal(results["killed_history"][columns], results["uninterrupted_history"][columns])
    statuses = sorted(
        r.info.status
        for r in MlflowClient(f"sqlite:///{tmp_path}/killed/results/mlflow.db").search_runs(
            [
                MlflowClient(f"sqlite:///{tmp_path}/killed/results/mlflow.db")
                .get_experiment_by_name("resume")
                .experiment_id
            ],
            "tags.`cnnablate.role` = 'job'",
        )
    )
    assert statuses == ["FINISHED", "KILLED"]
