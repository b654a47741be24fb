"""Train one (variant, seed): a short loop you can read top to bottom, resumable, tracked, deterministic on CPU.

Data lives on the device; augmentation is batched tensor ops; metrics accumulate on the device and are read
once per epoch (no host synchronisation inside the step). A checkpoint is written after every epoch to a path
outside the job's declared outputs (Snakemake deletes those when a job fails), so a rerun resumes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnablate import __version__
from cnnablate.config import flatten
from cnnablate.data import load_prepared
from cnnablate.devices import DeviceChoice, autocast, choose_device
from cnnablate.loader import DeviceDataset
from cnnablate.runs import build_for_dataset
from cnnablate.tracking import git_commit

log = logging.getLogger("cnnablate.train")
IMPORTED_AT = time.time()
HISTORY_FIELDS = [
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "lr",
    "epoch_seconds",
    "images_per_second",
]


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

    @property
    def job_key(self) -> str:
        return f"{self.study}/{self.variant}/seed{self.seed}"

    def fingerprint(self) -> str:
        """Identifies what a checkpoint was trained for; a changed spec or recipe never resumes from it."""
        stat = self.dataset.stat()
        payload = json.dumps([self.spec, self.recipe, self.seed, stat.st_size], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def process_started_at() -> float:
    """Wall-clock time this process started (Linux /proc); falls back to the import time elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return IMPORTED_AT


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up, then linear or cosine decay to zero (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def make_optimizer(model: nn.Module, recipe: Mapping[str, Any], device: torch.device) -> torch.optim.SGD:
    """Nesterov SGD; weight decay only on weights of rank >= 2; fused kernels on CUDA."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": recipe["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(
        groups, lr=recipe["lr"], momentum=recipe["momentum"], nesterov=recipe["momentum"] > 0, **fused
    )


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    choice: DeviceChoice,
    compile_mode: str,
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One optimisation step returning (loss, number correct) as device tensors."""
    forward = model if compile_mode == "off" else torch.compile(model, mode=compile_mode)

    def step(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(choice.device, choice.autocast_dtype):
            logits = forward(images)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.argmax(dim=1) == labels).sum()

    return step


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The random stream of one epoch (order, crops, flips): a resumed run replays it exactly."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def run_epoch(
    step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: DeviceDataset,
    batch_size: int,
    recipe: Mapping[str, Any],
    generator: torch.Generator,
) -> tuple[float, float]:
    """One pass over the training set; loss and accuracy accumulate on the device and sync once at the end."""
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    for images, labels in data.train_batches(batch_size, generator, recipe["crop_padding"], recipe["flip"]):
        loss, hits = step(images, labels)
        loss_sum += loss * labels.shape[0]
        correct += hits
        scheduler.step()
    seen = data.steps_per_epoch(batch_size) * batch_size
    return loss_sum.item() / seen, correct.item() / seen


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceDataset, batch_size: int, choice: DeviceChoice) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy on a split."""
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
    """Train (or resume) one job and write metrics.json, history.csv and model.pt into ``job.run_dir``."""
    started = process_started_at()
    timings: dict[str, float] = {"imports": IMPORTED_AT - started}
    clock = time.time()
    recipe = job.recipe
    choice = choose_device(recipe["precision"], recipe["channels_last"], recipe["jobs_per_gpu"], job.force_cpu)
    log.info(
        "job %s on %s (autocast %s, channels_last %s)",
        job.job_key,
        choice.description,
        choice.autocast_dtype,
        choice.channels_last,
    )

    arrays = load_prepared(job.dataset)
    train_data = DeviceDataset(arrays.x_train, arrays.y_train, choice.device, channels_last=choice.channels_last)
    test_data = DeviceDataset(
        arrays.x_test, arrays.y_test, choice.device, train_data.mean, train_data.std, choice.channels_last
    )
    timings["data"] = time.time() - clock
    clock = time.time()

    model = build_for_dataset(job.spec, arrays, job.seed).to(choice.device)
    model = model.to(memory_format=torch.channels_last) if choice.channels_last else model
    params_count = sum(p.numel() for p in model.parameters())
    batch_size = min(recipe["batch_size"], len(train_data))
    steps_per_epoch = train_data.steps_per_epoch(batch_size)
    total_steps = recipe["epochs"] * steps_per_epoch
    optimizer = make_optimizer(model, recipe, choice.device)
    warmup = round(recipe["warmup_epochs"] * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps, warmup, recipe["schedule"])
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"])
    step = make_step(model, optimizer, loss_fn, choice, recipe["compile"])

    history: list[dict[str, float]] = []
    start_epoch, train_seconds, eval_seconds, resumed_from = 0, 0.0, 0.0, None
    fingerprint = job.fingerprint()
    if job.checkpoint.exists():
        state = torch.load(job.checkpoint, map_location=choice.device, weights_only=True)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, history, train_seconds = state["epoch"], state["history"], state["train_seconds"]
            resumed_from = start_epoch
            log.info("resumed from checkpoint %s at epoch %d of %d", job.checkpoint, start_epoch, recipe["epochs"])
        else:
            log.info("ignoring checkpoint %s: it was written for another spec or recipe", job.checkpoint)
    timings["model"] = time.time() - clock
    clock = time.time()

    params = {
        **flatten(job.spec, "model."),
        **flatten(recipe, "train."),
        "seed": job.seed,
        "variant": job.variant,
        "dataset": str(job.dataset),
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
        for epoch in range(start_epoch + 1, recipe["epochs"] + 1):
            epoch_start = time.time()
            train_loss, train_acc = run_epoch(
                step,
                scheduler,
                train_data,
                batch_size,
                recipe,
                epoch_generator(job.seed, epoch, choice.device),
            )
            first_step_at = first_step_at or epoch_start
            seen = steps_per_epoch * batch_size
            epoch_seconds = time.time() - epoch_start
            train_seconds += epoch_seconds
            if not math.isfinite(train_loss):
                diverged = True
                log.warning("epoch %d: loss is %s; the run diverged and stops here", epoch, train_loss)
                break
            eval_start = time.time()
            test_loss, test_acc = evaluate(model, test_data, recipe["eval_batch_size"], choice)
            eval_seconds += time.time() - eval_start
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": epoch_seconds,
                "images_per_second": seen / epoch_seconds,
            }
            history.append(row)
            left = (recipe["epochs"] - epoch) * train_seconds / (epoch - start_epoch or 1)
            log.info(
                "epoch %3d/%d  loss %.4f  train %.2f%%  test %.2f%%  %8.0f img/s  %6.1fs left",
                epoch,
                recipe["epochs"],
                train_loss,
                100 * train_acc,
                100 * test_acc,
                row["images_per_second"],
                left,
            )
            if tracker is not None:
                tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            save_atomic(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "history": history,
                    "train_seconds": train_seconds,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                },
                job.checkpoint,
            )
        training_done = time.time()

        job.run_dir.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, job.run_dir / "model.pt")
        write_history(history, job.run_dir / "history.csv")
        last = history[-1] if history else {}
        metrics: dict[str, Any] = {
            "study": job.study,
            "variant": job.variant,
            "seed": job.seed,
            "spec": job.spec,
            "test_acc": None if diverged else last.get("test_acc"),
            "test_loss": None if diverged else last.get("test_loss"),
            "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"),
            "params": params_count,
            "epochs": recipe["epochs"],
            "epochs_completed": len(history),
            "diverged": diverged,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "images_per_second": (
                len(history) * steps_per_epoch * batch_size / train_seconds if train_seconds else None
            ),
            "device": choice.description,
            "precision": str(choice.autocast_dtype or torch.float32),
            "channels_last": choice.channels_last,
            "resumed_from_epoch": resumed_from,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "num_classes": arrays.num_classes,
            "train_images": len(train_data),
            "test_images": len(test_data),
            "mlflow_run_id": tracker.run_id if tracker else None,
        }
        timings["first_step"] = (first_step_at or training_done) - started
        timings["finalize"] = time.time() - training_done
        metrics["overhead_seconds"] = timings
        (job.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if tracker is not None:
            tracker.log_metrics(
                {
                    "final_test_acc": metrics["test_acc"],
                    "params": params_count,
                    "train_seconds": train_seconds,
                    "diverged": float(diverged),
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
        "done: test accuracy %s after %d epochs, %.1fs training",
        metrics["test_acc"],
        len(history),
        train_seconds,
    )
    return metrics
