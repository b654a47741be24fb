"""Train one (variant, seed) until it has stopped improving: a loop you can read top to bottom, resumable,
tracked, deterministic on CPU.

Data lives on the device; augmentation is batched tensor ops; losses and accuracies accumulate on the device and
are read only at validation checks (every ``eval_every`` steps at most, at least once per epoch). The learning
rate warms up, holds its peak while the run still improves, then cools down linearly over a fraction of the
steps run so far (warmup-stable-decay, stretched to the actual run). A run has stopped improving when neither
its validation accuracy, its validation loss nor its training loss has improved by ``min_delta`` (relative to
their scale: 1 for accuracy, ln C for losses) for ``patience`` steps, and never before ``min_steps``: reading the
training loss keeps a network that is still fitting (with batch-norm statistics lagging in eval mode) from
being stopped on a noisy validation curve.

One optimisation step, the whole recipe (rate, forward, loss, backward, clipping, update), is ``train_step``; the
schedule it reads and the stopping rule sit beside it.

The tuning runs (``cnnablate.tune``) run this very loop on their own budget, so the learning rate they pick is
tried under the schedule the final run uses. A final run that ends more than ``RETRY_GAP`` validation points
below its tuning run at the same rate is retried once at the next lower rate of the grid; both attempts are
recorded and the one with the better validation accuracy is kept. The test split is read once, at the end.

A checkpoint is written after every epoch to a path outside the job's declared outputs (Snakemake deletes those
when a job fails), so a rerun resumes, schedule and stopping state included.
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
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnablate import __version__, layout
from cnnablate.agc import adaptive_clip_grad_
from cnnablate.data import ArrayDataset, load_prepared
from cnnablate.devices import DeviceChoice, autocast, choose_device
from cnnablate.loader import DeviceDataset
from cnnablate.models import agc_parameter_groups
from cnnablate.runs import build_for_dataset
from cnnablate.tracking import git_commit
from cnnablate.vocabulary import RETRY_GAP, TRAINED_LOSS_FRACTION, TRAINED_OUTCOMES, Outcome, trained_accuracy

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
    "segment_seconds",
    "images_per_second",
    "eval_seconds",
    "elapsed_seconds",
]
KILL_AT_ENV = "CNNABLATE_KILL_AT"
COMPILE_MIN_STEPS = 2000  # compile: auto compiles (CUDA graphs) runs capped at this many steps or more
CHECKPOINT_FORMAT = 2  # part of every checkpoint's fingerprint: a checkpoint of an older layout never resumes


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
    force_cpu: bool = False
    lr: float | None = None  # None: the tuned rate when ``tuning`` is given, else the recipe's shared rate
    tuning: Mapping[str, Any] | None = None  # the variant's learning-rate search (cnnablate.tune), if tuned

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return self.tuning["chosen_lr"] if self.tuning else self.recipe["lr"]

    @property
    def job_key(self) -> str:
        return layout.job_key(self.study, self.variant, self.seed)

    def tuning_point(self, lr: float) -> Mapping[str, Any] | None:
        """The tuning run at ``lr``, when the search tried it."""
        points = self.tuning["grid"] if self.tuning else []
        return next((point for point in points if point["lr"] == lr), None)

    def retry_lr(self, attempt: Attempt) -> float | None:
        """The next lower rate of the search when ``attempt`` ended RETRY_GAP below its tuning run, else None."""
        point = self.tuning_point(attempt.lr)
        if point is None or point["val_acc"] is None:
            return None
        if attempt.val_acc is not None and attempt.val_acc >= point["val_acc"] - RETRY_GAP:
            return None
        lower = [p["lr"] for p in self.tuning["grid"] if p["lr"] < attempt.lr]  # type: ignore[index]
        return max(lower) if lower else None

    def checkpoint_for(self, lr: float) -> Path:
        """One checkpoint per attempt: a finished first attempt survives while the retry trains."""
        return (
            self.checkpoint if lr == self.peak_lr else self.checkpoint.with_name(f"{self.checkpoint.stem}.lr{lr:g}.pt")
        )

    def fingerprint(self, lr: float) -> str:
        """Identifies what a checkpoint was trained for; a changed spec or recipe never resumes from it."""
        stat = self.dataset.stat()
        payload = json.dumps([CHECKPOINT_FORMAT, self.spec, self.recipe, lr, self.seed, stat.st_size], sort_keys=True)
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
class Convergence:
    """Stopping bookkeeping: the best validation accuracy, validation loss and training loss, and the step at
    which any of them last improved.

    A check improves when the accuracy rises by ``min_delta``, or either loss falls by ``min_delta`` x ln C (the
    loss of guessing, the losses' natural scale). Reading the training loss too keeps a network that is still
    fitting, but whose validation curve is noisy or lagging, from being stopped.
    """

    min_delta: float
    chance_loss: float
    best_val_acc: float = -math.inf
    best_val_loss: float = math.inf
    best_train_loss: float = math.inf
    improved_at: int = 0

    def update(self, step: int, val_acc: float, val_loss: float, train_loss: float) -> None:
        loss_delta = self.min_delta * self.chance_loss
        if (
            val_acc > self.best_val_acc + self.min_delta
            or val_loss < self.best_val_loss - loss_delta
            or train_loss < self.best_train_loss - loss_delta
        ):
            self.improved_at = step
        self.best_val_acc = max(self.best_val_acc, val_acc)
        self.best_val_loss = min(self.best_val_loss, val_loss)
        self.best_train_loss = min(self.best_train_loss, train_loss)

    @property
    def optimised(self) -> bool:
        """Whether the loss moved at all: its lowest segment-mean training loss fell below TRAINED_LOSS_FRACTION x
        ln C. A cheap check for short tuning runs; one low segment passes it, so a final run is judged on its final
        model instead (``trained_accuracy``)."""
        return self.best_train_loss < TRAINED_LOSS_FRACTION * self.chance_loss


def train_step(
    fit: Fit, schedule: Schedule, step: int, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step of the recipe, the whole of it; returns (loss, number correct) as device tensors.

    The rate from the schedule; forward and loss under autocast (the forward compiled when the recipe asks);
    backward; adaptive gradient clipping for ``norm: nf`` (``cnnablate.agc``); Nesterov SGD, weight decay on
    weights of rank >= 2 only, as foreach ops equal to ``torch.optim.SGD(nesterov=True)`` step for step (every
    ``torch.optim.Optimizer`` pulls in torch._dynamo: seconds of start-up per job); the gradients dropped. A new
    recipe element (an EMA of the weights, say) goes into the schema and here.
    """
    fit.lr = fit.peak_lr * schedule.multiplier(step)
    with autocast(fit.choice.device, fit.choice.autocast_dtype):
        logits = fit.forward(images)
        loss = fit.loss_fn(logits.float(), labels)
    loss.backward()
    with torch.no_grad():
        if fit.clipped:
            adaptive_clip_grad_(fit.clipped, fit.recipe["agc_clipping"])
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in fit.parameters]
        decay, decayed, momentum = fit.recipe["weight_decay"], fit.decayed, fit.recipe["momentum"]
        if decay:
            grads[:decayed] = torch._foreach_add(grads[:decayed], fit.parameters[:decayed], alpha=decay)
        if momentum:
            torch._foreach_mul_(fit.momenta, momentum)
            torch._foreach_add_(fit.momenta, grads)
            grads = torch._foreach_add(grads, fit.momenta, alpha=momentum)
        torch._foreach_add_(fit.parameters, grads, alpha=-fit.lr)
    fit.model.zero_grad()
    return loss.detach(), (logits.argmax(dim=1) == labels).sum()


