"""The SLURM profile: what it submits (fake SLURM commands, no cluster needed) and the tiny study on a real cluster.

The real-cluster test is marked ``slurm``: CI builds a one-node cluster with ``bash .ci/slurm-cluster.sh`` and
runs ``CNNABLATE_SLURM=1 pytest -m slurm``. It fails, never skips, when no cluster answers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnablate import layout
from cnnablate.config import Study, validate_config
from conftest import ROOT, TINY_CONFIG, snakemake, tiny_config, write_config

PROFILE = ROOT / "profiles" / "slurm"
# profiles/default (local runs) would otherwise be applied on top as the workflow profile: see the profile's header.
SLURM_ARGS = ("--profile", str(PROFILE), "--slurm-init-seconds-before-status-checks", "2")
REMOTE_RULES = {"prepare_data", "train", "measure", "shift_robustness", "interpret"}
LOCAL_RULES = {
    "download_data",
    "mlflow_setup",
    "mlflow_sync",
    "shift_robustness_figure",
    "tuning_table",
    "report",
    "track",
    "track_tuning",
}

# Stands in for sbatch, sinfo, sacct, ...: records each call as a JSON line; sbatch refuses every job, so the run
# stops after the first wave of submissions, and sinfo names one default partition.
FAKE_SLURM = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
    log.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
if name == "sbatch":
    sys.exit("sbatch: error: fake SLURM, nothing submitted")
if name == "sinfo":
    print("PARTITION")
    print("fake*")
"""


def study_jobs(config: dict) -> tuple[list[str], int]:
    """The runs (variant/seed0 directories, first seed) and the number of interpret jobs of a config."""
    config = validate_config(config)
    variants = list(Study.from_config(config).variants)
    interpret = {"base", *config["analysis"]["interpret"]}
    return [f"{variant}/seed{config['seeds'][0]}" for variant in variants], len(interpret)


def profile_resources(rule: str) -> dict:
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return {**profile["default-resources"], **profile["set-resources"].get(rule, {})}


def option(args: list[str], name: str) -> str | None:
    """The value of an sbatch option given as `name value` or `name=value` (None if absent)."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def rule_of(comment: str) -> str:
    """The plugin's job comment is rule_<rule> or rule_<rule>_wildcards_<values>."""
    match = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)
    assert match, comment
    return match.group(1)


def run_with_fake_slurm(workdir: Path, monkeypatch: pytest.MonkeyPatch, config: Path, *targets: str):
    """Run the workflow through the profile against the fake SLURM; return the output and the sbatch calls."""
    bin_dir = workdir / "fake-slurm"
    bin_dir.mkdir()
    fake = bin_dir / "fake"
    fake.write_text(FAKE_SLURM.format(python=sys.executable))
    fake.chmod(0o755)
    for name in ("sbatch", "sinfo", "sacct", "squeue", "scontrol", "sacctmgr", "sshare", "scancel"):
        (bin_dir / name).symlink_to(fake)
    calls_log = workdir / "slurm-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_LOG", str(calls_log))
    result = snakemake(workdir, config, *SLURM_ARGS, "--retries", "0", *targets, check=False, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the fake sbatch refuses every job, yet snakemake succeeded:\n{output[-3000:]}"
    calls = [json.loads(line) for line in calls_log.read_text().splitlines()] if calls_log.exists() else []
    sbatch = {}
    for name, *args in calls:
        if name == "sbatch":
            sbatch[option(args, "--comment")] = args
    return output, sbatch


def touch(workdir: Path, *paths: str) -> None:
    for path in paths:
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).write_text("placeholder\n")


@pytest.mark.e2e
@pytest.mark.parametrize("rule", ["train", "tune"])
def test_train_and_tune_jobs_request_one_gpu_cpus_per_gpu_memory_and_runtime(tmp_path, monkeypatch, rule) -> None:
    settings = tiny_config(seeds=[0])
    settings["train"] = {**settings["train"], "threads": 3}
    settings["tune"] = {**settings["tune"], "enabled": rule == "tune"}
    config = write_config(tmp_path, settings)
    touch(tmp_path, "results/tiny/data/dataset.npz")  # skips prepare_data: train (or tune) is the first wave
    output, sbatch = run_with_fake_slurm(tmp_path, monkeypatch, config)

    wanted = profile_resources(rule)
    train = {comment: args for comment, args in sbatch.items() if rule_of(comment) == rule}
    assert set(map(rule_of, sbatch)) == {rule}, sorted(sbatch)
    assert len(train) == (
        len(study_jobs(settings)[0]) if rule == "train" else len(Study.from_config(validate_config(settings)).variants)
    )
    for comment, args in train.items():
        assert option(args, "--gpus") == "1", (comment, args)
        assert option(args, "--cpus-per-gpu") == "3", "cpus_per_gpu follows train.threads of the config"
        assert option(args, "--cpus-per-task") is None, "--cpus-per-task would override --cpus-per-gpu"
        assert option(args, "--gres") is None
        assert option(args, "--mem") == str(wanted["mem_mb"])
        assert option(args, "-t") == str(wanted["runtime"])
        assert option(args, "-p") == "fake", "the cluster's default partition (from sinfo)"
        assert option(args, "-D") == str(tmp_path)
        assert "--export=ALL" in args, "jobs inherit MLFLOW_TRACKING_URI from the submitting shell"
        wrapped = option(args, "--wrap")
        assert "--executor slurm-jobstep" in wrapped
        assert f"--allowed-rules {rule}" in wrapped
        assert "--cores 'all'" in wrapped, "the job step uses its allocation, not the login node's core count"

    # A local rule ran here (it wrote its output) and nothing local went to sbatch.
    assert "localrule mlflow_setup:" in output
    assert (tmp_path / "results/tiny/mlflow.json").exists()
    assert not LOCAL_RULES & set(map(rule_of, sbatch))


