"""Train one (variant, seed) until it converges: a short loop you can read top to bottom, resumable, tracked,
deterministic on CPU.

Data lives on the device; augmentation is batched tensor ops; metrics accumulate on the device and are read
once per epoch (no host synchronisation inside the step). The learning rate warms up, stays at its peak until
the validation accuracy stops improving, then cools down linearly over a fraction of the steps run so far
(a warmup-stable-decay schedule, stretched to the actual run). The test split is read once, at the end. A
checkpoint is written after every epoch to a path outside the job's declared outputs (Snakemake deletes those
when a job fails), so a rerun resumes, early-stopping state included.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import platform
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnablate import __version__, layout
from cnnablate.agc import adaptive_clip_grad_
from cnnablate.config import flatten
from cnnablate.data import ArrayDataset, load_prepared
from cnnablate.devices import DeviceChoice, autocast, choose_device
from cnnablate.loader import DeviceDataset
from cnnablate.models import agc_parameter_groups
from cnnablate.runs import build_for_dataset
from cnnablate.tracking import git_commit

log = logging.getLogger("cnnablate.train")
IMPORTED_AT = time.time()
HISTORY_FIELDS = [
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "images_per_second",
    "eval_seconds",
    "elapsed_seconds",
]
TRAINED_P_VALUE = 0.01
KILL_AT_ENV = "CNNABLATE_KILL_AT"


@dataclass
class TrainJob:
    """Everything one training job needs; built by the workflow rule or a test."""

    study: str
    variant: str
    seed: int
    spec: dict[str, Any]
    recipe: dict[str, Any]
    dataset: Path
    run_dir: Path
    checkpoint: Path
    tracking_setup: Path | None = None
    force_cpu: bool = False
    lr: float | None = None  # None: the recipe's shared learning rate

    @property
    def peak_lr(self) -> float:
        return self.recipe["lr"] if self.lr is None else self.lr

    @property
    def job_key(self) -> str:
        return layout.job_key(self.study, self.variant, self.seed)

    def fingerprint(self) -> str:
        """Identifies what a checkpoint was trained for; a changed spec or recipe never resumes from it."""
        stat = self.dataset.stat()
        payload = json.dumps([self.spec, self.recipe, self.peak_lr, self.seed, stat.st_size], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process here when the environment variable CNNABLATE_KILL_AT equals ``name``.

    tests/test_kill_points.py kills jobs at exact places (after epoch k's checkpoint, before metrics.json,
    inside an analysis job) instead of racing a timer. Unset, it does nothing.
    """
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def process_started_at() -> float:
    """Wall-clock time this process started (Linux /proc); falls back to the import time elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return IMPORTED_AT


@dataclass
class Schedule:
    """Warm-up, a stable peak, then a linear decay to zero that starts when the caller says (warmup-stable-decay).

    The decay's start and length are state, saved in checkpoints: a resumed run follows the same schedule.
    """

    warmup_steps: int
    decay_start: int | None = None
    decay_steps: int = 0

    def multiplier(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay_start is None or step < self.decay_start:
            return 1.0
        return max(0.0, 1.0 - (step - self.decay_start) / max(1, self.decay_steps))

    def start_decay(self, step: int, decay_steps: int) -> None:
        self.decay_start, self.decay_steps = step, decay_steps

    def finished(self, step: int) -> bool:
        return self.decay_start is not None and step >= self.decay_start + self.decay_steps


@dataclass
class Plateau:
    """Early-stopping bookkeeping: the best validation accuracy and loss, and the epochs since either improved.

    An epoch improves when the accuracy rises, or the loss falls, by at least ``min_delta``: a network still
    in its slow start (accuracy flat near chance, loss creeping down) keeps training; a stuck one does not.
    """

    min_delta: float
    best: float = -1.0
    best_loss: float = math.inf
    since: int = 0

    def update(self, accuracy: float, loss: float) -> None:
        improved = accuracy > self.best + self.min_delta or loss < self.best_loss - self.min_delta
        self.best, self.best_loss = max(self.best, accuracy), min(self.best_loss, loss)
        self.since = 0 if improved else self.since + 1


def above_chance(correct: int, total: int, chance: float) -> bool:
    """Whether ``correct`` of ``total`` beats guessing: one-sided binomial test at p < TRAINED_P_VALUE."""
    from scipy.stats import binom

    return bool(binom.sf(correct - 1, total, chance) < TRAINED_P_VALUE)


def make_optimizer(model: nn.Module, recipe: Mapping[str, Any], lr: float, device: torch.device) -> torch.optim.SGD:
    """Nesterov SGD; weight decay only on weights of rank >= 2; fused kernels on CUDA."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": recipe["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(groups, lr=lr, momentum=recipe["momentum"], nesterov=recipe["momentum"] > 0, **fused)


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    choice: DeviceChoice,
    compile_mode: str,
    clip: tuple[list[nn.Parameter], float] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One optimisation step returning (loss, number correct) as device tensors.

    ``clip`` = (parameters, lambda) applies adaptive gradient clipping before the update (``norm: nf``).
    """
    forward = model if compile_mode == "off" else torch.compile(model, mode=compile_mode)

    def step(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(choice.device, choice.autocast_dtype):
            logits = forward(images)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            adaptive_clip_grad_(*clip)
        optimizer.step()
        return loss.detach(), (logits.argmax(dim=1) == labels).sum()

    return step


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The random stream of one epoch (order, crops, flips): a resumed run replays it exactly."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def run_epoch(
    step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    first_step: int,
    data: DeviceDataset,
    batch_size: int,
    recipe: Mapping[str, Any],
    generator: torch.Generator,
) -> tuple[float, float]:
    """One pass over the training set; loss and accuracy accumulate on the device and sync once at the end."""
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    batches = data.train_batches(batch_size, generator, recipe["crop_padding"], recipe["flip"])
    for offset, (images, labels) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(first_step + offset)
        loss, hits = step(images, labels)
        loss_sum += loss * labels.shape[0]
        correct += hits
    seen = data.steps_per_epoch(batch_size) * batch_size
    return loss_sum.item() / seen, correct.item() / seen


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceDataset, batch_size: int, choice: DeviceChoice) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy on a split (validation during training, test at the end)."""
    model.eval()
    loss_sum = torch.zeros((), device=choice.device)
    correct = torch.zeros((), device=choice.device, dtype=torch.long)
    for images, labels in data.eval_batches(batch_size):
        with autocast(choice.device, choice.autocast_dtype):
            logits = model(images).float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    model.train()
    return loss_sum.item() / len(data), correct.item() / len(data)


@dataclass
class Fit:
    """One model being trained on the device: what tuning and final training share."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    train_data: DeviceDataset
    val_data: DeviceDataset
    batch_size: int
    peak_lr: float
    choice: DeviceChoice

    @property
    def steps_per_epoch(self) -> int:
        return self.train_data.steps_per_epoch(self.batch_size)


def prepare_fit(
    spec: Mapping[str, Any], arrays: ArrayDataset, seed: int, recipe: Mapping[str, Any], lr: float, choice: DeviceChoice
) -> Fit:
    """The variant's model as seeded, its optimiser and step, and the training and validation splits on the device."""
    train_data = DeviceDataset(arrays.x_train, arrays.y_train, choice.device, channels_last=choice.channels_last)
    val_data = DeviceDataset(
        arrays.x_val, arrays.y_val, choice.device, train_data.mean, train_data.std, choice.channels_last
    )
    model = build_for_dataset(spec, arrays, seed).to(choice.device)
    model = model.to(memory_format=torch.channels_last) if choice.channels_last else model
    optimizer = make_optimizer(model, recipe, lr, choice.device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"])
    clip = (agc_parameter_groups(model)["clipped"], recipe["agc_clipping"]) if spec["norm"] == "nf" else None
    step = make_step(model, optimizer, loss_fn, choice, recipe["compile"], clip)
    batch_size = min(recipe["batch_size"], len(train_data))
    return Fit(model, optimizer, step, train_data, val_data, batch_size, lr, choice)


def fit_epoch(fit: Fit, schedule: Schedule, epoch: int, seed: int, recipe: Mapping[str, Any]) -> dict[str, float]:
    """Train one epoch on the schedule, then score the validation split (skipped once the loss is not finite)."""
    first_step = (epoch - 1) * fit.steps_per_epoch
    started = time.time()
    train_loss, train_acc = run_epoch(
        fit.step,
        fit.optimizer,
        lambda step: fit.peak_lr * schedule.multiplier(step),
        first_step,
        fit.train_data,
        fit.batch_size,
        recipe,
        epoch_generator(seed, epoch, fit.choice.device),
    )
    seconds = time.time() - started
    val_loss, val_acc, eval_started = math.nan, math.nan, time.time()
    if math.isfinite(train_loss):
        val_loss, val_acc = evaluate(fit.model, fit.val_data, recipe["eval_batch_size"], fit.choice)
    return {
        "epoch": epoch,
        "step": first_step + fit.steps_per_epoch,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": fit.optimizer.param_groups[0]["lr"],
        "epoch_seconds": seconds,
        "images_per_second": fit.steps_per_epoch * fit.batch_size / seconds,
        "eval_seconds": time.time() - eval_started,
    }


def cooldown_epochs(epoch: int, max_epochs: int, cooldown: float) -> int:
    """Epochs of the final decay when it starts after ``epoch``: a fraction of the run so far, within the cap."""
    return min(math.ceil(cooldown * epoch), max_epochs - epoch)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "cnnablate": __version__}
    for name in ("torch", "numpy", "mlflow", "snakemake"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so a kill never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def write_history(rows: list[dict[str, float]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _open_tracking(job: TrainJob, params: Mapping[str, Any]):  # type: ignore[no-untyped-def]
    if job.tracking_setup is None:
        return None
    from cnnablate.tracking import JobRun, read_setup

    run = JobRun(
        read_setup(job.tracking_setup),
        job.job_key,
        f"{job.variant}/seed{job.seed}",
        {
            "variant": job.variant,
            "seed": job.seed,
            "study": job.study,
        },
    )
    run.log_params(params)
    return run


def train(job: TrainJob) -> dict[str, Any]:
    """Train (or resume) one job to convergence; write metrics.json, history.csv and model.pt into ``job.run_dir``."""
    started = process_started_at()
    timings: dict[str, float] = {"imports": IMPORTED_AT - started}
    clock = time.time()
    recipe = job.recipe
    choice = choose_device(recipe["precision"], recipe["channels_last"], recipe["jobs_per_gpu"], job.force_cpu)
    log.info(
        "job %s on %s (autocast %s, channels_last %s), peak lr %g",
        job.job_key,
        choice.description,
        choice.autocast_dtype,
        choice.channels_last,
        job.peak_lr,
    )
    arrays = load_prepared(job.dataset)
    fit = prepare_fit(job.spec, arrays, job.seed, recipe, job.peak_lr, choice)
    timings["data_and_model"] = time.time() - clock
    clock = time.time()

    spe = fit.steps_per_epoch
    max_epochs = max(1, recipe["max_steps"] // spe)
    schedule = Schedule(warmup_steps=round(recipe["warmup_epochs"] * spe))
    plateau = Plateau(recipe["min_delta"])
    history: list[dict[str, float]] = []
    train_seconds, resumed_from, stop_reason = 0.0, None, "cap"
    fingerprint = job.fingerprint()
    if job.checkpoint.exists():
        state = torch.load(job.checkpoint, map_location=choice.device, weights_only=True)
        if state["fingerprint"] == fingerprint:
            fit.model.load_state_dict(state["model"])
            fit.optimizer.load_state_dict(state["optimizer"])
            schedule = Schedule(**state["schedule"])
            plateau = Plateau(**state["plateau"])
            history, train_seconds, stop_reason = state["history"], state["train_seconds"], state["stop_reason"]
            resumed_from = len(history)
            log.info("resumed from checkpoint %s at epoch %d", job.checkpoint, resumed_from)
        else:
            log.info("ignoring checkpoint %s: it was written for another spec, recipe or learning rate", job.checkpoint)

    params = {
        **flatten(job.spec, "model."),
        **flatten(recipe, "train."),
        "train.peak_lr": job.peak_lr,
        "seed": job.seed,
        "variant": job.variant,
        "dataset": str(job.dataset),
        "data.validation_images": len(fit.val_data),
        "data.validation_digest": arrays.validation_digest,
    }
    tracker = _open_tracking(job, params)
    if tracker is not None:
        for row in history:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    timings["tracking_start"] = time.time() - clock

    diverged = False
    first_step_at: float | None = None
    status = "FAILED"
    try:
        epoch = len(history)
        while not schedule.finished(epoch * spe):
            epoch += 1
            first_step_at = first_step_at or time.time()
            row = fit_epoch(fit, schedule, epoch, job.seed, recipe)
            if not math.isfinite(row["train_loss"]):
                diverged, stop_reason = True, "diverged"
                log.warning("epoch %d: loss is %s; the run diverged and stops here", epoch, row["train_loss"])
                break
            train_seconds += row["epoch_seconds"]
            row["elapsed_seconds"] = train_seconds
            history.append(row)
            plateau.update(row["val_acc"], row["val_loss"])
            if schedule.decay_start is None and (
                plateau.since >= recipe["patience"]
                or epoch + cooldown_epochs(epoch, max_epochs, recipe["cooldown"]) >= max_epochs
            ):
                stop_reason = "plateau" if plateau.since >= recipe["patience"] else "cap"
                decay = cooldown_epochs(epoch, max_epochs, recipe["cooldown"])
                schedule.start_decay(epoch * spe, decay * spe)
                log.info(
                    "%s after epoch %d: the learning rate decays to zero over %d epochs", stop_reason, epoch, decay
                )
            log.info(
                "epoch %3d  step %6d  lr %.4g  loss %.4f  train %.2f%%  val %.2f%%  %8.0f img/s",
                epoch,
                row["step"],
                row["lr"],
                row["train_loss"],
                100 * row["train_acc"],
                100 * row["val_acc"],
                row["images_per_second"],
            )
            if tracker is not None:
                tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            save_atomic(
                {
                    "fingerprint": fingerprint,
                    "history": history,
                    "train_seconds": train_seconds,
                    "stop_reason": stop_reason,
                    "schedule": vars(schedule),
                    "plateau": vars(plateau),
                    "model": fit.model.state_dict(),
                    "optimizer": fit.optimizer.state_dict(),
                },
                job.checkpoint,
            )
            kill_point(f"epoch-{epoch}")
        training_done = time.time()

        test_data = DeviceDataset(
            arrays.x_test, arrays.y_test, choice.device, fit.train_data.mean, fit.train_data.std, choice.channels_last
        )
        test_loss, test_acc = (
            (math.nan, math.nan) if diverged else evaluate(fit.model, test_data, recipe["eval_batch_size"], choice)
        )
        job.run_dir.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in fit.model.state_dict().items()}, job.run_dir / "model.pt")
        write_history(history, job.run_dir / "history.csv")
        last = history[-1] if history else {}
        chance = 1.0 / arrays.num_classes
        val_acc = None if diverged else last.get("val_acc")
        trained = val_acc is not None and above_chance(round(val_acc * len(fit.val_data)), len(fit.val_data), chance)
        metrics: dict[str, Any] = {
            "study": job.study,
            "variant": job.variant,
            "seed": job.seed,
            "spec": job.spec,
            "lr": job.peak_lr,
            "lr_source": "shared" if job.lr is None else "tuned",
            "trained": trained,
            "chance": chance,
            "stop_reason": stop_reason,
            "test_acc": None if diverged else test_acc,
            "test_loss": None if diverged else test_loss,
            "val_acc": val_acc,
            "val_loss": None if diverged else last.get("val_loss"),
            "best_val_acc": plateau.best if history else None,
            "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"),
            "params": sum(p.numel() for p in fit.model.parameters()),
            "steps": len(history) * spe,
            "max_steps": recipe["max_steps"],
            "epochs_completed": len(history),
            "diverged": diverged,
            "train_seconds": train_seconds,
            "eval_seconds": sum(row["eval_seconds"] for row in history),
            "images_per_second": len(history) * spe * fit.batch_size / train_seconds if train_seconds else None,
            "device": choice.description,
            "precision": str(choice.autocast_dtype or torch.float32),
            "channels_last": choice.channels_last,
            "resumed_from_epoch": resumed_from,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "num_classes": arrays.num_classes,
            "train_images": len(fit.train_data),
            "validation_images": len(fit.val_data),
            "validation_digest": arrays.validation_digest,
            "test_images": len(test_data),
            "mlflow_run_id": tracker.run_id if tracker else None,
        }
        timings["first_step"] = (first_step_at or training_done) - started
        timings["finalize"] = time.time() - training_done
        metrics["overhead_seconds"] = timings
        kill_point("before-metrics")
        (job.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if tracker is not None:
            tracker.log_metrics(
                {
                    "final_test_acc": metrics["test_acc"],
                    "final_val_acc": metrics["val_acc"],
                    "params": metrics["params"],
                    "steps": metrics["steps"],
                    "train_seconds": train_seconds,
                    "diverged": float(diverged),
                    "trained": float(trained),
                    "epochs_completed": len(history),
                }
            )
            tracker.log_artifacts([job.run_dir / name for name in ("metrics.json", "history.csv", "model.pt")])
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.finish(status)
    job.checkpoint.unlink(missing_ok=True)
    log.info(
        "done: %s after %d epochs (%s), val %s, test %s, %.1fs training",
        "trained" if trained else "DID NOT TRAIN",
        len(history),
        stop_reason,
        metrics["val_acc"],
        metrics["test_acc"],
        train_seconds,
    )
    return metrics