@dataclass
class Progress:
    """Where a run stands: everything a checkpoint must hold to resume it exactly, model and optimiser aside."""

    schedule: Schedule
    convergence: Convergence
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_completed: int = 0
    train_seconds: float = 0.0
    stop_reason: str = "cap"
    diverged: bool = False

    @property
    def step(self) -> int:
        return int(self.history[-1]["step"]) if self.history else 0

    @property
    def finished(self) -> bool:
        return self.diverged or self.schedule.finished(self.step)

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Progress:
        return cls(
            **{
                **state,
                "schedule": Schedule(**state["schedule"]),
                "convergence": Convergence(**state["convergence"]),
            }
        )


def resolve_compile(setting: str, device: torch.device, max_steps: int) -> str:
    """The torch.compile mode of the step. ``auto``: CUDA graphs (reduce-overhead) on CUDA when the run may last
    COMPILE_MIN_STEPS steps, where the launches it saves (about 2.3 ms per step for the CIFAR base on an H200:
    501 -> 299 ms per 88-step epoch) outweigh a compilation of tens of seconds; eager otherwise and on the CPU."""
    if setting != "auto":
        return setting
    return "reduce-overhead" if device.type == "cuda" and max_steps >= COMPILE_MIN_STEPS else "off"


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The random stream of one epoch (order, crops, flips): a resumed run replays it exactly."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DeviceDataset,
    batch_size: int,
    choice: DeviceChoice,
    predictions: list[torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy on a split (validation during training, test at the end);
    ``predictions`` collects the predicted class of every image, in the split's order (the test split's are
    kept, so that two runs can be compared image by image)."""
    model.eval()
    loss_sum = torch.zeros((), device=choice.device)
    correct = torch.zeros((), device=choice.device, dtype=torch.long)
    for images, labels in data.eval_batches(batch_size):
        with autocast(choice.device, choice.autocast_dtype):
            logits = model(images).float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        predicted = logits.argmax(dim=1)
        correct += (predicted == labels).sum()
        if predictions is not None:
            predictions.append(predicted)
    model.train()
    return loss_sum.item() / len(data), correct.item() / len(data)


@dataclass
class Fit:
    """One model being trained on the device, with the recipe it follows and what ``train_step`` needs: what
    tuning and final training share."""

    model: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, compiled when the recipe asks (resolve_compile)
    loss_fn: nn.Module
    parameters: list[nn.Parameter]  # the trained ones: weights of rank >= 2 first (decayed), then norms and biases
    decayed: int  # how many of ``parameters`` weight decay applies to
    momenta: list[torch.Tensor]  # the Nesterov momentum buffer of each of ``parameters`` (checkpointed)
    clipped: list[nn.Parameter]  # what adaptive gradient clipping clips (norm: nf); empty otherwise
    train_data: DeviceDataset
    val_data: DeviceDataset
    recipe: Mapping[str, Any]
    peak_lr: float
    seed: int
    max_steps: int
    chance_loss: float
    choice: DeviceChoice
    lr: float = math.nan  # the rate of the latest step (the history records it)

    @property
    def chance(self) -> float:
        """The accuracy of guessing: 1/C (chance_loss is ln C)."""
        return math.exp(-self.chance_loss)

    @property
    def batch_size(self) -> int:
        return min(self.recipe["batch_size"], len(self.train_data))

    @property
    def steps_per_epoch(self) -> int:
        return self.train_data.steps_per_epoch(self.batch_size)

    def check_steps(self) -> set[int]:
        """Steps within an epoch (1-based offsets) after which validation runs: evenly spaced, at most
        ``eval_every`` apart, the last at the epoch's end."""
        per_epoch = math.ceil(self.steps_per_epoch / self.recipe["eval_every"])
        return {round(i * self.steps_per_epoch / per_epoch) for i in range(1, per_epoch + 1)}

    def new_progress(self) -> Progress:
        warmup = round(self.recipe["warmup_epochs"] * self.steps_per_epoch)
        return Progress(
            Schedule(warmup_steps=max(1, min(warmup, self.max_steps - 1))),
            Convergence(self.recipe["min_delta"], self.chance_loss),
        )


