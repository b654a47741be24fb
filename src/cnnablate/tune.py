"""Per-variant learning-rate selection on the validation split, so every variant is compared at its best.

One job per variant sweeps the grid in one process: each learning rate trains the variant briefly (warm-up,
then a linear decay to zero over ``tune.epochs`` epochs of ``tune.train_subset``) and is scored by its final
validation accuracy. The test split is never loaded. Finished grid points are kept in a resume file, so a
killed sweep continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnablate.data import ArrayDataset, load_prepared, stratified_subset
from cnnablate.devices import choose_device
from cnnablate.train import Schedule, above_chance, fit_epoch, prepare_fit, save_atomic

log = logging.getLogger("cnnablate.tune")
SELECTION_RULE = (
    "highest final validation accuracy; ties broken by lower validation loss, then by the smaller learning rate. "
    "A variant is 'not trained' when no learning rate beats chance on the validation split "
    "(one-sided binomial test, p < 0.01)."
)


@dataclass
class GridPoint:
    """The outcome of training one variant at one learning rate."""

    lr: float
    val_acc: float | None
    val_loss: float | None
    val_curve: list[float]
    diverged: bool


def select_lr(grid: Sequence[GridPoint]) -> GridPoint:
    """The best point by SELECTION_RULE; diverged points lose to any finite one."""

    def key(point: GridPoint) -> tuple[float, float, float]:
        if point.diverged or point.val_acc is None:
            return (-math.inf, -math.inf, -point.lr)
        return (point.val_acc, -(point.val_loss or 0.0), -point.lr)

    return max(grid, key=key)


def tuning_subset(arrays: ArrayDataset, train_subset: float | int, seed: int) -> ArrayDataset:
    """The stratified part of the training split that tuning trains on (validation split unchanged)."""
    total = len(arrays.y_train)
    count = round(train_subset * total) if isinstance(train_subset, float) and train_subset <= 1 else train_subset
    index = stratified_subset(arrays.y_train, min(int(count), total), seed)
    return ArrayDataset(
        arrays.x_train[index], arrays.y_train[index], None, None, arrays.classes, arrays.x_val, arrays.y_val
    )


def try_learning_rate(
    spec: Mapping[str, Any], arrays: ArrayDataset, recipe: Mapping[str, Any], tune: Mapping[str, Any], lr: float
) -> GridPoint:
    """Train briefly at one learning rate and score the validation split after every epoch."""
    choice = choose_device(recipe["precision"], recipe["channels_last"], recipe["jobs_per_gpu"])
    fit = prepare_fit(spec, arrays, tune["seed"], recipe, lr, choice)
    total = tune["epochs"] * fit.steps_per_epoch
    warmup = min(round(recipe["warmup_epochs"] * fit.steps_per_epoch), total - 1)
    schedule = Schedule(warmup_steps=max(1, warmup), decay_start=warmup, decay_steps=total - warmup)
    curve: list[float] = []
    row: dict[str, float] = {}
    for epoch in range(1, tune["epochs"] + 1):
        row = fit_epoch(fit, schedule, epoch, tune["seed"], recipe)
        if not math.isfinite(row["train_loss"]):
            log.info("lr %g diverged at epoch %d", lr, epoch)
            return GridPoint(lr, None, None, curve, True)
        curve.append(row["val_acc"])
    log.info("lr %g: validation accuracy %.4f, loss %.4f", lr, row["val_acc"], row["val_loss"])
    return GridPoint(lr, row["val_acc"], row["val_loss"], curve, False)


def tune_variant(
    variant: str,
    spec: Mapping[str, Any],
    recipe: Mapping[str, Any],
    tune: Mapping[str, Any],
    dataset: str | Path,
    output: str | Path,
    resume_file: str | Path,
    tracking_setup: str | Path | None = None,
    study: str = "",
) -> dict[str, Any]:
    """Sweep the learning-rate grid for one variant and write the choice (and the whole grid) to ``output``."""
    arrays = tuning_subset(load_prepared(dataset, test=False), tune["train_subset"], tune["seed"])
    resume_file = Path(resume_file)
    fingerprint = json.dumps([spec, recipe, dict(tune)], sort_keys=True)
    done: dict[str, dict[str, Any]] = {}
    if resume_file.exists():
        saved = torch.load(resume_file, weights_only=True)
        done = saved["grid"] if saved["fingerprint"] == fingerprint else {}
    grid: list[GridPoint] = []
    for lr in tune["lrs"]:
        if repr(lr) not in done:
            done[repr(lr)] = vars(try_learning_rate(spec, arrays, recipe, tune, lr))
            save_atomic({"fingerprint": fingerprint, "grid": done}, resume_file)
        grid.append(GridPoint(**done[repr(lr)]))
    best = select_lr(grid)
    chance = 1.0 / arrays.num_classes
    n_val = len(arrays.y_val)
    trained = any(
        not p.diverged and p.val_acc is not None and above_chance(round(p.val_acc * n_val), n_val, chance) for p in grid
    )
    result = {
        "variant": variant,
        "metric": "val_acc",
        "chosen_lr": best.lr,
        "trained": trained,
        "chance": chance,
        "validation_images": n_val,
        "validation_digest": arrays.validation_digest,
        "tuning_images": len(arrays.y_train),
        "epochs": tune["epochs"],
        "grid": [vars(point) for point in grid],
        "rule": SELECTION_RULE,
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=2) + "\n")
    if tracking_setup is not None:
        log_tuning(result, tracking_setup, study)
    resume_file.unlink(missing_ok=True)
    log.info("%s: chose lr %g (%s)", variant, best.lr, "trained" if trained else "did not train at any lr")
    return result


def log_tuning(result: Mapping[str, Any], tracking_setup: str | Path, study: str) -> None:
    """One MLflow run per tuning job, tagged role=tuning so it never mixes with the final runs."""
    from cnnablate.tracking import ROLE_TAG, JobRun, read_setup

    run = JobRun(
        read_setup(tracking_setup),
        f"{study}/{result['variant']}/tune",
        f"{result['variant']}/tune",
        {ROLE_TAG: "tuning", "variant": result["variant"], "study": study},
    )
    status = "FAILED"
    try:
        run.log_params({"tune.lrs": [p["lr"] for p in result["grid"]], "tune.epochs": result["epochs"]})
        for point in result["grid"]:
            for epoch, value in enumerate(point["val_curve"], start=1):
                run.log_metrics({f"lr_{point['lr']:g}/val_acc": value}, step=epoch)
        run.log_metrics({"chosen_lr": result["chosen_lr"], "trained": float(result["trained"])})
        status = "FINISHED"
    finally:
        run.finish(status)


def chosen_lr(tuning_file: str | Path) -> float:
    """The learning rate a tuning job chose for its variant."""
    return float(json.loads(Path(tuning_file).read_text())["chosen_lr"])


def tuning_table(tuning_files: Sequence[str | Path], output: str | Path) -> None:
    """One row per (variant, learning rate): validation accuracy, which was chosen, whether the variant trained."""
    import pandas as pd

    rows = []
    for path in tuning_files:
        result = json.loads(Path(path).read_text())
        for point in result["grid"]:
            rows.append(
                {
                    "variant": result["variant"],
                    "lr": point["lr"],
                    "val_acc": point["val_acc"],
                    "diverged": point["diverged"],
                    "chosen": point["lr"] == result["chosen_lr"],
                    "trained": result["trained"],
                }
            )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(output, index=False)
