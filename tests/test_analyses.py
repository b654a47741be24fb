"""Per-run analyses: edge cases (a diverged run, a single-channel dataset, an fc-only summary), the batched shift
analysis against its definition, and what the analysis jobs import before their work."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from cnnablate.config import model_axes, validate_config
from cnnablate.data import ArrayDataset, make_synthetic, split_validation
from cnnablate.interpret import interpret_run
from cnnablate.loader import DeviceDataset
from cnnablate.results import summarize
from cnnablate.run_measures import measure_run
from cnnablate.runs import build_for_dataset, load_run
from cnnablate.shift import DIRECTIONS, translate
from cnnablate.shift import shift_robustness as shifted_accuracy
from cnnablate.train import train
from cnnablate.workflow_jobs import shift_robustness
from conftest import tiny_config
from test_train import make_job
from test_workflow_jobs import run_job


def _outputs(directory: Path) -> dict[str, str]:
    return {
        "measures": str(directory / "measures.json"),
        "erf_init": str(directory / "erf_init.npy"),
        "erf_trained": str(directory / "erf_trained.npy"),
        "figure": str(directory / "measures_erf.png"),
    }


def _diverge(run_dir: Path) -> None:
    """Turn a finished run into what a diverged run leaves behind: NaN weights, diverged metrics."""
    state = torch.load(run_dir / "model.pt", weights_only=True)
    torch.save(
        {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
        run_dir / "model.pt",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "diverged": True, "test_acc": None}))


def test_a_diverged_run_is_measured_without_inventing_numbers(tmp_path) -> None:
    job = make_job(tmp_path, "nan", max_steps=3)
    train(job)
    _diverge(job.run_dir)
    result = measure_run(load_run(job.run_dir, job.dataset), _outputs(job.run_dir), erf_images=4, erf_canvas=None)
    assert result["trf"]["size"]
    assert result["erf_init"] is not None
    assert result["erf"] is None
    assert result["edge_match_trained"] is None
    assert all("erf_std_trained" not in row for row in result["erf_by_depth"])
    smk = SimpleNamespace(
        input=SimpleNamespace(metrics=str(job.run_dir / "metrics.json"), data=str(job.dataset)),
        output=[str(tmp_path / "shift.json")],
        params=SimpleNamespace(shifts=[0, 2], jobs_per_gpu=1),
        threads=1,
    )
    shift_robustness.__wrapped__(smk)  # the job's body, without the process exit of a workflow job
    assert set(json.loads((tmp_path / "shift.json").read_text()).values()) == {None}


def test_single_channel_images_are_interpreted(tmp_path) -> None:
    colour = make_synthetic(128, 64, contrast=1.0, seed=0)
    grey = split_validation(
        ArrayDataset(
            colour.x_train[..., :1].copy(), colour.y_train, colour.x_test[..., :1].copy(), colour.y_test, colour.classes
        ),
        32,
        seed=0,
    )
    job = make_job(tmp_path, "grey", max_steps=3)
    grey.save(job.dataset)
    train(job)
    written = interpret_run(load_run(job.run_dir, job.dataset), tmp_path / "interpret")
    assert {"filters.png", "feature_maps.png", "attributions.png"} == set(written)


def test_summary_keeps_columns_that_are_empty_for_every_run() -> None:
    results = pd.DataFrame(
        {
            "study": "s",
            "variant": ["base", "base"],
            "ablations": "base",
            "seed": [0, 1],
            "test_acc": [0.5, 0.6],
            "diverged": [False, False],
            "trained": [True, True],
            "outcome": ["converged", "converged"],
            "retried": [False, False],
            "params": [10, 10],
            "erf_trf_ratio_trained": [None, None],
        }
    )
    for axis in model_axes():
        results[axis] = "x"
    summary = summarize(results)
    assert np.isnan(summary.loc[0, "erf_trf_ratio_trained_mean"])
    assert summary.loc[0, "params_mean"] == 10


def _shift_by_definition(model: torch.nn.Module, data: DeviceDataset, shifts: list[int]) -> dict[str, float]:
    """The shift analysis one translation at a time: zero-filled uint8 images, normalised, predicted."""
    with torch.no_grad():
        reference = model(data.normalize(data.images)).argmax(1)
        results = {"majority_class_fraction": torch.bincount(reference).max().item() / len(data)}
        for shift in shifts:
            accs, same = [], []
            for dy, dx in DIRECTIONS if shift else ((0, 0),):
                predicted = model(data.normalize(translate(data.images, dy * shift, dx * shift))).argmax(1)
                accs.append((predicted == data.labels).sum().item() / len(data))
                same.append((predicted == reference).sum().item() / len(data))
            results[f"shift_acc_{shift}px"] = sum(accs) / len(accs)
            results[f"shift_consistency_{shift}px"] = sum(same) / len(same)
    return results


@pytest.mark.parametrize("forward_batch", [9, 50, 4096])
def test_all_shifts_in_one_forward_pass_give_the_definitions_numbers(forward_batch: int) -> None:
    arrays = make_synthetic(64, 101, contrast=1.0, seed=0)  # 101 images: the last batch is a partial one
    model = build_for_dataset(validate_config(tiny_config())["base"], arrays, seed=0).eval()
    data = DeviceDataset(arrays.x_test, arrays.y_test, torch.device("cpu"))
    shifts = [0, 1, 3, 40]  # 40: beyond the 32-pixel image, a black picture
    expected = _shift_by_definition(model, data, shifts)
    assert expected["shift_consistency_1px"] < 1  # an untrained network: predictions do move with the image
    assert shifted_accuracy(model, data, shifts, forward_batch=forward_batch) == pytest.approx(expected, abs=1e-12)


# What an analysis job may not have imported when its work starts (loading the run), and at its exit: the shift
# job needs neither plots nor statistics; the measure job plots and fits only after its device work; none tracks.
NOT_BEFORE_WORK = {
    "shift_robustness": ("matplotlib", "seaborn", "captum", "torchvision", "mlflow", "scipy", "pandas"),
    "measure": ("matplotlib", "seaborn", "captum", "torchvision", "mlflow", "scipy", "pandas", "torch._dynamo"),
    "interpret": ("seaborn", "torchvision", "mlflow", "scipy", "pandas", "torch._dynamo"),
}
NOT_AT_EXIT = {
    "shift_robustness": NOT_BEFORE_WORK["shift_robustness"] + ("torch._dynamo",),
    # FLOPs counted without the compiler; the run's figure and rf_laws.json without the report's imports
    "measure": ("captum", "torchvision", "mlflow", "torch._dynamo", "seaborn", "pandas", "scipy.stats"),
    "interpret": NOT_BEFORE_WORK["interpret"],
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    job = make_job(tmp_path_factory.mktemp("analysis-jobs"), "run", max_steps=3)
    train(job)
    return job.run_dir


@pytest.mark.parametrize("name", sorted(NOT_BEFORE_WORK))
def test_analysis_jobs_use_snakemakes_threads_and_import_only_what_their_work_needs(
    name: str, finished_run: Path, tmp_path: Path
) -> None:
    outputs = {
        "shift_robustness": "['shift.json']",
        "interpret": "['interpret']",
        "measure": "OutputFiles(measures='measures.json', erf_init='erf_init.npy', erf_trained='erf_trained.npy', "
        "figure='erf.png', rf_laws='rf_laws.json')",
    }[name]
    watched = sorted(set(NOT_BEFORE_WORK[name]) | set(NOT_AT_EXIT[name]))
    dataset = finished_run.parent.parent / "data.npz"
    result = run_job(
        tmp_path,
        f"""
        import cnnablate.runs as runs

        class OutputFiles(SimpleNamespace):
            def items(self):
                return vars(self).items()

        load_run = runs.load_run

        def report_modules_and_load(*args, **kwargs):
            print("at first work:", [m for m in {watched!r} if m in sys.modules], flush=True)
            return load_run(*args, **kwargs)

        runs.load_run = report_modules_and_load
        jobs._leave = lambda code: (print("at exit:", [m for m in {watched!r} if m in sys.modules]), leave(code))
        smk = SimpleNamespace(
            input=SimpleNamespace(metrics={str(finished_run / "metrics.json")!r}, data={str(dataset)!r}),
            output={outputs},
            params=SimpleNamespace(jobs_per_gpu=1, shifts=[0, 2], erf_images=4, erf_canvas=None),
            threads=2,
            log=["job.log"],
        )
        jobs.{name}(smk)
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first_work = next(line for line in result.stdout.splitlines() if line.startswith("at first work:"))
    at_exit = next(line for line in result.stdout.splitlines() if line.startswith("at exit:"))
    assert not [module for module in NOT_BEFORE_WORK[name] if f"'{module}'" in first_work], first_work
    assert not [module for module in NOT_AT_EXIT[name] if f"'{module}'" in at_exit], at_exit
    log = (tmp_path / "job.log").read_text()
    assert "torch uses 2 thread(s)" in log
    assert "analysis on cpu" in log
    timings = json.loads(log.split("analysis timings ", 1)[1].splitlines()[0])
    assert set(timings) == {"cuda_init", "data", "work"}
    assert all(value >= 0 for value in timings.values())