def prepare_fit(
    spec: Mapping[str, Any],
    arrays: ArrayDataset,
    seed: int,
    recipe: Mapping[str, Any],
    lr: float,
    choice: DeviceChoice,
    max_steps: int | None = None,
) -> Fit:
    """The variant's model as seeded, what its steps update, and the training and validation splits on the
    device."""
    dtype = choice.autocast_dtype or torch.float32
    train_data = DeviceDataset(arrays.x_train, arrays.y_train, choice.device, None, None, choice.channels_last, dtype)
    val_data = DeviceDataset(
        arrays.x_val, arrays.y_val, choice.device, train_data.mean, train_data.std, choice.channels_last, dtype
    )
    model = build_for_dataset(spec, arrays, seed).to(choice.device)
    model = model.to(memory_format=torch.channels_last) if choice.channels_last else model
    trained = [p for p in model.parameters() if p.requires_grad]
    decayed, plain = [p for p in trained if p.ndim >= 2], [p for p in trained if p.ndim < 2]
    cap = recipe["max_steps"] if max_steps is None else max_steps
    compile_mode = resolve_compile(recipe["compile"], choice.device, cap)
    return Fit(
        model=model,
        forward=model if compile_mode == "off" else torch.compile(model, mode=compile_mode),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"]),
        parameters=decayed + plain,
        decayed=len(decayed),
        momenta=[torch.zeros_like(p) for p in decayed + plain],
        clipped=agc_parameter_groups(model)["clipped"] if spec["norm"] == "nf" else [],
        train_data=train_data,
        val_data=val_data,
        recipe=recipe,
        peak_lr=lr,
        seed=seed,
        max_steps=cap,
        chance_loss=math.log(arrays.num_classes),
        choice=choice,
    )


