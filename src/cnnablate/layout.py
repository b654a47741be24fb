"""Where a study's files live and how a job is named: defined here once, for the rules and the package alike.

The rules build their path patterns from these functions (``run_dir(results, "{variant}", "{seed}")``), the
package finds a run's files from its run directory, and nobody parses a path back into a variant and seed:
a run's identity is read from its own ``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = "metrics.json"
HISTORY = "history.csv"
MODEL = "model.pt"
PREDICTIONS = "test_predictions.npy"  # the predicted class of every test image, in the test split's order
MEASURES = "measures.json"
ERF_INIT = "erf_init.npy"
ERF_TRAINED = "erf_trained.npy"
ERF_FIGURE = "measures_erf.png"
INTERPRET = "interpret"
TRACKED = "mlflow_run.json"  # the MLflow run id of a run (or a tuning search) once the track rule mirrored it


def results_dir(study: str) -> str:
    """Every file a study computes: results/<study>."""
    return f"results/{study}"


def reports_dir(study: str) -> str:
    """The study's report: reports/<study>."""
    return f"reports/{study}"


def run_dir(results: str | Path, variant: str, seed: int | str) -> str:
    """One (variant, seed) run: <results>/runs/<variant>/seed<seed>; with "{variant}", "{seed}" a rule pattern."""
    return f"{results}/runs/{variant}/seed{seed}"


def run_file(run: str | Path, name: str) -> Path:
    """A file of a run (``METRICS``, ``HISTORY``, ... or an analysis's ``<name>.json``)."""
    return Path(run) / name


def analysis_file(run: str | Path, analysis: str) -> Path:
    """The JSON of numbers an analysis rule writes for one run."""
    return run_file(run, f"{analysis}.json")


def tuning_file(results: str | Path, variant: str) -> str:
    """The learning-rate search of one variant: <results>/tuning/<variant>.json."""
    return f"{results}/tuning/{variant}.json"


def tuning_tracked(results: str | Path, variant: str) -> str:
    """The MLflow run id of one variant's learning-rate search: <results>/tuning/tracked/<variant>.json."""
    return f"{results}/tuning/tracked/{variant}.json"


def checkpoint(results: str | Path, variant: str, seed: int | str) -> str:
    """A training job's resumable state, outside its outputs (Snakemake deletes a failed job's outputs)."""
    return f"{results}/checkpoints/{variant}/seed{seed}.pt"


def tuning_resume(results: str | Path, variant: str) -> str:
    """A learning-rate search's finished grid points, kept while it runs so a killed search resumes."""
    return f"{results}/checkpoints/tune/{variant}.pt"


def job_key(study: str, variant: str, seed: int | str) -> str:
    """The MLflow tag that names one training job: <study>/<variant>/seed<seed>."""
    return f"{study}/{variant}/seed{seed}"


def run_metrics(path: str | Path) -> dict[str, Any]:
    """The metrics.json of the run a run file (or folder) belongs to: its identity is read, never parsed."""
    return json.loads(run_file(Path(path).parent, METRICS).read_text())
