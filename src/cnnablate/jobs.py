"""Every workflow job as a function of one ``Job`` (inputs, outputs, params, wildcards, log, threads).

Workflow scripts are one line: ``run("train", snakemake)``. The job runs in the script's process, or, when a
job server is up (``cnnablate.jobserver``), in a process forked from one that has already imported torch and
MLflow: a short job then starts in milliseconds instead of seconds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnablate import layout

SERVER_ENV = "CNNABLATE_JOB_SERVER"


class NamedList(list):
    """A list whose named items are also attributes, like Snakemake's input/output/params objects."""

    def __init__(self, items: list[Any], names: dict[str, Any]) -> None:
        super().__init__(items)
        self.names = names

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["names"][name]
        except KeyError:
            raise AttributeError(name) from None

    def items(self) -> Any:
        return self.names.items()


class Job:
    """What a rule hands its script, in plain JSON-serialisable form."""

    FIELDS = ("input", "output", "params", "wildcards", "log")

    def __init__(self, kind: str, fields: dict[str, dict[str, Any]], threads: int) -> None:
        self.kind, self.threads = kind, threads
        for name in self.FIELDS:
            setattr(self, name, NamedList(fields[name]["items"], fields[name]["names"]))

    @classmethod
    def from_snakemake(cls, kind: str, smk: Any) -> Job:
        def plain(namedlist: Any) -> dict[str, Any]:
            return {"items": [_plain(v) for v in namedlist], "names": {k: _plain(v) for k, v in namedlist.items()}}

        return cls(kind, {name: plain(getattr(smk, name)) for name in cls.FIELDS}, smk.threads)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "threads": self.threads,
            "fields": {
                name: {"items": list(getattr(self, name)), "names": getattr(self, name).names} for name in self.FIELDS
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(data["kind"], data["fields"], data["threads"])


def _plain(value: Any) -> Any:
    """Snakemake's lists and dicts (Namedlist, AttributeGuard...) as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def train_job(job: Job) -> None:
    from cnnablate.train import TrainJob, train
    from cnnablate.tune import chosen_lr

    tuning = getattr(job.input, "tuning", None)
    train(
        TrainJob(
            study=job.params.study,
            variant=job.wildcards.variant,
            seed=int(job.wildcards.seed),
            spec=dict(job.params.spec),
            recipe=dict(job.params.recipe),
            dataset=Path(job.input.data),
            run_dir=Path(job.output.metrics).parent,
            checkpoint=Path(job.params.checkpoint),
            lr=chosen_lr(tuning) if tuning else None,
            tracking_setup=Path(job.input.tracking),
        )
    )


def tune_job(job: Job) -> None:
    from cnnablate.tune import tune_variant

    tune_variant(
        variant=job.wildcards.variant,
        spec=dict(job.params.spec),
        recipe=dict(job.params.recipe),
        tune=dict(job.params.tune),
        dataset=job.input.data,
        output=job.output[0],
        resume_file=job.params.resume,
        tracking_setup=job.input.tracking,
        study=job.params.study,
    )


def tuning_table_job(job: Job) -> None:
    from cnnablate.tune import tuning_table

    tuning_table(list(job.input), job.output[0])


def prepare_data_job(job: Job) -> None:
    import logging

    from cnnablate.data import prepare_dataset

    dataset = prepare_dataset(dict(job.params.data))
    dataset.save(job.output[0])
    logging.getLogger("cnnablate.data").info(
        "%d train and %d test images of shape %s, %d classes -> %s",
        len(dataset.y_train),
        len(dataset.y_test),
        dataset.x_train.shape[1:],
        dataset.num_classes,
        job.output[0],
    )


def download_data_job(job: Job) -> None:
    from cnnablate.data import download_cifar

    download_cifar(job.params.dataset, job.params.root)


def mlflow_setup_job(job: Job) -> None:
    from cnnablate.tracking import setup_study

    setup_study(job.params.study, job.params.tracking_uri, job.output[0], job.params.artifact_root)


def measure_job(job: Job) -> None:
    from cnnablate.run_measures import measure_run

    measure_run(
        run_dir=Path(job.input.metrics).parent,
        dataset=job.input.data,
        outputs=dict(job.output.items()),
        erf_images=job.params.erf_images,
        erf_canvas=job.params.erf_canvas,
    )


def shift_robustness_job(job: Job) -> None:
    from cnnablate.runs import load_run
    from cnnablate.shift import shift_robustness

    run = load_run(Path(job.input.metrics).parent, job.input.data)
    if run.metrics.get("diverged"):  # NaN logits would score as a constant predictor: record nothing instead
        results = {f"shift_{kind}_{s}px": None for s in job.params.shifts for kind in ("acc", "consistency")}
    else:
        results = shift_robustness(run.model, run.test, job.params.shifts, run.autocast)
    Path(job.output[0]).write_text(json.dumps(results, indent=2) + "\n")


def shift_robustness_figure_job(job: Job) -> None:
    from cnnablate.analysis_figures import shift_robustness_outputs

    shift_robustness_outputs(list(job.input), job.output.figure, job.output.table)


def rf_laws_job(job: Job) -> None:
    from cnnablate.rf_laws import run_rf_laws

    run_rf_laws(job.input.measures, job.output[0])


def rf_laws_study_job(job: Job) -> None:
    from cnnablate.rf_laws import study_rf_laws

    config = {"base": dict(job.params.base), "data": dict(job.params.data)}
    study_rf_laws(config, [Path(path).parent for path in job.input.metrics], dict(job.output.items()))


def interpret_job(job: Job) -> None:
    from cnnablate.interpret import interpret_run
    from cnnablate.runs import load_run

    interpret_run(load_run(Path(job.input.metrics).parent, job.input.data), job.output[0])


def mlflow_sync_job(job: Job) -> None:
    from cnnablate.tracking import read_setup, sync_analyses

    runs = []
    for metrics_path in job.input.metrics:
        metrics = json.loads(Path(metrics_path).read_text())
        runs.append((layout.job_key(metrics["study"], metrics["variant"], metrics["seed"]), Path(metrics_path).parent))
    synced = sync_analyses(read_setup(job.input.tracking), runs, job.params.analyses, dict(job.params.ablations))
    Path(job.output[0]).write_text(json.dumps(synced, indent=2) + "\n")


def report_job(job: Job) -> None:
    from cnnablate.config import Study
    from cnnablate.report import build_report

    build_report(
        Study.from_config(dict(job.params.config)),
        metrics=list(job.input.metrics),
        tuning=list(job.input.tuning),
        interpret=list(job.input.interpret),
        analyses=dict(job.params.analyses),
        results_csv=job.output.results,
        summary_csv=job.output.summary,
        figures_dir=job.output.figures,
        html_path=job.output.html,
    )


JOBS: dict[str, Callable[[Job], None]] = {
    "train": train_job,
    "tune": tune_job,
    "tuning_table": tuning_table_job,
    "prepare_data": prepare_data_job,
    "download_data": download_data_job,
    "mlflow_setup": mlflow_setup_job,
    "measure": measure_job,
    "shift_robustness": shift_robustness_job,
    "shift_robustness_figure": shift_robustness_figure_job,
    "rf_laws": rf_laws_job,
    "rf_laws_study": rf_laws_study_job,
    "interpret": interpret_job,
    "mlflow_sync": mlflow_sync_job,
    "report": report_job,
}


def execute(job: Job) -> None:
    """Run a job in this process: log to the rule's log file, use the rule's threads."""
    from cnnablate.logs import configure_logging

    configure_logging(job.log[0] if job.log else None)
    if job.kind in ("train", "tune", "measure", "shift_robustness", "interpret", "rf_laws_study"):
        import torch

        torch.set_num_threads(max(1, job.threads))
    started = time.perf_counter()
    try:
        JOBS[job.kind](job)
    except Exception:
        logging.getLogger("cnnablate.jobs").exception("%s job failed", job.kind)
        raise
    logging.getLogger("cnnablate.jobs").info("%s job function took %.3f s", job.kind, time.perf_counter() - started)


def run(kind: str, smk: Any) -> None:
    """Entry point of every workflow script: through the job server if one is up, else here."""
    job = Job.from_snakemake(kind, smk)
    socket_path = os.environ.get(SERVER_ENV)
    if socket_path and Path(socket_path).exists():
        from cnnablate.jobserver import submit

        if submit(socket_path, job):
            return
    execute(job)