def decide_cooldown(fit: Fit, progress: Progress) -> None:
    """At a check: start the final decay once the run has stopped improving (after ``min_steps``), or when the
    cap leaves no more room than the cool-down needs. Decided once; the schedule remembers it."""
    recipe, step, schedule = fit.recipe, progress.step, progress.schedule
    if schedule.decay_start is not None:
        return
    cooldown = math.ceil(recipe["cooldown"] * step)
    stalled = step >= recipe["min_steps"] and step - progress.convergence.improved_at >= recipe["patience"]
    if stalled or step + cooldown >= fit.max_steps:
        progress.stop_reason = "plateau" if stalled else "cap"
        schedule.start_decay(step, min(cooldown, fit.max_steps - step))
        log.info(
            "%s at step %d: the learning rate decays to zero over %d steps",
            progress.stop_reason,
            step,
            schedule.decay_steps,
        )


def run_to_convergence(
    fit: Fit, progress: Progress, after_epoch: Callable[[], None] = lambda: None, pause_at: int | None = None
) -> Progress:
    """Train from ``progress`` until the schedule ends or the loss diverges, checking validation as it goes.

    ``after_epoch`` runs at each epoch's end (checkpoints). ``pause_at`` returns at the end of the first epoch
    that reaches that step (tuning's budgets); calling again continues the same run. Everything random is drawn
    from the epoch's own generator, so a run paused or resumed at an epoch's start replays the same steps.
    """
    checks, device = fit.check_steps(), fit.choice.device
    while not progress.finished and (pause_at is None or progress.step < pause_at):
        epoch = progress.epochs_completed + 1
        step = progress.step
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, started = 0, time.time()
        batches = fit.train_data.train_batches(
            fit.batch_size, epoch_generator(fit.seed, epoch, device), fit.recipe["crop_padding"], fit.recipe["flip"]
        )
        for offset, (images, labels) in enumerate(batches, start=1):
            loss, hits = train_step(fit, progress.schedule, step, images, labels)
            loss_sum += loss * labels.shape[0]
            correct += hits
            seen, step = seen + labels.shape[0], step + 1
            if offset not in checks and step < fit.max_steps and not progress.schedule.finished(step):
                continue
            seconds = time.time() - started
            check(fit, progress, epoch, step, loss_sum.item() / seen, correct.item() / seen, seconds)
            if progress.finished:
                break
            loss_sum.zero_(), correct.zero_()
            seen, started = 0, time.time()
        progress.epochs_completed = epoch
        after_epoch()
    return progress


