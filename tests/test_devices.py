"""Device choice up to the GPU boundary: slot claiming, precision and memory format decisions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from cnnablate.devices import (
    LockDirError,
    choose_device,
    claim_gpu_slot,
    cpu_has_native_bf16,
    default_lock_dir,
    lock_dir,
    private_dir,
    resolve_channels_last,
    resolve_precision,
)


@pytest.fixture
def system_temp(monkeypatch, tmp_path):
    """A scratch 'system temp directory' with no lock-folder variables set."""
    monkeypatch.delenv("CNNABLATE_GPU_LOCK_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    return tmp_path


def test_lock_folder_is_created_private_per_user(system_temp) -> None:
    folder = lock_dir()
    assert folder == system_temp / f"cnnablate-gpu-locks-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert folder.stat().st_uid == os.getuid()
    assert lock_dir() == folder  # an existing private folder is reused


def test_a_second_user_gets_another_folder_and_cannot_use_the_first_users(system_temp, monkeypatch) -> None:
    first = lock_dir()
    monkeypatch.setattr(os, "getuid", lambda: first.stat().st_uid + 1)  # the same machine, another user
    assert default_lock_dir() == first.with_name(f"cnnablate-gpu-locks-{first.stat().st_uid + 1}")
    with pytest.raises(LockDirError, match=f"belongs to uid {first.stat().st_uid}, not to you"):
        private_dir(first)


def test_an_open_or_squatted_lock_folder_is_refused(system_temp, monkeypatch) -> None:
    folder = default_lock_dir()
    folder.mkdir(mode=0o700)
    folder.chmod(0o777)  # e.g. created first by someone else with an open mode
    with pytest.raises(LockDirError, match=r"mode 0777; it must be private \(0700\).*CNNABLATE_GPU_LOCK_DIR"):
        lock_dir()
    folder.chmod(0o700)
    link = system_temp / "link"
    link.symlink_to(folder)
    with pytest.raises(LockDirError, match="is not a folder"):
        private_dir(link)
    folder.chmod(0o777)
    with pytest.raises(LockDirError, match="mode 0777"):
        claim_gpu_slot(1, 1)  # a job never takes a slot in a folder others can write


def test_lock_folder_variables(system_temp, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(system_temp / "run"))
    assert default_lock_dir() == system_temp / "run" / "cnnablate-gpu-locks"
    monkeypatch.setenv("CNNABLATE_GPU_LOCK_DIR", str(system_temp / "mine"))
    assert lock_dir() == system_temp / "mine"
    assert stat.S_IMODE((system_temp / "mine").stat().st_mode) == 0o700


def test_jobs_spread_over_gpus_before_sharing(tmp_path) -> None:
    first, lock_a = claim_gpu_slot(2, 2, tmp_path)
    second, lock_b = claim_gpu_slot(2, 2, tmp_path)
    third, lock_c = claim_gpu_slot(2, 2, tmp_path)
    assert (first, second, third) == (0, 1, 0)
    for lock in (lock_a, lock_b, lock_c):
        lock.close()


def test_a_busy_gpu_blocks_until_released(tmp_path) -> None:
    gpu, lock = claim_gpu_slot(1, 1, tmp_path)
    with pytest.raises(TimeoutError):
        claim_gpu_slot(1, 1, tmp_path, poll_seconds=0.05, timeout_seconds=0.2)
    lock.close()
    assert claim_gpu_slot(1, 1, tmp_path, timeout_seconds=0.2)[0] == gpu


def test_slots_are_held_across_processes(tmp_path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from cnnablate.devices import claim_gpu_slot; "
                f"g, l = claim_gpu_slot(2, 1, Path({str(tmp_path)!r})); print(g, flush=True); time.sleep(30)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "0"
        assert claim_gpu_slot(2, 1, tmp_path, timeout_seconds=1)[0] == 1
    finally:
        holder.kill()
        holder.wait()
    assert claim_gpu_slot(1, 1, tmp_path, timeout_seconds=1)[0] == 0  # a killed holder frees its slot


def test_precision_and_memory_format_decisions() -> None:
    assert resolve_precision("auto", "cuda") is torch.bfloat16
    assert resolve_precision("auto", "cpu") is (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert resolve_precision("bf16", "cpu") is torch.bfloat16
    assert resolve_precision("fp32", "cuda") is None
    assert resolve_channels_last("auto", "cuda")
    assert not resolve_channels_last("auto", "cpu")
    assert resolve_channels_last("on", "cpu")
    assert not resolve_channels_last("off", "cuda")
    with pytest.raises(ValueError, match="allowed values: auto, fp32, bf16"):
        resolve_precision("fp8", "cuda")


def test_cpu_is_chosen_without_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    choice = choose_device("auto", "auto")
    assert choice.device.type == "cpu"
    assert choice.autocast_dtype is None
    assert not choice.channels_last


def test_cuda_path_claims_a_slot_and_picks_bf16(monkeypatch, tmp_path) -> None:
    """Everything up to the first CUDA call, with the CUDA runtime replaced by stand-ins."""
    monkeypatch.setenv("CNNABLATE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    selected = []
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    first = choose_device("auto", "auto", jobs_per_gpu=1)
    second = choose_device("auto", "auto", jobs_per_gpu=1)
    assert [str(d) for d in selected] == ["cuda:0", "cuda:1"]
    assert first.autocast_dtype is torch.bfloat16
    assert first.channels_last
    assert torch.backends.cudnn.benchmark
    assert (tmp_path / "gpu0-slot0.lock").exists()
    assert second.lock is not None


def test_under_slurm_no_lock_is_taken(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CNNABLATE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    choice = choose_device("auto", "auto")
    assert str(choice.device) == "cuda:0"
    assert choice.lock is None
    assert not list(tmp_path.iterdir())


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    """bf16 pays on a CPU only with hardware bf16 (emulated, it ran 4x slower than float32 here)."""
    emulated = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
    native = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
    amx = "flags\t\t: avx512f amx_tile amx_bf16\n"
    assert not cpu_has_native_bf16(emulated)
    assert cpu_has_native_bf16(native)
    assert cpu_has_native_bf16(amx)
    assert not cpu_has_native_bf16("")
