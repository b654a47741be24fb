"""The training loop: augmentation ops, schedule, early stopping, determinism, resume, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnablate.config import Study, validate_config
from cnnablate.data import ArrayDataset, make_synthetic, split_validation
from cnnablate.loader import DeviceDataset, random_crop_flip
from cnnablate.train import Plateau, Schedule, TrainJob, above_chance, cooldown_epochs, train
from conftest import recording_layers, tiny_config


def _crop_flip(images: torch.Tensor, padding: int, flip: bool, seed: int) -> torch.Tensor:
    """random_crop_flip on N x C x H x W images (it works on N x H x W x C pixels)."""
    pixels = images.permute(0, 2, 3, 1).contiguous()
    return random_crop_flip(pixels, padding, flip, torch.Generator().manual_seed(seed)).permute(0, 3, 1, 2)


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
    assert abs(float(everything.mean())) < 1e-3 and abs(float(everything.std()) - 1) < 0.05


def test_schedule_warms_up_holds_then_decays_to_zero_from_where_it_was_told() -> None:
    schedule = Schedule(warmup_steps=10)
    assert schedule.multiplier(0) == pytest.approx(0.1) and schedule.multiplier(9) == pytest.approx(1.0)
    assert schedule.multiplier(500) == 1.0 and not schedule.finished(10_000)
    schedule.start_decay(100, 20)
    assert schedule.multiplier(99) == 1.0 and schedule.multiplier(100) == 1.0
    assert schedule.multiplier(110) == pytest.approx(0.5) and schedule.multiplier(120) == 0.0
    assert not schedule.finished(119) and schedule.finished(120)


def test_plateau_counts_epochs_without_a_real_improvement_in_accuracy_or_loss() -> None:
    plateau = Plateau(min_delta=0.01)
    for accuracy, loss in ((0.5, 1.0), (0.6, 0.9), (0.605, 0.895), (0.6, 0.95), (0.62, 0.9)):
        plateau.update(accuracy, loss)
    assert plateau.best == 0.62 and plateau.best_loss == 0.895 and plateau.since == 0
    plateau.update(0.625, 0.89)  # neither moved by min_delta
    assert plateau.since == 1 and plateau.best == 0.625
    plateau.update(0.1, 0.87)  # a slow start: accuracy flat, loss still falling
    assert plateau.since == 0


def test_cooldown_is_a_fraction_of_the_run_within_the_cap() -> None:
    assert cooldown_epochs(10, 100, 0.2) == 2
    assert cooldown_epochs(11, 100, 0.2) == 3  # rounded up to whole epochs
    assert cooldown_epochs(95, 100, 0.2) == 5  # never past the cap
    assert cooldown_epochs(10, 100, 0.0) == 0


def test_above_chance_is_a_one_sided_binomial_test() -> None:
    # 10 classes, 200 images: P(X >= 31 | p = 0.1) < 0.01 < P(X >= 30 | p = 0.1)
    assert above_chance(31, 200, 0.1) and not above_chance(20, 200, 0.1)
    from scipy.stats import binom

    threshold = next(k for k in range(201) if binom.sf(k - 1, 200, 0.1) < 0.01)
    assert above_chance(threshold, 200, 0.1) and not above_chance(threshold - 1, 200, 0.1)


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
    assert metrics["epochs_completed"] == 2 and metrics["steps"] == 6 and metrics["stop_reason"] == "cap"
    assert metrics["diverged"] is False and 0 <= metrics["test_acc"] <= 1
    assert metrics["validation_images"] == 64 and metrics["train_images"] == 192
    assert metrics["lr"] == 0.05 and metrics["lr_source"] == "shared"
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_acc" in history[0] and "test" not in history[0]
    state = torch.load(run / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


def test_early_stopping_starts_the_cooldown_after_patience_epochs_without_improvement(tmp_path) -> None:
    # lr 1e-6 moves neither validation accuracy nor loss by min_delta: patience 2 ends the stable phase after
    # epoch 3 (the first epoch sets the best), then the cool-down lasts ceil(0.5 * 3) = 2 epochs: 5 epochs.
    metrics = train(make_job(tmp_path, "flat", lr=1e-6, max_steps=300, patience=2, cooldown=0.5, min_delta=0.5))
    assert metrics["stop_reason"] == "plateau" and metrics["epochs_completed"] == 5 and metrics["steps"] == 15
    lrs = [
        float(line.split(",")[6]) for line in (tmp_path / "flat" / "run" / "history.csv").read_text().splitlines()[1:]
    ]
    assert lrs[2] == pytest.approx(1e-6) and lrs[-1] < lrs[3] < lrs[2]


def _brightness_classes(path: Path) -> None:
    """A dataset any network learns in a few steps: the class is the image's brightness."""
    rng = np.random.default_rng(0)
    labels = np.arange(320) % 10
    images = (labels[:, None, None, None] * 25 + rng.integers(0, 5, (320, 8, 8, 3))).astype(np.uint8)
    split_validation(
        ArrayDataset(images[:256], labels[:256], images[256:], labels[256:], [str(i) for i in range(10)]), 64, 0
    ).save(path)


def test_a_run_that_does_not_learn_is_marked_not_trained(tmp_path) -> None:
    _brightness_classes(tmp_path / "data.npz")
    still = train(make_job(tmp_path, "still", lr=1e-9, max_steps=6, label_smoothing=0.0))
    assert still["trained"] is False and still["chance"] == 0.1
    learned = train(make_job(tmp_path, "learns", lr=0.2, max_steps=60, patience=20))
    assert learned["trained"] is True and learned["val_acc"] > 0.3


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path, caplog) -> None:
    recipe = {"max_steps": 300, "patience": 1, "cooldown": 0.5, "min_delta": 0.2}
    full = train(make_job(tmp_path, "full", **recipe))
    job = make_job(tmp_path, "resumed", **recipe)
    _train_epochs_then_stop(job, 2)  # after the plateau decision: the schedule's decay state is resumed too
    caplog.set_level("INFO")
    resumed = train(job)
    assert "resumed from checkpoint" in caplog.text and resumed["resumed_from_epoch"] == 2
    assert full["stop_reason"] == "plateau" and full["epochs_completed"] > 2
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
    assert changed.fingerprint() != job.fingerprint()
    caplog.set_level("INFO")
    metrics = train(changed)
    assert "ignoring checkpoint" in caplog.text and metrics["resumed_from_epoch"] is None


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
    assert metrics["diverged"] is True and metrics["test_acc"] is None and metrics["trained"] is False
    assert metrics["epochs_completed"] < 3 and metrics["stop_reason"] == "diverged"
    saved = json.loads((tmp_path / "nan" / "run" / "metrics.json").read_text())
    assert saved["diverged"] is True


def test_bf16_channels_last_path_runs_on_cpu(tmp_path) -> None:
    """Every convolution and linear layer computes in bf16, convolutions on channels_last inputs and weights."""
    with recording_layers() as calls:
        metrics = train(make_job(tmp_path, "bf16", max_steps=3, precision="bf16", channels_last="on"))
    assert metrics["precision"] == "torch.bfloat16" and metrics["channels_last"] is True
    assert np.isfinite(metrics["train_loss"])
    convolutions = [call for call in calls if call.layer == "Conv2d"]
    assert convolutions and any(call.layer == "Linear" for call in calls)
    assert {call.output_dtype for call in calls} == {torch.bfloat16}
    assert all(call.input_channels_last and call.weight_channels_last for call in convolutions)


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
