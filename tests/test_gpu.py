"""The accelerated path, run for real: bf16 activations, channels_last weights, the foreach SGD step,
torch.compile, reproducibility.

Every test runs twice: on the CPU in the normal suite (bf16 autocast and channels_last asked for explicitly), so
that CI, which has no GPU, still catches drift in these code paths; and on CUDA under the ``gpu`` marker (skipped,
with the reason, where CUDA is absent; see conftest.py). On the CPU, runs with the same seed are bit-exact. On
CUDA, cuDNN autotuning, TF32 and bf16 make training reproducible only to a tolerance, stated here: two runs with
the same seed end with every weight tensor within 1% of the other run's (relative L2 distance; the filters of
runs with different seeds are 130-150% apart) and with losses within 2%. The CUDA random streams themselves are
bit-exact.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import pytest
import torch

from cnnablate.config import Study, validate_config
from cnnablate.data import make_synthetic, split_validation
from cnnablate.devices import LOCK_DIR_ENV, choose_device
from cnnablate.loader import DeviceDataset
from cnnablate.train import TrainJob, epoch_generator, prepare_fit, train, train_step
from conftest import recording_layers, tiny_config
from test_train import make_job

WEIGHT_TOLERANCE = 0.01  # relative L2 distance between the weights of two CUDA runs with the same seed
LOSS_TOLERANCE = 0.02  # relative difference between their losses


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def restore_backend_flags() -> Iterator[None]:
    """choose_device turns on cuDNN autotuning and TF32 for the process; put them back for the tests after."""
    flags = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    yield
    (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ) = flags


def accelerated_job(job: TrainJob, device: str) -> TrainJob:
    """The job as the accelerated path runs it: CUDA's defaults there (bf16, channels_last); asked for on CPU."""
    if device == "cpu":
        return dataclasses.replace(job, recipe={**job.recipe, "precision": "bf16", "channels_last": "on"})
    return dataclasses.replace(job, force_cpu=False)


