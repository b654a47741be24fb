"""The training loop: augmentation ops, schedule, the stopping rule, outcomes, retries, determinism, resume,
divergence, and the optimiser that stands in for torch.optim.SGD."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from cnnablate import layout
from cnnablate.agc import adaptive_clip_grad_
from cnnablate.config import Study, validate_config
from cnnablate.data import ArrayDataset, load_prepared, make_synthetic, split_validation
from cnnablate.devices import choose_device
from cnnablate.loader import DeviceDataset, random_crop_flip
from cnnablate.models import agc_parameter_groups
from cnnablate.train import (
    Attempt,
    Convergence,
    Progress,
    Schedule,
    TrainJob,
    prepare_fit,
    train,
    train_step,
)
from cnnablate.vocabulary import TRAINED_LOSS_FRACTION, trained_accuracy
from conftest import recording_layers, tiny_config


def _crop_flip(images: torch.Tensor, padding: int, flip: bool, seed: int) -> torch.Tensor:
    """random_crop_flip on N x C x H x W images (it works on N x H x W x C pixels)."""
    padded = torch.nn.functional.pad(images.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))
    return random_crop_flip(padded, padding, flip, torch.Generator().manual_seed(seed)).permute(0, 3, 1, 2)


def test_random_crop_is_a_shift_with_zero_fill() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).reshape(2, 1, 6, 6) + 1
    cropped = _crop_flip(images, 2, False, 0)
    assert cropped.shape == images.shape
    for original, out in zip(images, cropped, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out, torch.roll(original, (dy, dx), (1, 2)) * _window(dy, dx))
        ]
        assert len(matches) == 1


def _window(dy: int, dx: int) -> torch.Tensor:
    mask = torch.zeros(1, 6, 6, dtype=torch.uint8)
    mask[:, max(0, dy) : 6 + min(0, dy), max(0, dx) : 6 + min(0, dx)] = 1
    return mask


def test_random_flip_mirrors_about_half() -> None:
    images = torch.arange(1000 * 4, dtype=torch.float32).reshape(1000, 1, 1, 4)
    flipped = _crop_flip(images, 0, True, 0)
    mirrored = (flipped == images.flip(3)).all(dim=(1, 2, 3))
    assert 400 < int(mirrored.sum()) < 600
    assert ((flipped == images).all(dim=(1, 2, 3)) | mirrored).all()


def test_train_batches_drop_the_last_partial_batch_and_normalise() -> None:
    dataset = make_synthetic(70, 10, seed=0)
    data = DeviceDataset(dataset.x_train, dataset.y_train, torch.device("cpu"))
    batches = list(data.train_batches(32, torch.Generator().manual_seed(0), 4, True))
    assert [len(labels) for _, labels in batches] == [32, 32]
    everything = data.normalize(data.images)
    assert abs(float(everything.mean())) < 1e-3
    assert abs(float(everything.std()) - 1) < 0.05


def test_schedule_warms_up_holds_then_decays_to_zero_from_where_it_was_told() -> None:
    schedule = Schedule(warmup_steps=10)
    assert schedule.multiplier(0) == pytest.approx(0.1)
    assert schedule.multiplier(9) == pytest.approx(1.0)
    assert schedule.multiplier(500) == 1.0
    assert not schedule.finished(10_000)
    schedule.start_decay(100, 20)
    assert schedule.multiplier(99) == 1.0
    assert schedule.multiplier(100) == 1.0
    assert schedule.multiplier(110) == pytest.approx(0.5)
    assert schedule.multiplier(120) == 0.0
    assert not schedule.finished(119)
    assert schedule.finished(120)


def test_convergence_counts_steps_since_any_signal_improved_by_min_delta_on_its_scale() -> None:
    convergence = Convergence(min_delta=0.01, chance_loss=2.0)  # losses must fall by 0.02 nats
    convergence.update(10, 0.5, 1.0, 1.5)
    convergence.update(20, 0.6, 0.9, 1.4)
    assert convergence.improved_at == 20
    convergence.update(30, 0.605, 0.885, 1.39)  # +0.005 accuracy, -0.015 and -0.01 nats: none counts
    assert convergence.improved_at == 20
    assert convergence.best_val_acc == 0.605
    convergence.update(40, 0.1, 5.0, 1.35)  # validation collapsed (lagging batch-norm statistics), training fits
    assert convergence.improved_at == 40
    assert convergence.best_val_loss == 0.885
    assert convergence.best_train_loss == 1.35


def test_a_tuning_run_optimised_when_its_training_loss_left_the_loss_of_guessing() -> None:
    convergence = Convergence(min_delta=0.01, chance_loss=2.0)
    convergence.update(10, 0.11, 2.0, 1.85)  # 92.5% of ln C: still guessing
    assert not convergence.optimised
    convergence.update(20, 0.11, 2.0, 1.75)  # 87.5%: it optimises, whatever validation says
    assert convergence.optimised


def test_a_final_run_trained_only_when_its_final_model_fits_the_training_split() -> None:
    """One low training-loss segment passes the loss check, but the run is judged on its final model: the
    receptive-field study's run at 11.7% training accuracy on 10 classes did not train."""
    progress = Progress(Schedule(warmup_steps=1), Convergence(0.01, math.log(10)), stop_reason="plateau")
    progress.convergence.update(10, 0.12, 2.2, 0.5)
    assert progress.convergence.optimised

    def attempt(train_acc: float | None, diverged: bool = False) -> Attempt:
        progress.diverged = diverged
        return Attempt(0.1, SimpleNamespace(chance=0.1), progress, None, 0.0, 0.0, 2.2, train_acc)

    assert trained_accuracy(0.1) == pytest.approx(0.325)
    assert attempt(0.117).outcome == "did_not_train"
    assert attempt(0.324).outcome == "did_not_train"
    assert attempt(0.326).outcome == "converged"
    assert attempt(None, diverged=True).outcome == "diverged"


