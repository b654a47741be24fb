"""The workflow's jobs: one function per rule, called by the rule's script with Snakemake's ``snakemake`` object.

Every built-in script is two lines, e.g. ``from cnnablate.workflow_jobs import train`` and ``train(snakemake)``;
an analysis of your own needs no script: its rule names its ``@workflow_job`` function in ``params.job`` and
runs the shared ``workflow/scripts/job.py`` (``run_named_job``; README, "Add an analysis rule").
Snakemake starts, measures and kills each job's process itself; this module only makes that process cheap:
a job imports only the modules its ``@workflow_job(...)`` names (this module imports no heavy library), and a
finished job leaves through a flushed ``os._exit`` instead of tearing down torch and MLflow (1-2 s on a small
CPU).

Dict-valued params arrive as canonical JSON strings (``cnnablate.config.canonical``) and are decoded here.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cnnablate import layout
from cnnablate.logs import configure_logging

log = logging.getLogger("cnnablate.jobs")

Job = Callable[[Any], None]


def _project_error(exc: BaseException) -> bool:
    """The project's own errors carry a complete message for the user; anything else is a bug (traceback)."""
    from cnnablate.config import ConfigError
    from cnnablate.data import DataError

    return isinstance(exc, ConfigError | DataError)


def _leave(code: int) -> None:
    """Flush every stream and log file, then exit without the interpreter's slow teardown."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def workflow_job(*modules: str) -> Callable[[Job], Job]:
    """Run ``function(snakemake)`` as a whole job: import ``modules`` (what the job needs; only them), log to the
    rule's log file, report the project's own errors as one line (no traceback) with exit status 1, and exit
    the process when done. The logged "job function took" time is the job's work, imports excluded
    (benchmarks/overhead.py counts the imports as fixed cost)."""

    def decorate(function: Job) -> Job:
        @functools.wraps(function)
        def job(smk: Any) -> None:
            configure_logging(smk.log[0] if smk.log else None)
            try:
                for module in modules:
                    importlib.import_module(module)
                started = time.perf_counter()
                function(smk)
            except Exception as exc:
                if _project_error(exc):
                    log.error("%s: %s", function.__name__, " ".join(str(exc).split()))
                else:
                    log.exception("%s job failed", function.__name__)
                _leave(1)
            log.info("%s job function took %.3f s", function.__name__, time.perf_counter() - started)
            _leave(0)

        return job

    return decorate


def run_named_job(smk: Any) -> None:
    """The job of a rule whose script is the shared ``workflow/scripts/job.py`` (``JOB_SCRIPT``): the
    ``@workflow_job`` function its ``params.job`` names as ``"module:function"``, so that an analysis of your own
    needs no script file of its own (README, "Add an analysis rule")."""
    module, _, name = smk.params.job.partition(":")
    getattr(importlib.import_module(module), name)(smk)


def share_compile_cache(checkpoint: str | Path) -> None:
    """Point torch.compile's cache beside the checkpoints (``results/<study>/checkpoints``), so that
    the jobs of a study, on one machine or on the nodes of a cluster sharing the folder, compile each graph once."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(checkpoint).absolute().parents[1] / "compile-cache"))


