"""The training loop: augmentation ops, schedule, determinism, resume, divergence."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnablate.config import Study, validate_config
from cnnablate.data import make_synthetic
from cnnablate.loader import DeviceDataset, random_crop_flip
from cnnablate.train import TrainJob, lr_multiplier, train
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


def test_lr_schedule_warms_up_then_decays() -> None:
    values = [lr_multiplier(step, 100, 10, "linear") for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[-1] == pytest.approx(1 / 90)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))
    assert lr_multiplier(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(80, 100, 10, "constant") == 1.0


def make_job(tmp_path: Path, name: str, variant: str = "base", **recipe) -> TrainJob:
    """A tiny training job on the CPU wherever the suite runs: tests compare its results bit for bit."""
    config = validate_config(
        tiny_config(train={**tiny_config()["train"], **recipe}, ablations={"fc": {"arch": ["fc"]}})
    )
    dataset_path = tmp_path / "data.npz"
    if not dataset_path.exists():
        make_synthetic(192, 64, contrast=0.6, seed=0).save(dataset_path)
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
        force_cpu=True,
    )


def test_training_is_deterministic_and_writes_its_files(tmp_path) -> None:
    first = train(make_job(tmp_path, "a", epochs=2))
    second = train(make_job(tmp_path, "b", epochs=2))
    for key in ("test_acc", "test_loss", "train_loss", "params"):
        assert first[key] == second[key]
    run = tmp_path / "a" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {
        "variant",
        "seed",
        "test_acc",
        "params",
        "epochs_completed",
        "diverged",
        "train_seconds",
        "images_per_second",
        "device",
        "versions",
        "git_commit",
    } <= set(metrics)
    assert metrics["epochs_completed"] == 2 and metrics["diverged"] is False and 0 <= metrics["test_acc"] <= 1
    assert (run / "history.csv").read_text().count("\n") == 3
    state = torch.load(run / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path, caplog) -> None:
    full = train(make_job(tmp_path, "full", epochs=3))
    job = make_job(tmp_path, "resumed", epochs=3)
    _train_epochs_then_stop(job, 1)
    caplog.set_level("INFO")
    resumed = train(job)
    assert "resumed from checkpoint" in caplog.text and resumed["resumed_from_epoch"] == 1
    for key in ("test_acc", "test_loss", "train_loss"):
        assert resumed[key] == full[key]


def test_a_checkpoint_of_another_recipe_is_ignored(tmp_path, caplog) -> None:
    job = make_job(tmp_path, "changed", epochs=3)
    _train_epochs_then_stop(job, 1)
    changed = make_job(tmp_path, "changed", epochs=3, lr=0.01)
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
        make_job(tmp_path, "nan", variant="arch-fc", epochs=3, lr=1e6, warmup_epochs=0, label_smoothing=0.0)
    )
    assert metrics["diverged"] is True and metrics["test_acc"] is None
    assert metrics["epochs_completed"] < 3
    saved = json.loads((tmp_path / "nan" / "run" / "metrics.json").read_text())
    assert saved["diverged"] is True


def test_bf16_channels_last_path_runs_on_cpu(tmp_path) -> None:
    """Every convolution and linear layer computes in bf16, convolutions on channels_last inputs and weights."""
    with recording_layers() as calls:
        metrics = train(make_job(tmp_path, "bf16", epochs=1, precision="bf16", channels_last="on"))
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
