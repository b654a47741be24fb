"""The workflow end to end on tiny configs: outputs, MLflow runs, reruns and concurrency (resume after SIGKILL at
every kill point: test_kill_points.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import snakemake, tiny_config, write_config

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
        run_id = json.loads((path.parent / "mlflow_run.json").read_text())["run_id"]
        run = next(r for r in finished_runs(tiny_study, "tiny") if r.info.run_id == run_id)
        assert run.data.metrics["final_test_acc"] == values["test_acc"]
        assert "measures.params" in run.data.metrics
        assert "shift.shift_acc_2px" in run.data.metrics
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


def test_eight_runs_tracked_at_once_against_sqlite(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        tiny_config(study="parallel", seeds=[0, 1, 2, 3], ablations={"fc_vs_conv": {"arch": ["fc"]}}),
    )
    targets = [
        f"results/parallel/runs/{variant}/seed{seed}/mlflow_run.json"  # the track jobs: MLflow's writers
        for variant in ("base", "arch-fc")
        for seed in range(4)
    ]
    snakemake(tmp_path, config, "--cores", "8", *targets)
    logs = "".join(p.read_text() for p in (tmp_path / "results/parallel/logs/track").rglob("*.log"))
    assert "locked" not in logs.lower()
    runs = finished_runs(tmp_path, "parallel")
    assert sorted(r.data.tags["cnnablate.job_key"] for r in runs) == sorted(
        f"parallel/{variant}/seed{seed}" for variant in ("base", "arch-fc") for seed in range(4)
    )
    snakemake(tmp_path, config, "--cores", "8", *targets)
    assert len(finished_runs(tmp_path, "parallel")) == 8