def train_on(device: str, job: TrainJob, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Train ``job`` on ``device`` with its own slot-lock folder (never waiting for a study running on this host)."""
    monkeypatch.setenv(LOCK_DIR_ENV, str(job.run_dir.parent / "gpu-locks"))
    return train(accelerated_job(job, device))


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm().clamp_min(1e-12))


def assert_same_run(first: dict, second: dict, states: list[dict[str, torch.Tensor]], device: str) -> None:
    """Bit-exact on the CPU; within the stated tolerance on CUDA."""
    for name, tensor in states[0].items():
        if tensor.is_floating_point() and device == "cuda":
            assert relative_distance(tensor, states[1][name]) < WEIGHT_TOLERANCE, name
        else:
            assert torch.equal(tensor, states[1][name]), name
    for key in ("train_loss", "test_loss"):
        tolerance = LOSS_TOLERANCE if device == "cuda" else 0.0
        assert second[key] == pytest.approx(first[key], rel=tolerance, abs=0.0), key


def test_training_computes_in_bf16_on_channels_last_weights(tmp_path, monkeypatch, device) -> None:
    with recording_layers() as calls:
        metrics = train_on(device, make_job(tmp_path, "auto", max_steps=3), monkeypatch)
    assert metrics["device"].startswith(device)
    assert metrics["precision"] == "torch.bfloat16"
    assert metrics["channels_last"] is True
    convolutions = [call for call in calls if call.layer == "Conv2d"]
    assert convolutions, "no Conv2d call was recorded"
    assert any(call.layer == "Linear" for call in calls)
    assert {call.device_type for call in calls} == {device}
    assert {call.output_dtype for call in calls} == {torch.bfloat16}
    assert all(call.input_channels_last and call.weight_channels_last for call in convolutions), convolutions


def test_the_optimizer_step_runs_foreach_kernels_and_no_torch_optim(tmp_path, monkeypatch, device) -> None:
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "gpu-locks"))
    choice = choose_device("bf16", "on", force_cpu=device == "cpu")
    config = validate_config(tiny_config())
    arrays = split_validation(make_synthetic(128, 16, contrast=0.6, seed=0), 32, seed=0)
    spec = Study.from_config(config).variants["base"].spec
    fit = prepare_fit(spec, arrays, 0, {**config["train"], "compile": "off"}, 0.05, choice)
    images, labels = next(fit.train_data.train_batches(64, epoch_generator(0, 1, choice.device), 4, True))
    before = [p.detach().clone() for p in fit.model.parameters()]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        train_step(fit, fit.new_progress().schedule, 0, images, labels)
        if device == "cuda":
            torch.cuda.synchronize()
    ops = {event.name for event in profile.events()}
    assert "aten::_foreach_add_" in ops, sorted(ops)
    assert "aten::_foreach_mul_" in ops, sorted(ops)
    assert not any("sgd" in op.lower() for op in ops), "the step must not go through torch.optim"
    assert all(not torch.equal(a, p) for a, p in zip(before, fit.model.parameters(), strict=True) if p.ndim >= 2)


def test_random_streams_are_bit_exact(device) -> None:
    arrays = make_synthetic(256, 16, seed=0)
    torch_device = torch.device(device)
    data = DeviceDataset(arrays.x_train, arrays.y_train, torch_device, channels_last=True)
    first = list(data.train_batches(64, epoch_generator(3, 2, torch_device), 4, True))
    again = list(data.train_batches(64, epoch_generator(3, 2, torch_device), 4, True))
    other_epoch = list(data.train_batches(64, epoch_generator(3, 3, torch_device), 4, True))
    assert len(first) == 4
    for (a, y), (b, z) in zip(first, again, strict=True):
        assert torch.equal(a, b), "same seed and epoch: same images"
        assert torch.equal(y, z), "same seed and epoch: same labels"
    assert not torch.equal(first[0][1], other_epoch[0][1])


def test_two_runs_with_the_same_seed_agree(tmp_path, monkeypatch, device) -> None:
    first = train_on(device, make_job(tmp_path, "first", max_steps=6), monkeypatch)
    second = train_on(device, make_job(tmp_path, "second", max_steps=6), monkeypatch)
    states = [torch.load(tmp_path / name / "run" / "model.pt", weights_only=True) for name in ("first", "second")]
    assert_same_run(first, second, states, device)
    assert abs(first["test_acc"] - second["test_acc"]) <= 3 / first["test_images"]


def test_the_compiled_training_step_trains_like_the_eager_one(tmp_path, monkeypatch, device) -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    if device == "cpu":  # graph capture and the compiled wrapper, without minutes of C++ code generation
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    compiled = train_on(device, make_job(tmp_path, "compiled", max_steps=3, compile="default"), monkeypatch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    eager = train_on(device, make_job(tmp_path, "eager", max_steps=3), monkeypatch)
    assert compiled["epochs_completed"] == 1
    assert compiled["diverged"] is False
    for key in ("train_loss", "test_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=LOSS_TOLERANCE), key
    states = [torch.load(tmp_path / name / "run" / "model.pt", weights_only=True) for name in ("compiled", "eager")]
    assert states[0].keys() == states[1].keys()  # the compiled wrapper's "_orig_mod." prefix never reaches model.pt
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            assert relative_distance(tensor, states[1][name]) < WEIGHT_TOLERANCE, name


def test_a_different_seed_is_far_outside_the_tolerance(tmp_path, monkeypatch, device) -> None:
    """The tolerance above is tight enough to tell two seeds apart."""
    job = make_job(tmp_path, "seed0", max_steps=3)
    train_on(device, job, monkeypatch)
    other = dataclasses.replace(make_job(tmp_path, "seed1", max_steps=3), seed=1)
    train_on(device, other, monkeypatch)
    a = torch.load(job.run_dir / "model.pt", weights_only=True)
    b = torch.load(other.run_dir / "model.pt", weights_only=True)
    distances = [relative_distance(t, b[k]) for k, t in a.items() if t.is_floating_point() and t.ndim >= 2]
    assert min(distances) > 10 * WEIGHT_TOLERANCE