@pytest.mark.e2e
def test_analysis_jobs_request_a_gpu_and_data_jobs_cpus_only(tmp_path, monkeypatch) -> None:
    settings = tiny_config(seeds=[0], tune={"enabled": False})
    config = write_config(tmp_path, settings)
    runs, interpret = study_jobs(settings)
    touch(tmp_path, "results/tiny/data/dataset.npz", "results/tiny/mlflow.json")
    touch(
        tmp_path,
        *(
            f"results/tiny/runs/{run}/{name}"
            for run in runs  # trained: the analyses come next
            for name in (layout.METRICS, layout.HISTORY, layout.MODEL, layout.PREDICTIONS)
        ),
    )
    _, analyses = run_with_fake_slurm(tmp_path, monkeypatch, config)
    (tmp_path / "data-only").mkdir()
    _, data = run_with_fake_slurm(tmp_path / "data-only", monkeypatch, config, "results/tiny/data/dataset.npz")

    sbatch = {**analyses, **data}
    rules = sorted(map(rule_of, sbatch))
    assert rules == sorted(["prepare_data"] + ["interpret"] * interpret + ["measure", "shift_robustness"] * len(runs))
    for comment, args in sbatch.items():
        wanted = profile_resources(rule_of(comment))
        if rule_of(comment) == "prepare_data":
            assert option(args, "--gpus") is None, (comment, args)
            assert option(args, "--gres") is None, (comment, args)
            assert option(args, "--cpus-per-task") == "1", (comment, args)
        else:  # the analyses claim a GPU like training, sharing it per train.jobs_per_gpu
            assert option(args, "--gpus") == "1", (comment, args)
            assert option(args, "--cpus-per-gpu") == "1", (comment, args)  # train.threads of the tiny config
        assert option(args, "--mem") == str(wanted["mem_mb"]), comment
        assert option(args, "-t") == str(wanted["runtime"]), comment


def cluster_problem() -> str | None:
    """Why the SLURM cluster cannot run the test, or None when sinfo and sacct answer."""
    checks = {
        "sinfo": ["sinfo", "-h", "-o", "%P %a %D %T"],
        "sacct (accounting)": ["sacct", "-n", "-X", "-S", "now-1minutes"],
    }
    for what, command in checks.items():
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=20)
        except (FileNotFoundError, subprocess.TimeoutExpired) as error:
            return f"{what}: {error}"
        if result.returncode != 0:
            return f"{what} failed: {result.stderr.strip()}"
    return None


@pytest.mark.slurm
@pytest.mark.e2e
def test_tiny_study_runs_on_the_slurm_cluster(tmp_path: Path) -> None:
    problem = cluster_problem()
    if problem:
        requested = " (CNNABLATE_SLURM=1 is set: CI expects one)" if os.environ.get("CNNABLATE_SLURM") == "1" else ""
        pytest.fail(f"no SLURM cluster answers{requested}: {problem}. Start one with `bash .ci/slurm-cluster.sh`.")

    result = snakemake(tmp_path, TINY_CONFIG, *SLURM_ARGS, timeout=480)
    output = result.stdout + result.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)

    runs, interpret = study_jobs(tiny_config())
    seeds = len(tiny_config()["seeds"])
    for run in runs:
        assert (tmp_path / f"results/tiny/runs/{run}/metrics.json").exists(), run
    assert len(list(tmp_path.glob("results/tiny/runs/*/seed*/metrics.json"))) == len(runs) * seeds
    assert (tmp_path / "reports/tiny/index.html").exists()

    accounting = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--name", run_id, "-S", "now-1days", "-o", "JobID,State,Comment,AllocTRES"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    jobs = [line.split("|") for line in accounting.splitlines() if line.strip()]
    assert jobs, f"sacct knows no job named {run_id}"
    by_rule: dict[str, list] = {}
    for job_id, state, comment, tres in jobs:
        assert state == "COMPLETED", (job_id, state, comment)
        by_rule.setdefault(rule_of(comment), []).append(tres)
    counts = {rule: len(tres) for rule, tres in by_rule.items()}
    per_run = len(runs) * seeds
    assert counts == {
        "prepare_data": 1,
        "tune": len(runs),
        "train": per_run,
        "measure": per_run,
        "shift_robustness": per_run,
        "interpret": interpret,
        "rf_laws_study": 1,
    }, counts
    assert not LOCAL_RULES & set(by_rule)
    gpu_rules = {"train", "tune", "measure", "shift_robustness", "interpret"}
    assert all("gres/gpu=1" in tres for rule in gpu_rules for tres in by_rule[rule]), by_rule
    assert not any(
        "gres/gpu" in tres for rule, tres_list in by_rule.items() if rule not in gpu_rules for tres in tres_list
    )
