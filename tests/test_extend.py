"""The README's two extension paths, followed step by step: add an ablation, add an analysis rule."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, snakemake

README_FILE = re.compile(r"`(?P<path>[\w/.]+)`:\n\n(?P<indent> *)```python\n(?P<code>.*?)\n(?P=indent)```", re.S)
README_INCLUDE = re.compile(r"^ *include: \"workflow/rules/(?!report)\w+\.smk\"$", re.M)


def readme_analysis() -> tuple[dict[str, str], str]:
    """The files of the README's "Add an analysis rule" (path -> text) and its include line, as written there."""
    section = (ROOT / "README.md").read_text().split("## Add an analysis rule", 1)[1].split("\n## ", 1)[0]
    files = {
        match["path"]: textwrap.dedent(
            "\n".join(line.removeprefix(match["indent"]) for line in match["code"].splitlines())
        )
        + "\n"
        for match in README_FILE.finditer(section)
    }
    return files, README_INCLUDE.search(section)[0].strip()


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
def test_the_readme_analysis_in_three_files_reaches_the_report_and_mlflow(tiny_study: Path, tmp_path: Path) -> None:
    """README "Add an analysis rule", copied from its text into a copy of the project: a rule file, one module,
    one include line; the report shows its section under its title and labels, MLflow its numbers."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Snakefile", "workflow", "profiles", "environment.yml", "src"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, repo / name)
    files, include = readme_analysis()
    assert sorted(files) == ["src/cnnablate/against_base.py", "workflow/rules/against_base.smk"]
    for path, text in files.items():
        (repo / path).write_text(text)
    snakefile = (repo / "Snakefile").read_text()
    report_include = 'include: "workflow/rules/report.smk"'
    (repo / "Snakefile").write_text(snakefile.replace(report_include, f"{include}\n{report_include}"))
    touched = [p for p in repo.rglob("*") if p.is_file() and not (ROOT / p.relative_to(repo)).exists()]
    changed = [
        p
        for p in repo.rglob("*")
        if p.is_file() and p not in touched and p.read_bytes() != (ROOT / p.relative_to(repo)).read_bytes()
    ]
    assert len(touched) + len(changed) == 3, (touched, changed)
    workdir = tmp_path / "study"
    shutil.copytree(tiny_study, workdir, symlinks=True)

    snakemake(
        workdir,
        workdir / "config.yaml",
        "--cores",
        "2",
        snakefile=repo / "Snakefile",
        env={"PYTHONPATH": str(repo / "src")},
    )
    results = pd.read_csv(workdir / "results/tiny/results.csv").set_index(["variant", "seed"])
    assert results["lost_to_base"].between(0, 1).all()
    assert (results.loc["base", "lost_to_base"] == 0).all() and (results.loc["base", "won_from_base"] == 0).all()
    assert (results.loc["arch-fc", ["lost_to_base", "won_from_base"]].sum(axis=1) > 0).all()
    page = (workdir / "reports/tiny/index.html").read_text()
    assert "<h3>Test images lost and won against base</h3>" in page
    assert "wrong here, right in base (%)" in page
    client = MlflowClient(f"sqlite:///{workdir}/results/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs(
        [experiment.experiment_id], "attributes.status = 'FINISHED' and tags.`cnnablate.role` = 'job'"
    )
    assert len(runs) == 6
    assert all("against_base.lost_to_base" in run.data.metrics for run in runs)


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
