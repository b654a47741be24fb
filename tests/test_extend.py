"""The README's two extension paths, followed step by step: add an ablation, add an analysis rule."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, snakemake

TRIVIAL_RULE = """
rule weight_norm:
    input:
        model=run_file(layout.MODEL),
    output:
        analysis_file("weight_norm"),
    log:
        f"{LOGS}/weight_norm/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/weight_norm/{{variant}}/seed{{seed}}.tsv"
    conda:
        ENV
    script:
        "../scripts/weight_norm.py"


register_analysis("weight_norm")
"""

TRIVIAL_SCRIPT = """
import json

import torch

state = torch.load(snakemake.input.model, weights_only=True)
norm = sum(float(t.float().pow(2).sum()) for t in state.values()) ** 0.5
with open(snakemake.output[0], "w") as handle:
    json.dump({"weight_l2_norm": norm}, handle)
"""


def _jobs(output: str) -> dict[str, int]:
    return {
        line.split()[0]: int(line.split()[1])
        for line in output.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }


@pytest.mark.e2e
def test_add_an_ablation_trains_only_the_new_variants(tiny_study: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "study"
    shutil.copytree(tiny_study, workdir, symlinks=True)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["ablations"]["kernel"] = {"kernel_size": [3, 5]}  # README step 1: one block in the config
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    dry = snakemake(workdir, workdir / "config.yaml", "-n")  # README step 2: rerun
    jobs = _jobs(dry.stdout)
    assert jobs["train"] == 2
    assert jobs["measure"] == 2
    assert jobs["shift_robustness"] == 2
    assert jobs["tune"] == 1, "only the new variant's learning rate is tuned"
    assert jobs["tuning_table"] == 1, "only the new variant's learning rate is tuned"
    trained = set(re.findall(r"wildcards: variant=([\w.-]+), seed=\d", dry.stdout))
    assert trained == {"kernel_size-5"}
    tuned = set(re.findall(r"wildcards: variant=([\w.-]+)\n", dry.stdout))
    assert tuned == {"kernel_size-5"}

    snakemake(workdir, workdir / "config.yaml", "--cores", "2")
    summary = pd.read_csv(workdir / "results/tiny/summary.csv")
    assert "kernel_size-5" in set(summary["variant"])
    page = (workdir / "reports/tiny/index.html").read_text()
    assert re.search(r"<h3>kernel</h3>\s*<p>[^<]*kernel_size-5", page)  # the new block's verdict names it


@pytest.mark.e2e
def test_add_an_analysis_rule_reaches_the_report_and_mlflow(tiny_study: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Snakefile", "workflow", "profiles", "environment.yml"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, repo / name)
    # README steps 1-3: a rule file ending in register_analysis, its script, an include before the report.
    (repo / "workflow/rules/weight_norm.smk").write_text(TRIVIAL_RULE)
    (repo / "workflow/scripts/weight_norm.py").write_text(TRIVIAL_SCRIPT)
    snakefile = (repo / "Snakefile").read_text()
    snakefile = snakefile.replace(
        'include: "workflow/rules/report.smk"',
        'include: "workflow/rules/weight_norm.smk"\ninclude: "workflow/rules/report.smk"',
    )
    (repo / "Snakefile").write_text(snakefile)
    workdir = tmp_path / "study"
    shutil.copytree(tiny_study, workdir, symlinks=True)

    snakemake(workdir, workdir / "config.yaml", "--cores", "2", snakefile=repo / "Snakefile")
    results = pd.read_csv(workdir / "results/tiny/results.csv")
    assert results["weight_l2_norm"].notna().all()
    assert (results["weight_l2_norm"] > 0).all()
    page = (workdir / "reports/tiny/index.html").read_text()
    assert ">weight_norm</h3>" in page
    assert "weight_l2_norm" in page
    client = MlflowClient(f"sqlite:///{workdir}/results/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs(
        [experiment.experiment_id], "attributes.status = 'FINISHED' and tags.`cnnablate.role` = 'job'"
    )
    assert len(runs) == 6
    assert all("weight_norm.weight_l2_norm" in run.data.metrics for run in runs)


def _dry_run_rules(workdir: Path, config: dict) -> tuple[dict[str, int], set[str]]:
    """Jobs per rule and the variants they touch, of a dry run of ``config`` on the finished study."""
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    dry = snakemake(workdir, path, "-n")
    return _jobs(dry.stdout), set(re.findall(r"wildcards: variant=([\w.-]+)", dry.stdout))


@pytest.mark.e2e
def test_a_neutral_new_axis_reruns_nothing_and_a_real_value_reruns_what_it_changes(
    own_tiny_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((own_tiny_study / "config.yaml").read_text())
    # The package as it was before `dropout` existed (schema without the axis): the same params for every job.
    package = tmp_path / "before" / "cnnablate"
    shutil.copytree(ROOT / "src" / "cnnablate", package)
    schema_file = package / "schemas" / "config.schema.yaml"
    schema = schema_file.read_text()
    start = schema.index("      dropout:\n")
    schema_file.write_text(schema[:start] + schema[schema.index("  ablation_block:") :])
    with monkeypatch.context() as patch:
        patch.setenv("PYTHONPATH", str(package.parent))
        jobs, variants = _dry_run_rules(own_tiny_study, config)
    assert jobs == {}, "a neutral new axis plans no job at all"
    assert variants == set(), "a neutral new axis plans no job at all"

    jobs, variants = _dry_run_rules(own_tiny_study, {**config, "base": {**config["base"], "dropout": 0.1}})
    assert variants == {"base", "arch-fc", "pool-avg"}
    assert jobs["train"] == 6
    assert jobs["tune"] == 3

    ablations = {**config["ablations"], "dropout": {"dropout": [0.0, 0.1]}}
    jobs, variants = _dry_run_rules(own_tiny_study, {**config, "ablations": ablations})
    assert variants == {"dropout-0.1"}
    assert jobs["train"] == 2
    assert jobs["tune"] == 1
