"""What a study costs before it starts: jobs per rule, training FLOPs, time on named machines, disk.

The job counts are Snakemake's own (a dry run of the workflow in an empty folder), so they cannot drift from
the rules; parameters and MACs are the project's counters (``cnnablate.measure``) on every variant, built on
PyTorch's meta device (no memory, no arithmetic). Training FLOPs are an upper bound: every run is charged its
``train.max_steps`` cap, 3 x the forward pass (forward, and backward's two products) x 2 FLOPs per MAC per
image. Evaluation passes and fixed job costs beyond :data:`JOB_START_S` are not counted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnablate.config import Study, load_config


@dataclass(frozen=True)
class Machine:
    """A training rate (FLOP/s of one training job) with where it comes from."""

    name: str
    flops_per_s: float
    source: str


# The one place the rates live, each measured by benchmarks/throughput.py (images/s of loop (a) x 6 x MACs per
# image) on the machine it names.
MACHINES = {
    "cpu": Machine(
        "2-core CPU, 1 thread per job, bf16",
        1789 * 6 * 9.88e6,
        "docs/performance.md: loop (a) 1789 images/s on the demo base (9.88 M MACs per image)",
    ),
    "h200": Machine(
        "NVIDIA H200, eager loop",
        45.5e12 / 0.5008,
        "docs/performance.md: H200 run of 2026-11-30, throughput.py loop (a) on the CIFAR base, 45.5 TFLOP per "
        "500.8 ms epoch (CUDA graphs: 299 ms)",
    ),
}
# docs/performance.md: a job's fixed cost (training 1.1-1.9 s, analyses 1.5-1.8 s, the MLflow track job 2.2 s)
JOB_START_S = 2.0
BYTES_PER_PARAM = 4  # float32 state dict


@dataclass(frozen=True)
class VariantCost:
    variant: str
    params: int
    macs: int


@dataclass
class Plan:
    """The counts and costs of one study config."""

    study: Study
    jobs: dict[str, int]
    variants: list[VariantCost]

    @property
    def seeds(self) -> int:
        return len(self.study.config["seeds"])

    def training_flops(self) -> int:
        """Final training runs, each at its step cap."""
        train = self.study.config["train"]
        return sum(6 * v.macs * train["batch_size"] * train["max_steps"] for v in self.variants) * self.seeds

    def tuning_flops(self) -> int:
        """Tuning: every variant, every learning rate of the grid and the ``tune.extend`` rates the search may add
        past an edge, each run for its first budget ``tune.max_steps`` (a slow variant's search continues past
        it, up to the final run's cap: the printed line says so)."""
        tune, batch = self.study.config["tune"], self.study.config["train"]["batch_size"]
        if not tune["enabled"]:
            return 0
        rates = len(tune["lrs"]) + tune["extend"]
        return sum(6 * v.macs * batch * tune["max_steps"] * rates for v in self.variants)

    def model_bytes(self) -> int:
        """Every run's ``model.pt``."""
        return sum(v.params for v in self.variants) * BYTES_PER_PARAM * self.seeds

    def largest_checkpoint_bytes(self) -> int:
        """A running job's checkpoint: weights and momentum (deleted when the run finishes)."""
        return 2 * max(v.params for v in self.variants) * BYTES_PER_PARAM

    def hours(self, machine: Machine, slots: int) -> float:
        """Wall hours with ``slots`` jobs at a time (CPU cores, or GPUs)."""
        work = (self.training_flops() + self.tuning_flops()) / machine.flops_per_s
        return (work + JOB_START_S * sum(self.jobs.values())) / slots / 3600


def dry_run_jobs(configfile: Path, snakefile: Path) -> dict[str, int]:
    """Jobs per rule, from Snakemake's dry run of the study in an empty folder (the whole study still to run)."""
    snakemake = Path(sys.executable).with_name("snakemake")
    with tempfile.TemporaryDirectory() as workdir:
        command = [str(snakemake), "-s", str(snakefile.resolve()), "-d", workdir]
        result = subprocess.run(
            [*command, "--configfile", str(configfile.resolve()), "--dry-run"],
            capture_output=True,
            text=True,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "snakemake failed")
    jobs: dict[str, int] = {}
    for rule in re.findall(r"^(?:local)?rule (\w+):$", result.stdout, re.MULTILINE):
        jobs[rule] = jobs.get(rule, 0) + 1
    return jobs


def image_shape(data: dict[str, Any]) -> tuple[int, int]:
    """(channels, side) of the study's images."""
    from cnnablate.data import npz_shapes

    if data["dataset"] == "npz":
        (_, side, _, channels), _ = npz_shapes(Path(data["path"]))["x_train"]
        return channels, side
    return 3, 32


def make_plan(configfile: Path, snakefile: Path = Path("Snakefile")) -> Plan:
    import torch

    from cnnablate.measure.macs import count_macs
    from cnnablate.measure.params import count_params
    from cnnablate.models import build_model

    study = Study.from_config(load_config(configfile))
    channels, side = image_shape(study.config["data"])
    variants = []
    for variant in study.variants.values():
        with torch.device("meta"):
            model = build_model(variant.spec, 10, in_channels=channels, image_size=side)
        variants.append(VariantCost(variant.id, count_params(model), count_macs(model, (channels, side, side))))
    return Plan(study, dry_run_jobs(configfile, snakefile), variants)


def _size(count: float, unit: str = "") -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.3g} {prefix}{unit}"
    return f"{count:.3g} {unit}"


def format_plan(plan: Plan, cores: int, gpus: int) -> str:
    train, tune = plan.study.config["train"], plan.study.config["tune"]
    total = sum(plan.jobs.values())
    largest = max(plan.variants, key=lambda v: v.params)
    lines = [
        f"study {plan.study.name}: {len(plan.variants)} variants x {plan.seeds} seeds = "
        f"{len(plan.variants) * plan.seeds} training runs, {total} jobs",
        "jobs per rule: " + ", ".join(f"{rule} {count}" for rule, count in plan.jobs.items()),
        f"training FLOPs (cap {train['max_steps']} steps x batch {train['batch_size']} x 6 x MACs): "
        f"{_size(plan.training_flops(), 'FLOP')}",
        f"tuning FLOPs ({len(tune['lrs'])} rates + up to {tune['extend']} past an edge, x {tune['max_steps']} "
        f"steps per variant; a variant with no rate learning yet continues, doubling, up to {train['max_steps']}): "
        f"{_size(plan.tuning_flops(), 'FLOP')}" + ("" if tune["enabled"] else " (tuning off)"),
    ]
    for key, slots in (("cpu", cores), ("h200", gpus)):
        machine = MACHINES[key]
        hours = plan.hours(machine, slots)
        what = f"{slots} core(s)" if key == "cpu" else f"{slots} GPU(s)"
        lines.append(f"time on {machine.name}, {what}: about {hours:.3g} h ({hours * 60:.3g} min) [{machine.source}]")
    lines.append(
        f"disk: models {_size(plan.model_bytes(), 'B')} ({largest.variant}: {largest.params:,} parameters, "
        f"{_size(largest.params * BYTES_PER_PARAM, 'B')} per model.pt); checkpoints up to "
        f"{_size(plan.largest_checkpoint_bytes(), 'B')} per running job"
    )
    return "\n".join(lines)
