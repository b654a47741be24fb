# Turns the validated config into the study's variants, paths and list of targets.
import os
import sys

from cnnablate import layout
from cnnablate.config import (
    ConfigError,
    Study,
    canonical,
    job_param,
    study_param,
    validate_config,
)

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
ANALYSES = {}


wildcard_constraints:
    variant=r"[A-Za-z0-9.-]+(_[A-Za-z0-9.-]+)*",
    seed=r"\d+",


def run_file(name):
    """A file of every run as a pattern for rules (named by cnnablate.layout), e.g. run_file(layout.METRICS)."""
    return str(layout.run_file(RUN, name))


def analysis_file(name):
    """The JSON of numbers an analysis writes for every run, as a pattern for rules (RUN/<name>.json)."""
    return str(layout.analysis_file(RUN, name))


def register_analysis(name, study_outputs=()):
    """Declare a per-run analysis: its rule writes analysis_file(name) (flat metrics), and its study-level rule
    the files ``study_outputs`` (pass that rule's own outputs: ``rules.<rule>.output``); report and MLflow pick
    them up."""
    ANALYSES[name] = {
        "run_output": analysis_file(name),
        "study_outputs": list(study_outputs),
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
