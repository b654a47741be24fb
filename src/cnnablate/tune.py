"""Per-variant learning-rate selection on the validation split, so every variant is compared at its best.

One job per variant sweeps the grid in one process. Each learning rate trains the variant with the final run's
own loop and schedule (``cnnablate.train.run_to_convergence`` with the final run's step cap: warm-up, the peak
held while the run improves, the same stopping signals, the cool-down): a tuning run *is* the first steps of a
final run at that rate, paused at the tuning budget. Tuning with a schedule of its own (a short decayed run)
would favour rates the long run at peak does not survive (short-horizon bias, Wu et al. 2018).

A rate is chosen only from runs that have started to learn: validation accuracy at least ``tune.learned`` of
the way from chance to 100% with the training loss below TRAINED_LOSS_FRACTION x ln C (``learned``). Scores of
runs still at chance are noise (a variant once "chose" 0.03 over 0.1 on 18.5% against 12.5%, and one of its
seeds then learned and the other did not), so while no rate has learned, every rate's run continues for as
many steps again (the budget doubles), up to the final run's cap. When the best rate sits at an edge of the
grid, the search steps past that edge (``tune.extend`` times at most, within ``tune.lr_range``), so no variant
is compared at a rate the search could not see beyond. The test split is never loaded. Finished grid points are
kept in a resume file, so a killed sweep continues where it stopped.
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
from cnnablate.train import Fit, Progress, prepare_fit, run_to_convergence, save_atomic
from cnnablate.vocabulary import TRAINED_LOSS_FRACTION, Outcome, accuracy_past_chance

log = logging.getLogger("cnnablate.tune")


def selection_rule(learned: float) -> str:
    """How a rate is chosen, in words (the tuning result carries it; the report quotes it)."""
    return (
        f"among the learning rates whose run has started to learn (validation accuracy at least {learned:.0%} of "
        f"the way from chance to 100%, training loss below {TRAINED_LOSS_FRACTION:.0%} of ln C), the highest "
        "validation accuracy at the largest budget; ties broken by lower validation loss, then by the smaller "
        "learning rate. While no rate has learned, every rate trains twice as long, up to the final run's cap; a "
        f"variant '{Outcome.DID_NOT_TRAIN.words}' when no rate had learned by then."
    )


@dataclass
class GridPoint:
    """The outcome of training one variant at one learning rate for one budget."""

    lr: float
    val_acc: float | None
    val_loss: float | None
    val_curve: list[float]
    diverged: bool
    trained: bool = False
    steps: int = 0
    stop_reason: str = "cap"
    extended: bool = False  # tried past an edge of the configured grid
    learned: bool = False  # eligible to be chosen: started to learn (see selection_rule)
    budget: int = 0  # the tuning budget (steps) this point was trained for


def select_lr(grid: Sequence[GridPoint]) -> GridPoint:
    """The best point by ``selection_rule``: a point that learned beats any that did not; diverged points lose to
    any finite one."""

    def key(point: GridPoint) -> tuple[bool, float, float, float]:
        if point.diverged or point.val_acc is None:
            return (False, -math.inf, -math.inf, -point.lr)
        return (point.learned, point.val_acc, -(point.val_loss or 0.0), -point.lr)

    return max(grid, key=key)


def next_rate_past_edge(grid: Sequence[GridPoint], tune: Mapping[str, Any]) -> float | None:
    """The rate one grid step beyond the best point when it sits at the top or bottom of what was tried.

    The step is the ratio between the two outermost rates on that side; the search goes at most ``tune.extend``
    points past the configured grid and never outside ``tune.lr_range``. None when no step is due.
    """
    rates = sorted(point.lr for point in grid)
    best = select_lr(grid)
    if len(rates) < 2 or best.diverged or sum(point.extended for point in grid) >= tune["extend"]:
        return None
    low, high = tune["lr_range"]
    if best.lr == rates[-1]:
        candidate = rates[-1] * rates[-1] / rates[-2]
    elif best.lr == rates[0]:
        candidate = rates[0] * rates[0] / rates[1]
    else:
        return None
    candidate = float(f"{candidate:.4g}")
    return candidate if low <= candidate <= high else None


def tuning_subset(arrays: ArrayDataset, train_subset: float | int, seed: int) -> ArrayDataset:
    """The stratified part of the training split that tuning trains on (validation split unchanged)."""
    total = len(arrays.y_train)
    count = round(train_subset * total) if isinstance(train_subset, float) and train_subset <= 1 else train_subset
    index = stratified_subset(arrays.y_train, min(int(count), total), seed)
    return ArrayDataset(
        arrays.x_train[index], arrays.y_train[index], None, None, arrays.classes, arrays.x_val, arrays.y_val
    )


@dataclass
class LiveRun:
    """A tuning run paused at its budget, kept in memory so a larger budget continues it instead of restarting."""

    fit: Fit
    progress: Progress


def try_learning_rate(
    spec: Mapping[str, Any],
    arrays: ArrayDataset,
    recipe: Mapping[str, Any],
    tune: Mapping[str, Any],
    lr: float,
    extended: bool = False,
    budget: int | None = None,
    live: dict[float, LiveRun] | None = None,
) -> GridPoint:
    """Train at one learning rate with the final run's loop, schedule and cap, paused after ``budget`` steps
    (default ``tune.max_steps``; rounded up to an epoch's end). A paused run in ``live`` is continued."""
    budget = tune["max_steps"] if budget is None else budget
    run = (live or {}).get(lr)
    if run is None or run.progress.step > budget:
        choice = choose_device(recipe["precision"], recipe["channels_last"], recipe["jobs_per_gpu"])
        fit = prepare_fit(spec, arrays, tune["seed"], recipe, lr, choice, max_steps=max(recipe["max_steps"], budget))
        run = LiveRun(fit, fit.new_progress())
    progress = run_to_convergence(run.fit, run.progress, pause_at=budget)
    if live is not None:
        live[lr] = run
    curve = [row["val_acc"] for row in progress.history]
    if progress.diverged:
        log.info("lr %g diverged at step %d", lr, progress.step)
        return GridPoint(lr, None, None, curve[:-1], True, False, progress.step, "diverged", extended, False, budget)
    last = progress.history[-1]
    trained = progress.convergence.optimised
    chance = 1.0 / arrays.num_classes
    learned = trained and last["val_acc"] >= accuracy_past_chance(chance, tune["learned"])
    stop = progress.stop_reason if progress.finished else "budget"
    log.info(
        "lr %g, %d steps: validation accuracy %.4f, loss %.4f (%s)",
        lr,
        progress.step,
        last["val_acc"],
        last["val_loss"],
        "learned" if learned else "not learning yet",
    )
    return GridPoint(
        lr, last["val_acc"], last["val_loss"], curve, False, trained, progress.step, stop, extended, learned, budget
    )


def tune_variant(
    variant: str,
    spec: Mapping[str, Any],
    recipe: Mapping[str, Any],
    tune: Mapping[str, Any],
    dataset: str | Path,
    output: str | Path,
    resume_file: str | Path,
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
    live: dict[float, LiveRun] = {}

    def point(lr: float, budget: int) -> GridPoint:
        key = f"{lr!r}@{budget}"
        if key not in done:
            extended = lr not in tune["lrs"]
            done[key] = vars(
                try_learning_rate(spec, arrays, recipe, tune, lr, extended=extended, budget=budget, live=live)
            )
            save_atomic({"fingerprint": fingerprint, "grid": done}, resume_file)
        return GridPoint(**done[key])

    rates, budget, cap = list(tune["lrs"]), tune["max_steps"], max(recipe["max_steps"], tune["max_steps"])
    rounds = []
    while True:
        grid = [point(lr, budget) for lr in rates]
        if any(p.learned for p in grid):
            beyond = next_rate_past_edge(grid, tune)
            if beyond is None:
                break
            log.info("best rate at an edge of the grid: trying %g", beyond)
            rates.append(beyond)
            continue
        if budget >= cap or all(p.diverged or p.stop_reason != "budget" for p in grid):
            break
        rounds.append(budget)
        budget = min(2 * budget, cap)
        log.info("no rate has started to learn: every rate continues to %d steps", budget)
    grid.sort(key=lambda p: p.lr)
    best = select_lr(grid)
    chance = 1.0 / arrays.num_classes
    result = {
        "study": study,
        "variant": variant,
        "metric": "val_acc",
        "chosen_lr": best.lr,
        "trained": best.learned,
        "chance": chance,
        "learned_acc": accuracy_past_chance(chance, tune["learned"]),
        "validation_images": len(arrays.y_val),
        "validation_digest": arrays.validation_digest,
        "tuning_images": len(arrays.y_train),
        "max_steps": budget,
        "budgets": [*rounds, budget],
        "grid": [vars(point) for point in grid],
        "rule": selection_rule(tune["learned"]),
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=2) + "\n")
    resume_file.unlink(missing_ok=True)
    log.info(
        "%s: chose lr %g after %d steps per rate (%s)",
        variant,
        best.lr,
        budget,
        "learned" if best.learned else "no rate learned",
    )
    return result


def read_tuning(tuning_file: str | Path) -> dict[str, Any]:
    """A tuning job's result: the chosen rate and every grid point (the final run retries from it)."""
    return json.loads(Path(tuning_file).read_text())


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
                    "trained_at_lr": point["trained"],
                    "learned": point.get("learned", point["trained"]),
                    "budget": point.get("budget", result["max_steps"]),
                    "steps": point["steps"],
                    "stop_reason": point["stop_reason"],
                    "extended": point["extended"],
                    "chosen": point["lr"] == result["chosen_lr"],
                    "trained": result["trained"],
                }
            )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(output, index=False)
