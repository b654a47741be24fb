"""`cnnablate plan`: a study's counts and costs before it runs, and the documents that quote them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnablate.config import Study, validate_config
from cnnablate.plan import BYTES_PER_PARAM, JOB_START_S, MACHINES, Plan, VariantCost, format_plan, make_plan
from conftest import ROOT, tiny_config


def test_costs_follow_the_recipe() -> None:
    study = Study.from_config(validate_config(tiny_config(seeds=[0, 1])))
    variants = [VariantCost("base", params=1000, macs=10**6), VariantCost("arch-fc", params=3000, macs=2 * 10**6)]
    plan = Plan(study, {"train": 6, "tune": 3}, variants)
    train, tune = study.config["train"], study.config["tune"]
    assert plan.training_flops() == 6 * 3 * 10**6 * train["batch_size"] * train["max_steps"] * 2
    rates = len(tune["lrs"]) + tune["extend"]
    assert plan.tuning_flops() == 6 * 3 * 10**6 * train["batch_size"] * tune["max_steps"] * rates
    assert plan.model_bytes() == 4000 * BYTES_PER_PARAM * 2
    assert plan.largest_checkpoint_bytes() == 2 * 3000 * 4
    work = (plan.training_flops() + plan.tuning_flops()) / MACHINES["cpu"].flops_per_s
    assert plan.hours(MACHINES["cpu"], 2) == pytest.approx((work + JOB_START_S * 9) / 2 / 3600)
    assert all(f"[{machine.source}]" in format_plan(plan, cores=2, gpus=1) for machine in MACHINES.values())


@pytest.mark.e2e
def test_documented_counts_are_the_plans() -> None:
    """README and docs/slurm.md quote `cnnablate plan`; a changed config or rule set must update them."""
    readme, slurm = (ROOT / "README.md").read_text(), (ROOT / "docs" / "slurm.md").read_text()
    for config in ("config/config.yaml", "config/demo.yaml"):
        plan = make_plan(ROOT / config, ROOT / "Snakefile")
        line = format_plan(plan, cores=2, gpus=1).splitlines()[0]
        assert line in readme, f"README.md should quote `cnnablate plan --configfile {config}`: {line}"
    real = make_plan(ROOT / "config/config.yaml", ROOT / "Snakefile")
    quoted = re.search(r"\((\d+) jobs\)", slurm)
    assert quoted, "docs/slurm.md quotes no '(N jobs)' count"
    assert int(quoted.group(1)) == sum(real.jobs.values())
    assert f"{max(v.params for v in real.variants):,} parameters" in readme
    assert Path(ROOT / "config/demo.yaml").read_text().count("cnnablate plan") == 1
