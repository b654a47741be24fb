"""MLflow tracking: one experiment and parent run per study (created once, upstream), one child run per job.

The parent run holds the study: it is RUNNING from set-up until ``finish_study`` (the workflow's last MLflow
step) logs the config, the tables, the report and each variant's mean accuracy and ends it FINISHED. Every run
carries MLflow's standard ``mlflow.source.git.commit`` tag.

Concurrency rules learned the hard way (mlflow #979, #10510, #20014): experiments are created by a single
setup job, never by the parallel training jobs; the SQLite store runs in WAL mode; a job first marks its
own stale RUNNING runs KILLED (a killed process never ends its run) and retires an older FINISHED run of
the same job key, so a study never holds two FINISHED runs per (variant, seed). The files under results/
stay the source of truth; MLflow mirrors them.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

JOB_KEY_TAG = "cnnablate.job_key"
ROLE_TAG = "cnnablate.role"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
SOURCE_DIR = Path(__file__).resolve().parent
# Files above this size are logged by reference (path, size, sha256 as tags), not copied: the results/ folder
# already holds them, and a study of large models would otherwise store every model.pt twice.
COPY_LIMIT_BYTES = 100 * 2**20
REFERENCE_TAG = "cnnablate.file"


@functools.cache
def git_commit() -> str:
    """The commit of the code that runs (the package's checkout), with '+dirty' when it has local changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10, cwd=SOURCE_DIR
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=SOURCE_DIR,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_tags() -> dict[str, str]:
    """MLflow's standard commit tag (the bare hash, which the UI links) and ours (which says '+dirty')."""
    commit = git_commit()
    return {GIT_COMMIT_TAG: commit.removesuffix("+dirty"), "git_commit": commit}


def resolve_tracking_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI wins over the config; a SQLite file's folder is created (relative to the workdir)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        Path(uri[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def _client(tracking_uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _enable_wal(tracking_uri: str) -> None:
    """WAL lets readers and one writer proceed together; the mode persists in the database file."""
    if tracking_uri.startswith("sqlite:///"):
        with sqlite3.connect(tracking_uri[len("sqlite:///") :]) as db:
            db.execute("PRAGMA journal_mode=WAL")


def setup_study(study: str, configured_uri: str, output: str | Path, artifact_root: str | Path) -> dict[str, str]:
    """Create (or find) the study's experiment and parent run (left RUNNING); write their ids for the jobs."""
    uri = resolve_tracking_uri(configured_uri)
    client = _client(uri)  # the first connection creates and migrates the SQLite schema
    _enable_wal(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        location = Path(artifact_root).resolve().as_uri() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(study, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    parents = client.search_runs(
        [experiment_id],
        f"tags.`{ROLE_TAG}` = 'parent'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if parents:
        parent_id = parents[0].info.run_id
    else:
        tags = {ROLE_TAG: "parent", **source_tags()}
        parent_id = client.create_run(experiment_id, run_name=f"{study} (study)", tags=tags).info.run_id
    info = {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent_id, "study": study}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(info, indent=2) + "\n")
    return info


def read_setup(path: str | Path) -> dict[str, str]:
    """The ids written by ``setup_study``; MLFLOW_TRACKING_URI still wins for the URI."""
    info = json.loads(Path(path).read_text())
    info["tracking_uri"] = os.environ.get("MLFLOW_TRACKING_URI") or info["tracking_uri"]
    return info


def _retry(action, attempts: int = 5):  # type: ignore[no-untyped-def]
    """Retry a store call a few times: SQLite can still report 'database is locked' under heavy contention."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    return None


def file_reference(path: Path) -> dict[str, str]:
    """Tags that stand for a file too large to copy into MLflow: where it is, its size, its sha256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    prefix = f"{REFERENCE_TAG}.{path.name}"
    return {
        f"{prefix}.path": str(path.resolve()),
        f"{prefix}.bytes": str(path.stat().st_size),
        f"{prefix}.sha256": digest.hexdigest(),
    }


def _stringify(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


class RunLogger:
    """Logs params, step-indexed metrics and files to one existing MLflow run."""

    def __init__(self, client, run_id: str) -> None:  # type: ignore[no-untyped-def]
        self.client, self.run_id = client, run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, _stringify(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            _retry(lambda start=start: self.client.log_batch(self.run_id, params=items[start : start + 100]))

    def log_metrics(self, metrics: Mapping[str, float | None], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items() if value is not None]
        _retry(lambda: self.client.log_batch(self.run_id, metrics=items))

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        """Copy each existing file into the run's artifacts; a file above :data:`COPY_LIMIT_BYTES` (a 612 MB
        ``arch-local`` model.pt) is logged by reference instead: tags with its path, size and sha256."""
        for path in map(Path, paths):
            if not path.exists():
                continue
            if path.stat().st_size > COPY_LIMIT_BYTES:
                for key, value in file_reference(path).items():
                    _retry(lambda key=key, value=value: self.client.set_tag(self.run_id, key, value))
            else:
                _retry(lambda path=path: self.client.log_artifact(self.run_id, str(path), artifact_path))


class JobRun(RunLogger):
    """The MLflow child run of one (variant, seed) job, created fresh for every attempt."""

    def __init__(self, setup: Mapping[str, str], job_key: str, run_name: str, tags: Mapping[str, Any]) -> None:
        client = _client(setup["tracking_uri"])
        experiment_id = setup["experiment_id"]
        query = f"tags.`{JOB_KEY_TAG}` = '{job_key}'"
        previous = _retry(lambda: client.search_runs([experiment_id], query))
        for run in previous:
            if run.info.status in ("RUNNING", "SCHEDULED"):
                _retry(lambda run=run: client.set_terminated(run.info.run_id, "KILLED"))
        all_tags = {
            JOB_KEY_TAG: job_key,
            "mlflow.parentRunId": setup["parent_run_id"],
            ROLE_TAG: "job",
            **source_tags(),
        }
        all_tags.update({key: _stringify(value) for key, value in tags.items()})
        run = _retry(lambda: client.create_run(experiment_id, run_name=run_name, tags=all_tags))
        super().__init__(client, run.info.run_id)
        self._superseded = [r.info.run_id for r in previous if r.info.status == "FINISHED"]

    def finish(self, status: str = "FINISHED") -> None:
        """End the run; a FINISHED run retires older FINISHED runs of the same job key (deleted, not lost)."""
        _retry(lambda: self.client.set_terminated(self.run_id, status))
        if status == "FINISHED":
            for run_id in self._superseded:
                _retry(lambda run_id=run_id: self.client.set_tag(run_id, "cnnablate.superseded_by", self.run_id))
                _retry(lambda run_id=run_id: self.client.delete_run(run_id))

    def __enter__(self) -> JobRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """FINISHED when the block completed, FAILED when it raised (the error still propagates)."""
        self.finish("FINISHED" if kind is None else "FAILED")

    def log_curves(self, rows: Iterable[Mapping[str, Any]], step_key: str = "step", prefix: str = "") -> None:
        """Every numeric column of ``rows`` as a curve over ``step_key``, in batches of MLflow's 1,000 metrics."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(prefix + key, float(value), now, int(float(row[step_key])))
            for row in rows
            for key, value in row.items()
            if key != step_key and _finite_number(value)
        ]
        for start in range(0, len(items), 1000):
            _retry(lambda start=start: self.client.log_batch(self.run_id, metrics=items[start : start + 1000]))


def _finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def job_run_logger(setup: Mapping[str, str], job_key: str) -> RunLogger:
    """A logger for the newest FINISHED run of a job key: analysis rules attach their results to it."""
    client = _client(setup["tracking_uri"])
    query = f"tags.`{JOB_KEY_TAG}` = '{job_key}' and attributes.status = 'FINISHED'"
    runs = _retry(
        lambda: client.search_runs(
            [setup["experiment_id"]], query, max_results=1, order_by=["attributes.start_time DESC"]
        )
    )
    if not runs:
        raise LookupError(f"no FINISHED MLflow run with {JOB_KEY_TAG} = {job_key!r}")
    return RunLogger(client, runs[0].info.run_id)


def numeric_items(mapping: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of a (nested) analysis result, as dotted MLflow metric names."""
    from cnnablate.config import flatten

    flat = flatten(mapping, prefix)
    return {
        key.replace("[", "_").replace("]", ""): float(value)
        for key, value in flat.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value
    }


def sync_analyses(
    setup: Mapping[str, str],
    runs: Iterable[tuple[str, Path]],
    analyses: Iterable[str],
    ablation_tags: Mapping[str, str] | None = None,
) -> dict:
    """Log every run's analysis results (RUN/<analysis>.json) into its MLflow run, skipping unchanged values,
    and tag each run with the ablation blocks that name its variant in the current config.

    One process for the whole study: analysis jobs stay light, and a rerun logs nothing twice.
    """
    client = _client(setup["tracking_uri"])
    analyses = list(analyses)
    synced: dict[str, Any] = {}
    for job_key, run_dir in runs:
        logger = job_run_logger(setup, job_key)
        variant = job_key.split("/")[1]
        if ablation_tags and variant in ablation_tags:
            _retry(
                lambda logger=logger, variant=variant: client.set_tag(logger.run_id, "ablation", ablation_tags[variant])
            )
        existing = _retry(lambda logger=logger: client.get_run(logger.run_id)).data.metrics
        logged: list[str] = []
        for analysis in analyses:
            path = run_dir / f"{analysis}.json"
            values = numeric_items(json.loads(path.read_text()), f"{analysis}.")
            changed = {key: value for key, value in values.items() if existing.get(key) != value}
            if changed:
                logger.log_metrics(changed)
                logger.log_artifacts([path, *sorted(run_dir.glob(f"{analysis}*.png"))], artifact_path=analysis)
                logged += list(changed)
        synced[job_key] = {"run_id": logger.run_id, "logged": logged}
    return synced


def variant_mean_accuracy(summary_csv: str | Path) -> dict[str, float]:
    """``test_acc_mean.<variant>`` for every variant of the study's summary table that has a mean."""
    with open(summary_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    means = {f"test_acc_mean.{row['variant']}": float(row["test_acc_mean"] or "nan") for row in rows}
    return {key: value for key, value in means.items() if math.isfinite(value)}


def finish_study(
    setup: Mapping[str, str], config: Mapping[str, Any], summary_csv: str | Path, artifacts: Iterable[str | Path]
) -> None:
    """Give the parent run the whole study, then end it FINISHED: the config, the tables and the report as
    artifacts (under ``study/``), each variant's mean test accuracy as a metric, the current commit as a tag."""
    client = _client(setup["tracking_uri"])
    parent = RunLogger(client, setup["parent_run_id"])
    _retry(lambda: client.log_dict(parent.run_id, dict(config), "study/config.yaml"))
    parent.log_artifacts(artifacts, artifact_path="study")
    parent.log_metrics(variant_mean_accuracy(summary_csv))
    for key, value in source_tags().items():
        _retry(lambda key=key, value=value: client.set_tag(parent.run_id, key, value))
    _retry(lambda: client.set_terminated(parent.run_id, "FINISHED"))


def run_params(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The MLflow params of a training run: its model spec and recipe, flattened, and what it was trained on."""
    from cnnablate.config import flatten

    return {
        **flatten(metrics["spec"], "model."),
        **flatten(metrics["recipe"], "train."),
        "train.peak_lr": metrics["lr"],
        "seed": metrics["seed"],
        "variant": metrics["variant"],
        "dataset": metrics["dataset"],
        "data.validation_images": metrics["validation_images"],
        "data.validation_digest": metrics["validation_digest"],
    }


FINAL_METRICS = (
    "test_acc",
    "val_acc",
    "params",
    "steps",
    "train_seconds",
    "diverged",
    "trained",
    "converged",
    "retried",
)


def track_run(setup_path: str | Path, run_dir: str | Path, output: str | Path) -> str:
    """Mirror one finished training run into MLflow from its files (metrics.json, history.csv, model.pt).

    The ``track`` rule runs this after ``train``, on the machine that runs Snakemake: no training job waits for
    MLflow (seconds of imports and database round trips per job), and a run appears in the UI as soon as its
    job ends. Returns the MLflow run id, also written to ``output``.
    """
    from cnnablate import layout

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / layout.METRICS).read_text())
    with open(run_dir / layout.HISTORY, newline="") as handle:
        history = list(csv.DictReader(handle))
    tags = {"variant": metrics["variant"], "seed": metrics["seed"], "study": metrics["study"]}
    key = layout.job_key(metrics["study"], metrics["variant"], metrics["seed"])
    with JobRun(read_setup(setup_path), key, f"{metrics['variant']}/seed{metrics['seed']}", tags) as run:
        run.log_params(run_params(metrics))
        run.log_curves(history)
        run.log_metrics({f"final_{name}": float(metrics[name]) for name in FINAL_METRICS if metrics[name] is not None})
        for number, attempt in enumerate(metrics["attempts"], start=1):
            run.log_metrics(numeric_items(attempt, f"attempt{number}."))
        run.log_artifacts(
            [run_dir / name for name in (layout.METRICS, layout.HISTORY, layout.MODEL, layout.PREDICTIONS)]
        )
    Path(output).write_text(json.dumps({"run_id": run.run_id}) + "\n")
    return run.run_id


def track_tuning(setup_path: str | Path, tuning_file: str | Path, output: str | Path) -> str:
    """Mirror one variant's learning-rate search into MLflow (role=tuning, so it never mixes with final runs):
    each rate's validation curve, the chosen rate and whether the variant trained at any rate."""
    result = json.loads(Path(tuning_file).read_text())
    study, variant = result["study"], result["variant"]
    tags = {ROLE_TAG: "tuning", "variant": variant, "study": study}
    with JobRun(read_setup(setup_path), f"{study}/{variant}/tune", f"{variant}/tune", tags) as run:
        run.log_params({"tune.lrs": [p["lr"] for p in result["grid"]], "tune.max_steps": result["max_steps"]})
        for point in result["grid"]:
            curve = [{"check": check, "val_acc": value} for check, value in enumerate(point["val_curve"], start=1)]
            run.log_curves(curve, step_key="check", prefix=f"lr_{point['lr']:g}/")
        run.log_metrics({"chosen_lr": result["chosen_lr"], "trained": float(result["trained"])})
    Path(output).write_text(json.dumps({"run_id": run.run_id}) + "\n")
    return run.run_id
