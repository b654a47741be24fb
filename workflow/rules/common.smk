# Turns the validated config into the study's variants, paths and list of targets.
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from cnnablate import layout
from cnnablate.config import (
    ConfigError,
    Study,
    canonical,
    job_param,
    study_param,
    validate_config,
)
from cnnablate.sections import Column, Output, Section

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

# Before any job: one line naming the key; sys.exit prints it without Snakemake's traceback lines.
try:
    config.update(validate_config(config))
except ConfigError as error:
    sys.exit(f"config error: {error}")
STUDY = Study.from_config(config)
RESULTS = layout.results_dir(STUDY.name)
REPORTS = layout.reports_dir(STUDY.name)
RUN = layout.run_dir(RESULTS, "{variant}", "{seed}")
LOGS = f"results/{STUDY.name}/logs"
BENCHMARKS = f"results/{STUDY.name}/benchmarks"
ENV = "../../environment.yml"
JOB_SCRIPT = "../scripts/job.py"  # a rule's job by name: params.job = "module:function"
ANALYSES = {}  # name -> per-run output, study-level outputs (register_analysis)
# name -> the report section it declares (cnnablate.sections), read by the report rule
SECTIONS = {}
# where a job's log and benchmark go below LOGS and BENCHMARKS, per kind of job
JOB_SCOPES = {"run": ["{variant}", "seed{seed}"], "variant": ["{variant}"], "study": []}


wildcard_constraints:
    variant=r"[A-Za-z0-9.-]+(_[A-Za-z0-9.-]+)*",
    seed=r"\d+",


def run_file(name):
    """A file of every run as a pattern for rules (named by cnnablate.layout), e.g. run_file(layout.METRICS)."""
    return str(layout.run_file(RUN, name))


def analysis_file(name):
    """The JSON of numbers an analysis writes for every run, as a pattern for rules (RUN/<name>.json)."""
    return str(layout.analysis_file(RUN, name))


def job(name, scope="run", slot=None):
    """A rule's preamble, defined once: its log and benchmark (one per run, per variant or per study: JOB_SCOPES)
    and, for a job that holds a GPU slot, its threads, resources and params.

    ``slot="training"``: a training-sized job (train, tune); ``slot="analysis"``: a job sharing the GPU with
    training (train.jobs_per_gpu per GPU) when the host has one, else train.threads CPU threads. Rules use it as
    ``log: JOB.log``, ``benchmark: JOB.benchmark``, ``threads: JOB.threads``, ``resources: **JOB.resources`` and
    ``params: **JOB.params``.
    """
    stem = "/".join([name, *JOB_SCOPES[scope]])
    resources = {
        "training": {"gpu": 1, "mem_mb": 8000, "runtime": 60},
        "analysis": {"gpu": 1},
    }.get(slot, {})
    return SimpleNamespace(
        log=f"{LOGS}/{stem}.log",
        benchmark=f"{BENCHMARKS}/{stem}.tsv",
        threads=config["train"]["threads"],
        resources=resources,
        params=(
            {"jobs_per_gpu": config["train"]["jobs_per_gpu"]}
            if slot == "analysis"
            else {}
        ),
    )


def register_analysis(section, study_outputs=()):
    """Declare a per-run analysis by its report section (cnnablate.sections.Section): its rule writes
    analysis_file(section.name) (flat metrics), and its study-level rule the files ``study_outputs`` (pass that
    rule's own outputs: ``rules.<rule>.output``); the report, Snakemake's report and MLflow pick them up.
    """
    ANALYSES[section.name] = {
        "run_output": analysis_file(section.name),
        "study_outputs": list(study_outputs),
    }
    SECTIONS[section.name] = section


def caption_file(output):
    """The .rst file Snakemake's report() reads an output's caption from, written from the section's words
    (rewritten only when they change), so that no caption is written twice."""
    path = Path(RESULTS, "report_captions", f"{output.file}.rst").resolve()
    if not path.exists() or path.read_text() != output.caption:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(output.caption)
    return str(path)


def study_outputs(section, *keys):
    """A section's study-level outputs (all of them, or those named) as a rule's named outputs under
    RESULTS/figures and RESULTS/tables, marked for Snakemake's report with the section's own captions.
    """
    return {
        key: report(
            f"{RESULTS}/{output.folder}/{output.file}",
            caption=caption_file(output),
            category="Analyses",
            subcategory=section.title,
        )
        for key, output in section.outputs.items()
        if not keys or key in keys
    }


def runs():
    """Every (variant, seed) pair of the study."""
    return [(variant, seed) for variant in STUDY.variants for seed in config["seeds"]]


def expand_runs(pattern):
    return [pattern.format(variant=variant, seed=seed) for variant, seed in runs()]


def variant_spec(wildcards):
    """The variant's model spec as a job param (see `job_param`: a neutral new axis reruns nothing)."""
    return job_param("model", STUDY.variants[wildcards.variant].spec)


def ablation_tags(wildcards=None):
    """variant -> the ablation blocks naming it (MLflow tags; set by mlflow_sync, so a new block retrains nothing)."""
    members = {}
    for ablation, variant in STUDY.ablation_members():
        members.setdefault(variant, []).append(ablation)
    return canonical({variant: ",".join(names) for variant, names in members.items()})


def analysis_outputs(wildcards=None):
    """Per-run outputs of every registered analysis, then their study-level outputs."""
    outputs = []
    for analysis in ANALYSES.values():
        outputs += expand_runs(analysis["run_output"]) + analysis["study_outputs"]
    return outputs


def tuning_input(wildcards):
    """The variant's tuning result when tuning is on (its chosen learning rate); nothing when it is off."""
    if config["tune"]["enabled"]:
        return {"tuning": layout.tuning_file(RESULTS, wildcards.variant)}
    return {}


def tracked_runs(wildcards=None):
    """The MLflow mirrors of every run and, when the study tunes, of every variant's learning-rate search."""
    searches = [layout.tuning_tracked(RESULTS, v) for v in STUDY.variants]
    return expand_runs(run_file(layout.TRACKED)) + (
        searches if config["tune"]["enabled"] else []
    )


def tuning_targets(wildcards=None):
    return [f"{RESULTS}/tuning.csv"] if config["tune"]["enabled"] else []


def all_targets(wildcards):
    return [
        *expand_runs(run_file(layout.METRICS)),
        *tuning_targets(),
        *analysis_outputs(),
        f"{RESULTS}/mlflow_sync.json",
        f"{REPORTS}/index.html",
    ]


def interpret_targets(wildcards=None):
    """Interpretation figures for base and every variant the config names, first seed only."""
    variants = ["base", *(v for v in config["analysis"]["interpret"] if v != "base")]
    seed = config["seeds"][0]
    return [
        f"{layout.run_dir(RESULTS, variant, seed)}/{layout.INTERPRET}"
        for variant in variants
    ]


def tuning_results(wildcards=None):
    """The learning-rate search of every variant, when the study tunes (tune.enabled)."""
    if not config["tune"]["enabled"]:
        return []
    return [layout.tuning_file(RESULTS, variant) for variant in STUDY.variants]


def dataset_archive(wildcards):
    """The raw archive a dataset needs (none for synthetic and npz data)."""
    from cnnablate.data import archive_path

    dataset = config["data"]["dataset"]
    if dataset in ("cifar10", "cifar100"):
        return str(archive_path(dataset, config["data"]["root"]))
    return []
