"""Per-run analyses on edge cases: a diverged run, a single-channel dataset, an fc-only summary."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from cnnablate.config import model_axes
from cnnablate.data import ArrayDataset, make_synthetic, split_validation
from cnnablate.interpret import interpret_run
from cnnablate.results import summarize
from cnnablate.run_measures import measure_run
from cnnablate.runs import load_run
from cnnablate.train import train
from cnnablate.workflow_jobs import shift_robustness
from test_train import make_job


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
    result = measure_run(job.run_dir, job.dataset, _outputs(job.run_dir), erf_images=4, erf_canvas=None)
    assert result["trf"]["size"] and result["erf_init"] is not None
    assert result["erf"] is None and result["edge_match_trained"] is None
    assert all("erf_std_trained" not in row for row in result["erf_by_depth"])
    smk = SimpleNamespace(
        input=SimpleNamespace(metrics=str(job.run_dir / "metrics.json"), data=str(job.dataset)),
        output=[str(tmp_path / "shift.json")],
        params=SimpleNamespace(shifts=[0, 2]),
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
            "params": [10, 10],
            "erf_trf_ratio_trained": [None, None],
        }
    )
    for axis in model_axes():
        results[axis] = "x"
    summary = summarize(results)
    assert np.isnan(summary.loc[0, "erf_trf_ratio_trained_mean"]) and summary.loc[0, "params_mean"] == 10
