"""Workflow jobs as Snakemake runs them: in their own process, with Snakemake's threads, a one-line reason on
failure, few imports, and an exit that leaves every file written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import snakemake, tiny_config, write_config

HEAVY = ("torchvision", "matplotlib", "seaborn", "captum")
# what a training job must not import: tracking runs in its own job, torch.optim's optimisers pull in dynamo
# (jsonschema it may: build_model checks the spec against the schema, 0.1 s)
TRAINING_NEVER_IMPORTS = (*HEAVY, "mlflow", "torch._dynamo", "scipy", "pandas")


def run_job(tmp_path: Path, body: str, heavy: tuple[str, ...] = HEAVY) -> subprocess.CompletedProcess:
    """Run ``body`` (which builds ``smk`` and calls a job) in a fresh interpreter, as a Snakemake script does;
    it prints which of ``heavy`` the job imported."""
    code = textwrap.dedent(
        """
        import sys
        from types import SimpleNamespace
        import cnnablate.workflow_jobs as jobs

        leave = jobs._leave

        def report_modules_and_leave(code):
            print("heavy modules:", [m for m in {heavy!r} if m in sys.modules], flush=True)
            leave(code)

        jobs._leave = report_modules_and_leave
        """
    ).format(heavy=heavy) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_a_project_error_is_one_line_without_traceback(tmp_path) -> None:
    result = run_job(
        tmp_path,
        """
        smk = SimpleNamespace(params=SimpleNamespace(data='{"dataset": "npz", "path": "missing.npz"}'),
                              output=["dataset.npz"], log=["job.log"])
        jobs.prepare_data(smk)
        """,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "prepare_data: data.path: missing.npz does not exist" in lines[0], lines
    assert "Traceback" not in result.stderr
    assert lines[0] in (tmp_path / "job.log").read_text()


def test_an_unexpected_error_keeps_its_traceback(tmp_path) -> None:
    result = run_job(
        tmp_path,
        """
        smk = SimpleNamespace(input=[], output=SimpleNamespace(figure="f.png", table="t.csv"), log=["job.log"])
        jobs.shift_robustness_figure(smk)
        """,
    )
    assert result.returncode == 1
    assert "shift_robustness_figure job failed" in result.stderr
    assert "Traceback" in result.stderr
    assert "Traceback" in (tmp_path / "job.log").read_text()


def test_training_job_uses_snakemakes_threads_imports_little_and_exits_cleanly(tmp_path) -> None:
    config = tiny_config()
    result = run_job(
        tmp_path,
        f"""
        from cnnablate.config import Study, canonical, validate_config
        from cnnablate.data import make_synthetic, split_validation

        config = validate_config({config!r})
        split_validation(make_synthetic(256, 64, contrast=0.6, seed=0), 64, seed=0).save("data.npz")
        for module in [m for m in sys.modules if m.split(".")[0] in ("scipy", "pandas")]:
            del sys.modules[module]  # what building the config needed; the job itself must not import them
        smk = SimpleNamespace(
            input=SimpleNamespace(data="data.npz"),
            output=SimpleNamespace(metrics="run/metrics.json"),
            params=SimpleNamespace(study="tiny", spec=canonical(Study.from_config(config).variants["base"].spec),
                                   recipe=canonical(config["train"]), checkpoint="checkpoint.pt"),
            wildcards=SimpleNamespace(variant="base", seed="0"),
            threads=2,
            log=["train.log"],
        )
        jobs.train(smk)
        """,
        heavy=TRAINING_NEVER_IMPORTS,
    )
    assert config["train"]["threads"] == 1
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert "torch uses 2 thread(s)" in log  # Snakemake's threads, not the recipe's
    assert "train job function took" in log  # flushed before the process exit
    assert (tmp_path / "run/metrics.json").exists()
    assert (tmp_path / "run/model.pt").stat().st_size > 0
    assert "heavy modules: []" in result.stdout


@pytest.mark.e2e
def test_a_failed_job_shows_its_reason_at_the_terminal(tmp_path) -> None:
    # the layout passes the config check; the labels are read by the job, which finds them negative
    images = np.zeros((20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", x_train=images, y_train=-np.ones(20, int), x_test=images, y_test=np.zeros(20, int))
    config = write_config(tmp_path, tiny_config(data={"dataset": "npz", "path": "bad.npz"}))
    result = snakemake(tmp_path, config, "--cores", "1", "results/tiny/data/dataset.npz", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "prepare_data: bad.npz: y_train has negative labels" in output
    assert "Traceback" not in output