def set_torch_threads(threads: int) -> None:
    """Snakemake's ``threads`` for the job (the rule's default or ``--set-threads``) decide torch's threads."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    log.info("torch uses %d thread(s)", torch.get_num_threads())


def run_dir(smk: Any) -> Path:
    """The run folder of a per-run job (where its metrics.json lives)."""
    return Path(smk.input.metrics).parent


@contextmanager
def analysis_run(smk: Any) -> Iterator[Any]:
    """A finished run opened for an analysis job (measure, shift_robustness, interpret): Snakemake's threads, a
    GPU slot when the host has one (the training jobs' slot locks, so ``train.jobs_per_gpu`` counts analyses
    too), the model and test images on that device, in the memory format the run trained with. Logs the job's
    timings as one JSON line that benchmarks/overhead.py reads: cuda_init (GPU slot and CUDA start; about 0 on a
    CPU), data (dataset and model onto the device), work (the analysis itself)."""
    set_torch_threads(smk.threads)
    import torch

    from cnnablate.devices import choose_device
    from cnnablate.runs import load_run

    clock = time.perf_counter()
    choice = choose_device("fp32", "off", smk.params.jobs_per_gpu)  # precision: the run's own (run.autocast)
    timings = {"cuda_init": time.perf_counter() - clock}
    clock = time.perf_counter()
    run = load_run(run_dir(smk), smk.input.data, choice.device)
    if run.metrics.get("channels_last"):
        run.model.to(memory_format=torch.channels_last)
        run.test.memory_format = torch.channels_last
    timings["data"] = time.perf_counter() - clock
    log.info("analysis on %s, autocast %s, channels_last %s", choice.description, run.autocast, run.test.memory_format)
    clock = time.perf_counter()
    yield run
    timings["work"] = time.perf_counter() - clock
    log.info("analysis timings %s", json.dumps({key: round(value, 4) for key, value in timings.items()}))
    del choice  # the GPU slot is held until here


@workflow_job("cnnablate.data")
def download_data(smk: Any) -> None:
    from cnnablate.data import download_cifar

    download_cifar(smk.params.dataset, smk.params.root)


@workflow_job("cnnablate.data")
def prepare_data(smk: Any) -> None:
    from cnnablate.data import prepare_dataset

    dataset = prepare_dataset(json.loads(smk.params.data))
    dataset.save(smk.output[0])
    log.info(
        "%d train and %d test images of shape %s, %d classes -> %s",
        len(dataset.y_train),
        len(dataset.y_test),
        dataset.x_train.shape[1:],
        dataset.num_classes,
        smk.output[0],
    )


@workflow_job("cnnablate.tracking", "mlflow.tracking")
def mlflow_setup(smk: Any) -> None:
    from cnnablate.tracking import setup_study

    setup_study(smk.params.study, smk.params.tracking_uri, smk.output[0], smk.params.artifact_root)


@workflow_job("cnnablate.train", "cnnablate.tune")
def train(smk: Any) -> None:
    from cnnablate.config import read_job_param

    set_torch_threads(smk.threads)
    share_compile_cache(smk.params.checkpoint)
    from cnnablate.train import TrainJob
    from cnnablate.train import train as train_run
    from cnnablate.tune import read_tuning

    tuning = getattr(smk.input, "tuning", None)
    train_run(
        TrainJob(
            study=smk.params.study,
            variant=smk.wildcards.variant,
            seed=int(smk.wildcards.seed),
            spec=read_job_param(smk.params.spec, "model"),
            recipe=read_job_param(smk.params.recipe, "train"),
            dataset=Path(smk.input.data),
            run_dir=Path(smk.output.metrics).parent,
            checkpoint=Path(smk.params.checkpoint),
            tuning=read_tuning(tuning) if tuning else None,
        )
    )


@workflow_job("cnnablate.tune")
def tune(smk: Any) -> None:
    from cnnablate.config import read_job_param

    set_torch_threads(smk.threads)
    share_compile_cache(smk.params.resume)
    from cnnablate.tune import tune_variant

    tune_variant(
        variant=smk.wildcards.variant,
        spec=read_job_param(smk.params.spec, "model"),
        recipe=read_job_param(smk.params.recipe, "train"),
        tune=read_job_param(smk.params.tune, "tune"),
        dataset=smk.input.data,
        output=smk.output[0],
        resume_file=smk.params.resume,
        study=smk.params.study,
    )


@workflow_job("cnnablate.tracking", "mlflow.tracking")
def track(smk: Any) -> None:
    from cnnablate.tracking import track_run

    track_run(smk.input.tracking, run_dir(smk), smk.output[0])


@workflow_job("cnnablate.tracking", "mlflow.tracking")
def track_tuning(smk: Any) -> None:
    from cnnablate.tracking import track_tuning as track_search

    track_search(smk.input.tracking, smk.input.tuning, smk.output[0])


@workflow_job("cnnablate.tune")
def tuning_table(smk: Any) -> None:
    from cnnablate.tune import tuning_table as write_table

    write_table(list(smk.input), smk.output[0])


@workflow_job("cnnablate.run_measures")
def measure(smk: Any) -> None:
    from cnnablate.run_measures import measure_run

    outputs = dict(smk.output.items())
    rf_laws_output = outputs.pop("rf_laws")
    with analysis_run(smk) as run:
        measure_run(run, outputs=outputs, erf_images=smk.params.erf_images, erf_canvas=smk.params.erf_canvas)
    from cnnablate.power_law import run_rf_laws

    run_rf_laws(outputs["measures"], rf_laws_output)


@workflow_job("cnnablate.runs", "cnnablate.shift")
def shift_robustness(smk: Any) -> None:
    from cnnablate.shift import shift_robustness as shifted_accuracy

    with analysis_run(smk) as run:
        if run.metrics.get("diverged"):  # NaN logits would score as a constant predictor: record nothing instead
            results = {f"shift_{kind}_{s}px": None for s in smk.params.shifts for kind in ("acc", "consistency")}
        else:
            results = shifted_accuracy(run.model, run.test, smk.params.shifts, run.autocast)
    Path(smk.output[0]).write_text(json.dumps(results, indent=2) + "\n")


@workflow_job("cnnablate.analysis_figures")
def shift_robustness_figure(smk: Any) -> None:
    from cnnablate.analysis_figures import shift_robustness_outputs

    shift_robustness_outputs(list(smk.input), smk.output.figure, smk.output.table)


@workflow_job("cnnablate.interpret", "cnnablate.runs")
def interpret(smk: Any) -> None:
    from cnnablate.interpret import interpret_run

    with analysis_run(smk) as run:
        interpret_run(run, smk.output[0])


@workflow_job("cnnablate.report")
def report(smk: Any) -> None:
    from cnnablate.config import Study, read_study_param
    from cnnablate.report import build_report
    from cnnablate.sections import Section

    build_report(
        Study.from_config(read_study_param(smk.params.config)),
        metrics=list(smk.input.metrics),
        tuning=list(smk.input.tuning),
        interpret=list(smk.input.interpret),
        analyses=json.loads(smk.params.analyses),
        sections={name: Section.from_dict(section) for name, section in json.loads(smk.params.sections).items()},
        results_csv=smk.output.results,
        summary_csv=smk.output.summary,
        figures_dir=smk.output.figures,
        html_path=smk.output.html,
        test_labels=smk.input.data,
    )


@workflow_job("cnnablate.rf_laws")
def rf_laws_study(smk: Any) -> None:
    set_torch_threads(smk.threads)
    from cnnablate.config import read_job_param
    from cnnablate.rf_laws import study_rf_laws

    config = {"base": read_job_param(smk.params.base, "model"), "data": json.loads(smk.params.data)}
    study_rf_laws(config, [Path(path).parent for path in smk.input.metrics], dict(smk.output.items()))


@workflow_job("cnnablate.tracking", "mlflow.tracking")
def mlflow_sync(smk: Any) -> None:
    from cnnablate.config import read_study_param
    from cnnablate.tracking import finish_study, read_setup, sync_analyses

    setup = read_setup(smk.input.tracking)
    runs = []
    for metrics_path in smk.input.metrics:
        metrics = json.loads(Path(metrics_path).read_text())
        runs.append((layout.job_key(metrics["study"], metrics["variant"], metrics["seed"]), Path(metrics_path).parent))
    synced = sync_analyses(setup, runs, json.loads(smk.params.analyses), json.loads(smk.params.ablations))
    finish_study(
        setup,
        config=read_study_param(smk.params.config),
        summary_csv=smk.input.summary,
        artifacts=[smk.input.summary, smk.input.results, smk.input.html],
    )
    Path(smk.output[0]).write_text(json.dumps(synced, indent=2) + "\n")