def check(
    fit: Fit, progress: Progress, epoch: int, step: int, train_loss: float, train_acc: float, seconds: float
) -> None:
    """A validation check: score the validation split, record the row, update the stopping state."""
    eval_started = time.time()
    progress.train_seconds += seconds
    if not math.isfinite(train_loss):
        progress.diverged, progress.stop_reason = True, "diverged"
        val_loss, val_acc = math.nan, math.nan
        log.warning("step %d: the training loss is %s; the run diverged and stops here", step, train_loss)
    else:
        val_loss, val_acc = evaluate(fit.model, fit.val_data, fit.recipe["eval_batch_size"], fit.choice)
    row = {
        "epoch": epoch,
        "step": step,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": fit.lr,
        "segment_seconds": seconds,
        "images_per_second": (step - progress.step) * fit.batch_size / seconds if seconds else math.nan,
        "eval_seconds": time.time() - eval_started,
        "elapsed_seconds": progress.train_seconds,
    }
    progress.history.append(row)
    if not progress.diverged:
        progress.convergence.update(step, val_acc, val_loss, train_loss)
        decide_cooldown(fit, progress)
    log.info(
        "epoch %3d  step %6d  lr %.4g  loss %.4f  train %.2f%%  val %.2f%%  %8.0f img/s",
        epoch,
        step,
        row["lr"],
        train_loss,
        100 * train_acc,
        100 * val_acc,
        row["images_per_second"],
    )


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


@dataclass
class Attempt:
    """One final-training attempt at one learning rate: the fitted model and how its run went."""

    lr: float
    fit: Fit
    progress: Progress
    resumed_from_epoch: int | None
    setup_seconds: float  # model built, data on the device, checkpoint read
    training_started: float  # wall-clock time of the first step
    # the final model on the whole training split, unaugmented, in eval mode (None when it diverged)
    train_loss: float | None
    train_acc: float | None

    @property
    def last(self) -> dict[str, float]:
        return self.progress.history[-1] if self.progress.history else {}

    @property
    def outcome(self) -> Outcome:
        """Diverged; did not train (the final model's training accuracy below ``trained_accuracy``); not
        converged (stopped by the cap while improving); else converged."""
        if self.progress.diverged or self.train_acc is None:
            return Outcome.DIVERGED
        if self.train_acc < trained_accuracy(self.fit.chance):
            return Outcome.DID_NOT_TRAIN
        return Outcome.NOT_CONVERGED if self.progress.stop_reason == "cap" else Outcome.CONVERGED

    @property
    def val_acc(self) -> float | None:
        return None if self.progress.diverged else self.last.get("val_acc")

    def summary(self, tuning_point: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "val_acc": self.val_acc,
            "val_loss": None if self.progress.diverged else self.last.get("val_loss"),
            "steps": self.progress.step,
            "stop_reason": self.progress.stop_reason,
            "outcome": self.outcome,
            "train_acc": self.train_acc,
            "best_train_loss": self.progress.convergence.best_train_loss,
            "tuning_val_acc": tuning_point["val_acc"] if tuning_point else None,
        }


