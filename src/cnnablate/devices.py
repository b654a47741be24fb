"""Device choice for a training job: one GPU slot per job, and the precision and memory format to use.

Snakemake never assigns GPUs to local jobs, so each job claims a slot itself: an exclusive ``flock`` on
one lock file per (GPU, slot), taken before CUDA initialises and held until the process exits. The lock files
live in a private folder of the user (mode 0700, see ``lock_dir``), so another user can neither block nor
squat them; each user's jobs share GPUs only among themselves. Under SLURM
(``SLURM_JOB_ID`` set) the scheduler already gave the job its GPU, and no lock is taken: every job there
sees its GPU as device 0, so locks named by index would make jobs on one node wait for each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "CNNABLATE_GPU_LOCK_DIR"


@dataclass
class DeviceChoice:
    """Where and how a job computes."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    lock: IO[str] | None = None  # kept open: closing it releases the slot

    @property
    def description(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return "cpu"


class LockDirError(PermissionError):
    """The GPU lock folder is not private to this user; the message says which folder and what to do."""


def default_lock_dir() -> Path:
    """``$CNNABLATE_GPU_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/cnnablate-gpu-locks`` (a per-user folder the login
    session owns), else ``<system temp>/cnnablate-gpu-locks-<uid>``."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "cnnablate-gpu-locks"
    return Path(tempfile.gettempdir()) / f"cnnablate-gpu-locks-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700, or check that the existing folder is a real folder owned by this user with
    no access for others: a folder someone else created first (or opened up) is refused, never used."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder (or is a symbolic link)"
    elif info.st_uid != os.getuid():
        problem = f"belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
    elif stat.S_IMODE(info.st_mode) & 0o077:
        problem = f"has mode {stat.S_IMODE(info.st_mode):04o}; it must be private (0700)"
    if problem:
        raise LockDirError(
            f"GPU lock folder {path} {problem}. Remove it if it is yours, or set {LOCK_DIR_ENV} to a private "
            "folder of your own."
        )
    return path


def lock_dir() -> Path:
    """This user's private folder for the GPU slot locks (created 0700 when missing)."""
    return private_dir(default_lock_dir())


def claim_gpu_slot(
    num_gpus: int,
    jobs_per_gpu: int,
    directory: Path | None = None,
    poll_seconds: float = 2.0,
    timeout_seconds: float | None = None,
) -> tuple[int, IO[str]]:
    """Block until a (GPU, slot) lock is free; return the GPU index and the open lock file.

    Slots are tried GPU-major within each slot round (slot 0 of every GPU before slot 1 of any), so jobs
    spread over GPUs before they share one.
    """
    directory = directory or lock_dir()
    started = time.monotonic()
    waited = False
    while True:
        for slot in range(jobs_per_gpu):
            for gpu in range(num_gpus):
                handle = open(directory / f"gpu{gpu}-slot{slot}.lock", "a+")  # noqa: SIM115 (held open)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
                return gpu, handle
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            raise TimeoutError(f"no free GPU slot among {num_gpus} GPU(s) x {jobs_per_gpu} in {directory}")
        if not waited:
            log.info("all %d GPU slot(s) busy; waiting for one", num_gpus * jobs_per_gpu)
            waited = True
        time.sleep(poll_seconds)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags).

    Without those instructions oneDNN emulates bf16 and it is slower than float32: on an AVX-512 Xeon without
    them a 1024x1024 matrix product ran at 33 GFLOP/s in bf16 against 127 in float32, and the demo's base step
    took 53 ms in bf16 against 33 ms in float32 (docs/performance.md); with them, bf16 doubled the throughput.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype. 'auto': bf16 on CUDA, and on a CPU that computes bf16 in hardware; float32 elsewhere."""
    native = device_type == "cuda" or (device_type == "cpu" and cpu_has_native_bf16())
    if precision == "bf16" or (precision == "auto" and native):
        return torch.bfloat16
    if precision in ("auto", "fp32"):
        return None
    raise ValueError(f"train.precision: unknown value {precision!r}; allowed values: auto, fp32, bf16")


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on the device's type, or a disabled context for float32 (``dtype`` None)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def resolve_channels_last(setting: str, device_type: str) -> bool:
    """channels_last helps cuDNN's tensor-core kernels; on CPU it is opt-in."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"train.channels_last: unknown value {setting!r}; allowed values: auto, on, off")
    return setting == "on" or (setting == "auto" and device_type == "cuda")


def choose_device(
    precision: str = "auto", channels_last: str = "auto", jobs_per_gpu: int = 1, force_cpu: bool = False
) -> DeviceChoice:
    """Claim a GPU slot if CUDA is available (else the CPU) and decide precision and memory format."""
    if force_cpu or not torch.cuda.is_available():
        device, lock = torch.device("cpu"), None
    else:
        if os.environ.get("SLURM_JOB_ID"):  # the scheduler already gave this job its own GPU(s)
            gpu, lock = 0, None
        else:
            gpu, lock = claim_gpu_slot(torch.cuda.device_count(), jobs_per_gpu)
        device = torch.device("cuda", gpu)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return DeviceChoice(
        device,
        resolve_precision(precision, device.type),
        resolve_channels_last(channels_last, device.type),
        lock,
    )