@pytest.mark.parametrize("variant", ["base", "norm-nf"])
def test_the_step_updates_exactly_as_torch_optim_sgd_after_clipping(variant: str) -> None:
    """train_step's foreach update is torch.optim.SGD(nesterov=True) with weight decay on weights of rank >= 2
    only, after adaptive gradient clipping for norm nf, at the schedule's rate of each step."""
    config = validate_config(tiny_config(ablations={"norm": {"norm": ["nf"]}}))
    recipe = config["train"]
    arrays = split_validation(make_synthetic(256, 64, contrast=0.6, seed=0), 64, seed=0)
    spec = Study.from_config(config).variants[variant].spec
    fit = prepare_fit(spec, arrays, 0, recipe, 0.1, choose_device("fp32", "off", 1, force_cpu=True))
    theirs = copy.deepcopy(fit.model)
    reference = torch.optim.SGD(
        [
            {"params": [p for p in theirs.parameters() if p.ndim >= 2], "weight_decay": recipe["weight_decay"]},
            {"params": [p for p in theirs.parameters() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=0.1,
        momentum=recipe["momentum"],
        nesterov=True,
    )
    schedule = Schedule(warmup_steps=4)
    batches = [*fit.train_data.train_batches(64, torch.Generator().manual_seed(0), 4, True)] * 2
    for step, (images, labels) in enumerate(batches):
        train_step(fit, schedule, step, images, labels)
        reference.zero_grad()
        fit.loss_fn(theirs(images).float(), labels).backward()
        if variant == "norm-nf":
            adaptive_clip_grad_(agc_parameter_groups(theirs)["clipped"], recipe["agc_clipping"])
        for group in reference.param_groups:
            group["lr"] = 0.1 * schedule.multiplier(step)
        reference.step()
        assert fit.lr == reference.param_groups[0]["lr"]
    assert all(p.grad is None for p in fit.model.parameters())  # the step drops its gradients
    for mine, reference_parameter in zip(fit.model.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, reference_parameter, rtol=1e-6, atol=1e-7)


def make_job(tmp_path: Path, name: str, variant: str = "base", lr: float | None = None, **recipe) -> TrainJob:
    """A tiny training job on the CPU wherever the suite runs: tests compare its results bit for bit."""
    config = validate_config(
        tiny_config(train={**tiny_config()["train"], **recipe}, ablations={"fc": {"arch": ["fc"]}})
    )
    dataset_path = tmp_path / "data.npz"
    if not dataset_path.exists():
        split_validation(make_synthetic(256, 64, contrast=0.6, seed=0), 64, seed=0).save(dataset_path)
    spec = Study.from_config(config).variants[variant].spec
    return TrainJob(
        "tiny",
        variant,
        0,
        spec,
        config["train"],
        dataset_path,
        tmp_path / name / "run",
        tmp_path / name / "checkpoint.pt",
        lr=lr,
        force_cpu=True,
    )


def test_training_is_deterministic_and_writes_its_files(tmp_path) -> None:
    first = train(make_job(tmp_path, "a", max_steps=6))
    second = train(make_job(tmp_path, "b", max_steps=6))
    for key in ("test_acc", "test_loss", "val_acc", "train_loss", "params"):
        assert first[key] == second[key]
    run = tmp_path / "a" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {
        "variant",
        "seed",
        "test_acc",
        "params",
        "epochs_completed",
        "steps",
        "lr",
        "trained",
        "val_acc",
        "validation_images",
        "stop_reason",
        "diverged",
        "train_seconds",
        "images_per_second",
        "device",
        "versions",
        "git_commit",
    } <= set(metrics)
    assert metrics["epochs_completed"] == 2
    assert metrics["steps"] == 6
    assert metrics["stop_reason"] == "cap"
    assert metrics["diverged"] is False
    assert 0 <= metrics["test_acc"] <= 1
    assert metrics["validation_images"] == 64
    assert metrics["train_images"] == 192
    assert metrics["lr"] == 0.05
    assert metrics["lr_source"] == "shared"
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3
    assert "val_acc" in history[0]
    assert "test" not in history[0]
    state = torch.load(run / "model.pt", weights_only=True)
    assert isinstance(state, dict)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    predictions = np.load(run / layout.PREDICTIONS)
    labels = load_prepared(tmp_path / "data.npz").y_test
    assert predictions.shape == labels.shape and predictions.dtype == np.uint8  # one byte per image: a few KB
    assert (predictions == labels).mean() == pytest.approx(metrics["test_acc"])  # the test accuracy, per image
    assert np.array_equal(predictions, np.load(tmp_path / "b" / "run" / layout.PREDICTIONS))


def test_the_cooldown_starts_after_patience_steps_without_improvement(tmp_path) -> None:
    # lr 1e-6 moves nothing by min_delta 0.5: the first check (step 3) sets the bests, patience 6 steps ends the
    # stable phase at step 9, then the cool-down lasts ceil(0.5 * 9) = 5 steps, ending mid-epoch at step 14.
    metrics = train(
        make_job(tmp_path, "flat", lr=1e-6, max_steps=300, patience=6, min_steps=0, cooldown=0.5, min_delta=0.5)
    )
    assert metrics["stop_reason"] == "plateau"
    assert metrics["steps"] == 14
    assert metrics["epochs_completed"] == 5
    history = pd.read_csv(tmp_path / "flat" / "run" / "history.csv")
    assert history["step"].tolist() == [3, 6, 9, 12, 14]
    assert history["lr"][2] == pytest.approx(1e-6)
    assert history["lr"].iloc[-1] < history["lr"][3] < history["lr"][2]


def test_no_run_is_judged_converged_before_its_minimum_budget(tmp_path) -> None:
    metrics = train(
        make_job(tmp_path, "patient", lr=1e-6, max_steps=300, patience=3, min_steps=21, cooldown=0.0, min_delta=0.5)
    )
    assert metrics["stop_reason"] == "plateau"
    assert metrics["steps"] == 21


def test_validation_runs_every_eval_every_steps_within_long_epochs(tmp_path) -> None:
    metrics = train(make_job(tmp_path, "often", max_steps=6, eval_every=1))
    history = pd.read_csv(tmp_path / "often" / "run" / "history.csv")
    assert history["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert history["epoch"].tolist() == [1, 1, 1, 2, 2, 2]
    assert metrics["epochs_completed"] == 2
    assert metrics["steps"] == 6


def _brightness_classes(path: Path) -> None:
    """A dataset any network learns in a few steps: the class is the image's brightness."""
    rng = np.random.default_rng(0)
    labels = np.arange(320) % 10
    images = (labels[:, None, None, None] * 25 + rng.integers(0, 5, (320, 8, 8, 3))).astype(np.uint8)
    split_validation(
        ArrayDataset(images[:256], labels[:256], images[256:], labels[256:], [str(i) for i in range(10)]), 64, 0
    ).save(path)


def test_a_run_that_does_not_optimise_did_not_train_and_one_stopped_by_the_cap_is_not_converged(tmp_path) -> None:
    _brightness_classes(tmp_path / "data.npz")
    still = train(make_job(tmp_path, "still", lr=1e-9, max_steps=6, label_smoothing=0.0))
    assert still["outcome"] == "did_not_train"
    assert still["trained"] is False
    assert still["chance"] == 0.1
    assert still["best_train_loss"] > TRAINED_LOSS_FRACTION * math.log(10)
    assert still["train_acc"] < still["trained_accuracy"] == pytest.approx(0.325)
    learned = train(make_job(tmp_path, "learns", lr=0.2, max_steps=60, patience=60, min_steps=60))
    assert learned["outcome"] == "not_converged"
    assert learned["stop_reason"] == "cap"
    assert learned["trained"] is True
    assert learned["converged"] is False
    assert learned["val_acc"] > 0.3


def test_a_final_run_far_below_its_tuning_run_is_retried_once_at_the_next_lower_rate(tmp_path) -> None:
    tuning = {
        "chosen_lr": 0.05,
        "grid": [
            {"lr": 0.01, "val_acc": 0.2, "val_loss": 2.0},
            {"lr": 0.02, "val_acc": 0.2, "val_loss": 2.0},
            {"lr": 0.05, "val_acc": 1.0, "val_loss": 0.1},  # no tiny run reaches this: the run falls short
        ],
    }
    job = dataclasses.replace(make_job(tmp_path, "retry", max_steps=6), tuning=tuning)
    metrics = train(job)
    assert metrics["retried"] is True
    assert [a["lr"] for a in metrics["attempts"]] == [0.05, 0.02]
    assert metrics["attempts"][0]["tuning_val_acc"] == 1.0
    assert metrics["attempts"][1]["tuning_val_acc"] == 0.2
    best = max(metrics["attempts"], key=lambda attempt: attempt["val_acc"])
    assert metrics["lr"] == best["lr"]
    assert metrics["val_acc"] == best["val_acc"]
    assert metrics["lr_source"] == "tuned"
    assert not list(tmp_path.glob("retry/checkpoint*"))
    tuning["grid"][2]["val_acc"] = 0.0  # a final run at least as good as its tuning run is not retried
    again = train(dataclasses.replace(job, run_dir=tmp_path / "again"))
    assert again["retried"] is False
    assert len(again["attempts"]) == 1
    assert again["lr"] == 0.05


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path, caplog) -> None:
    recipe = {"max_steps": 300, "patience": 3, "min_steps": 0, "cooldown": 0.5, "min_delta": 0.2}
    full = train(make_job(tmp_path, "full", **recipe))
    job = make_job(tmp_path, "resumed", **recipe)
    _train_epochs_then_stop(job, 2)  # after the plateau decision: the schedule's decay state is resumed too
    caplog.set_level("INFO")
    resumed = train(job)
    assert "resumed from checkpoint" in caplog.text
    assert resumed["resumed_from_epoch"] == 2
    assert full["stop_reason"] == "plateau"
    assert full["epochs_completed"] > 2
    for key in ("test_acc", "test_loss", "val_acc", "train_loss", "steps", "stop_reason", "epochs_completed"):
        assert resumed[key] == full[key]
    full_history = (tmp_path / "full" / "run" / "history.csv").read_text().splitlines()
    resumed_history = (tmp_path / "resumed" / "run" / "history.csv").read_text().splitlines()
    drop_times = [[cell for i, cell in enumerate(line.split(",")) if i not in (7, 8, 9, 10)] for line in full_history]
    assert drop_times == [
        [cell for i, cell in enumerate(line.split(",")) if i not in (7, 8, 9, 10)] for line in resumed_history
    ]


def test_a_checkpoint_of_another_recipe_is_ignored(tmp_path, caplog) -> None:
    job = make_job(tmp_path, "changed", max_steps=9)
    _train_epochs_then_stop(job, 1)
    changed = make_job(tmp_path, "changed", max_steps=9, lr=0.01)
    assert changed.fingerprint(changed.peak_lr) != job.fingerprint(job.peak_lr)
    caplog.set_level("INFO")
    metrics = train(changed)
    assert "ignoring checkpoint" in caplog.text
    assert metrics["resumed_from_epoch"] is None


def _train_epochs_then_stop(job: TrainJob, epochs: int) -> None:
    """Leave exactly the checkpoint an interrupted job leaves after ``epochs`` epochs."""
    import cnnablate.train as training

    original = training.save_atomic
    calls = {"n": 0}

    class SimulatedKillError(Exception):
        pass

    def save_then_maybe_stop(obj, path):
        original(obj, path)
        calls["n"] += 1
        if calls["n"] == epochs:
            raise SimulatedKillError

    training.save_atomic = save_then_maybe_stop
    try:
        with pytest.raises(SimulatedKillError):
            train(job)
    finally:
        training.save_atomic = original
    assert job.checkpoint.exists()


def test_a_diverging_run_is_recorded_not_raised(tmp_path) -> None:
    metrics = train(
        make_job(tmp_path, "nan", variant="arch-fc", max_steps=9, lr=1e6, warmup_epochs=0, label_smoothing=0.0)
    )
    assert metrics["diverged"] is True
    assert metrics["test_acc"] is None
    assert metrics["trained"] is False
    assert metrics["epochs_completed"] < 3
    assert metrics["stop_reason"] == "diverged"
    saved = json.loads((tmp_path / "nan" / "run" / "metrics.json").read_text())
    assert saved["diverged"] is True
    assert np.load(tmp_path / "nan" / "run" / layout.PREDICTIONS).size == 0  # no model to predict with


def test_bf16_channels_last_path_runs_on_cpu(tmp_path) -> None:
    """Every convolution and linear layer computes in bf16, convolutions on channels_last inputs and weights."""
    with recording_layers() as calls:
        metrics = train(make_job(tmp_path, "bf16", max_steps=3, precision="bf16", channels_last="on"))
    assert metrics["precision"] == "torch.bfloat16"
    assert metrics["channels_last"] is True
    assert np.isfinite(metrics["train_loss"])
    convolutions = [call for call in calls if call.layer == "Conv2d"]
    assert convolutions, "no Conv2d call was recorded"
    assert any(call.layer == "Linear" for call in calls)
    assert {call.output_dtype for call in calls} == {torch.bfloat16}
    assert all(call.input_channels_last and call.weight_channels_last for call in convolutions), convolutions


def test_crop_and_flip_together_give_a_mirrored_or_plain_window() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).reshape(2, 1, 6, 6) + 1
    for seed in range(10):
        out = _crop_flip(images, 2, True, seed)
        for original, result in zip(images, out, strict=True):
            candidates = [
                torch.roll(source, (dy, dx), (1, 2)) * _window(dy, dx)
                for source in (original, original.flip(2))
                for dy in range(-2, 3)
                for dx in range(-2, 3)
            ]
            assert any(torch.equal(result, c) for c in candidates) or any(
                torch.equal(result.flip(2), torch.roll(original, (dy, dx), (1, 2)) * _window(dy, dx))
                for dy in range(-2, 3)
                for dx in range(-2, 3)
            )


def test_compile_auto_uses_cuda_graphs_only_on_cuda_for_runs_long_enough_to_repay_it() -> None:
    from cnnablate.train import COMPILE_MIN_STEPS, resolve_compile

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_compile("auto", cuda, COMPILE_MIN_STEPS) == "reduce-overhead"
    assert resolve_compile("auto", cuda, COMPILE_MIN_STEPS - 1) == "off"
    assert resolve_compile("auto", cpu, 10 * COMPILE_MIN_STEPS) == "off"
    assert resolve_compile("default", cpu, 10) == "default"  # an explicit mode is obeyed