def train_attempt(job: TrainJob, arrays: ArrayDataset, choice: DeviceChoice, lr: float) -> Attempt:
    """Train (or resume, or reload when already finished) the job at one learning rate."""
    clock = time.time()
    fit = prepare_fit(job.spec, arrays, job.seed, job.recipe, lr, choice)
    progress, resumed_from = fit.new_progress(), None
    checkpoint, fingerprint = job.checkpoint_for(lr), job.fingerprint(lr)
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=choice.device, weights_only=True)
        if state["fingerprint"] == fingerprint:
            fit.model.load_state_dict(state["model"])
            for buffer, saved in zip(fit.momenta, state["optimizer"]["momentum_buffers"], strict=True):
                buffer.copy_(saved)
            progress = Progress.from_state(state["progress"])
            resumed_from = progress.epochs_completed
            log.info("resumed from checkpoint %s at epoch %d", checkpoint, resumed_from)
        else:
            log.info("ignoring checkpoint %s: it was written for another spec, recipe or learning rate", checkpoint)

    def after_epoch() -> None:
        state = {"fingerprint": fingerprint, "progress": progress.state()}
        optimizer = {"momentum_buffers": fit.momenta}
        save_atomic({**state, "model": fit.model.state_dict(), "optimizer": optimizer}, checkpoint)
        kill_point(f"epoch-{progress.epochs_completed}")

    log.info("training at peak lr %g for at most %d steps", lr, fit.max_steps)
    setup_seconds, training_started = time.time() - clock, time.time()
    run_to_convergence(fit, progress, after_epoch)
    train_loss, train_acc = (
        (None, None)
        if progress.diverged
        else evaluate(fit.model, fit.train_data, job.recipe["eval_batch_size"], fit.choice)
    )
    return Attempt(lr, fit, progress, resumed_from, setup_seconds, training_started, train_loss, train_acc)


def score_test_split(kept: Attempt, arrays: ArrayDataset) -> tuple[dict[str, Any], np.ndarray]:
    """Test loss and accuracy of the kept attempt's model (None when it diverged), and its predicted class per
    test image (empty when it diverged)."""
    train_data = kept.fit.train_data
    test_data = DeviceDataset(
        arrays.x_test,
        arrays.y_test,
        train_data.device,
        train_data.mean,
        train_data.std,
        kept.fit.choice.channels_last,
        train_data.dtype,
    )
    dtype = np.min_scalar_type(arrays.num_classes - 1)
    if kept.progress.diverged:
        return {"test_acc": None, "test_loss": None, "test_images": len(test_data)}, np.zeros(0, dtype)
    predicted: list[torch.Tensor] = []
    loss, accuracy = evaluate(kept.fit.model, test_data, kept.fit.recipe["eval_batch_size"], kept.fit.choice, predicted)
    classes = torch.cat(predicted).cpu().numpy().astype(dtype)
    return {"test_acc": accuracy, "test_loss": loss, "test_images": len(test_data)}, classes


def run_metrics(job: TrainJob, arrays: ArrayDataset, attempts: list[Attempt], kept: Attempt) -> dict[str, Any]:
    """metrics.json: what the run reached, how it stopped, how it was trained and where."""
    progress, fit = kept.progress, kept.fit
    diverged = progress.diverged
    tuning_point = job.tuning_point(kept.lr)
    return {
        "study": job.study,
        "variant": job.variant,
        "seed": job.seed,
        "spec": job.spec,
        "recipe": job.recipe,
        "dataset": str(job.dataset),
        "lr": kept.lr,
        "lr_source": "tuned" if job.tuning else "shared",
        "outcome": kept.outcome,
        "trained": kept.outcome in TRAINED_OUTCOMES,
        "converged": kept.outcome == Outcome.CONVERGED,
        "stop_reason": progress.stop_reason,
        "chance": 1.0 / arrays.num_classes,
        "chance_loss": fit.chance_loss,
        "val_acc": kept.val_acc,
        "val_loss": None if diverged else kept.last.get("val_loss"),
        "best_val_acc": None if diverged else progress.convergence.best_val_acc,
        "tuning_val_acc": tuning_point["val_acc"] if tuning_point else None,
        "train_loss": kept.train_loss,
        "train_acc": kept.train_acc,
        "trained_accuracy": trained_accuracy(1.0 / arrays.num_classes),
        "best_train_loss": progress.convergence.best_train_loss,
        "attempts": [attempt.summary(job.tuning_point(attempt.lr)) for attempt in attempts],
        "retried": len(attempts) > 1,
        "params": sum(p.numel() for p in fit.model.parameters()),
        "steps": progress.step,
        "max_steps": fit.max_steps,
        "epochs_completed": progress.epochs_completed,
        "diverged": diverged,
        "train_seconds": progress.train_seconds,
        "eval_seconds": sum(row["eval_seconds"] for row in progress.history),
        "images_per_second": progress.step * fit.batch_size / progress.train_seconds
        if progress.train_seconds
        else None,
        "device": fit.choice.description,
        "precision": str(fit.choice.autocast_dtype or torch.float32),
        "channels_last": fit.choice.channels_last,
        "resumed_from_epoch": kept.resumed_from_epoch,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "num_classes": arrays.num_classes,
        "train_images": len(fit.train_data),
        "validation_images": len(fit.val_data),
        "validation_digest": arrays.validation_digest,
    }


def train(job: TrainJob) -> dict[str, Any]:
    """Train (or resume) one job until it stops improving; write metrics.json, history.csv, model.pt and the
    test predictions.

    MLflow is not on this path: the ``track`` rule mirrors the finished run's files (``cnnablate.tracking``).
    """
    # set up
    started = process_started_at()
    timings = {"imports": IMPORTED_AT - started}
    clock = time.time()
    recipe = job.recipe
    choice = choose_device(recipe["precision"], recipe["channels_last"], recipe["jobs_per_gpu"], job.force_cpu)
    timings["device"], clock = time.time() - clock, time.time()
    log.info(
        "job %s on %s (autocast %s, channels_last %s)",
        job.job_key,
        choice.description,
        choice.autocast_dtype,
        choice.channels_last,
    )
    arrays = load_prepared(job.dataset)
    timings["data"] = time.time() - clock

    # training: the tuned rate, then once the next lower rate if the run fell far below its tuning run
    attempts = [train_attempt(job, arrays, choice, job.peak_lr)]
    timings["model"] = attempts[0].setup_seconds
    timings["first_step"] = attempts[0].training_started - started
    retry = job.retry_lr(attempts[0])
    if retry is not None:
        log.warning("lr %g ended more than %g below its tuning run: retrying at lr %g", job.peak_lr, RETRY_GAP, retry)
        attempts.append(train_attempt(job, arrays, choice, retry))
    kept = max(attempts, key=lambda attempt: -1.0 if attempt.val_acc is None else attempt.val_acc)

    # evaluation: the test split, read once, for the kept attempt
    training_done = time.time()
    metrics = run_metrics(job, arrays, attempts, kept)
    scores, predictions = score_test_split(kept, arrays)
    metrics.update(scores)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    np.save(job.run_dir / layout.PREDICTIONS, predictions)
    torch.save({k: v.detach().cpu() for k, v in kept.fit.model.state_dict().items()}, job.run_dir / layout.MODEL)
    write_history(kept.progress.history, job.run_dir / layout.HISTORY)
    metrics["overhead_seconds"] = {**timings, "finalize": time.time() - training_done}
    kill_point("before-metrics")
    (job.run_dir / layout.METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    for attempt in attempts:
        job.checkpoint_for(attempt.lr).unlink(missing_ok=True)
    log.info(
        "done: %s at lr %g after %d steps (%s), val %s, test %s",
        metrics["outcome"],
        kept.lr,
        metrics["steps"],
        metrics["stop_reason"],
        metrics["val_acc"],
        metrics["test_acc"],
    )
    return metrics
