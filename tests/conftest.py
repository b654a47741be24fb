"""Shared fixtures: the tiny config, a Snakemake runner, the session's tiny study, layer recording, markers.

Markers: ``e2e`` (the test runs Snakemake; ``pytest -m "not e2e"`` is the fast subset), ``gpu`` (needs CUDA;
skipped, with the reason, where ``torch.cuda.is_available()`` is False), ``slurm`` (needs a SLURM cluster).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / ".test" / "config" / "config.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def tiny_config(**overrides) -> dict:
    """The tiny test config, with top-level keys replaced."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config.update(overrides)
    return config


def write_config(directory: Path, config: dict, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def workflow_env(workdir: Path) -> dict[str, str]:
    """The environment of a workflow run: local MLflow, its own GPU slot locks, and no GPU.

    Workflow tests compare runs bit for bit, which CUDA (cuDNN autotuning, TF32, bf16) does not promise; the
    CUDA path has its own tests in test_gpu.py.
    """
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["CNNABLATE_GPU_LOCK_DIR"] = str(workdir / "locks")
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def snakemake(
    workdir: Path,
    configfile: Path,
    *args: str,
    check: bool = True,
    timeout: int = 540,
    snakefile: Path = ROOT / "Snakefile",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the project's workflow with a scratch working directory (results/ and reports/ land there).

    The timeout stays under pytest-timeout's 600 s per test, so a hung run fails with Snakemake's output;
    ``env`` adds to the workflow's environment (e.g. PYTHONPATH for a package with a module of one's own).
    """
    if RUNNING_TEST and RUNNING_TEST.get_closest_marker("e2e") is None:
        raise AssertionError(f"{RUNNING_TEST.nodeid} runs Snakemake: mark it @pytest.mark.e2e")
    command = [
        SNAKEMAKE,
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        "--configfile",
        str(configfile),
        *args,
    ]
    environment = workflow_env(workdir) | (env or {})
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study run once to completion (report included); tests read its outputs."""
    directory = tmp_path_factory.mktemp("tiny_study")
    config = write_config(directory, tiny_config(seeds=[0, 1]))
    snakemake(directory, config, "--cores", "2")
    return directory


@pytest.fixture
def own_tiny_study(tiny_study: Path, tmp_path: Path) -> Path:
    """A copy of the tiny study (timestamps kept) for a test that runs Snakemake on it: the shared one stays as made."""
    directory = tmp_path / "tiny_study"
    shutil.copytree(tiny_study, directory, symlinks=True)
    return directory


RUNNING_TEST: pytest.Item | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember the test being set up (before its fixtures run), so snakemake() can check its e2e marker."""
    global RUNNING_TEST
    RUNNING_TEST = item


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark e2e every test that reads the tiny study (Snakemake makes it); skip the gpu-marked tests, saying why,
    where CUDA is absent."""
    for item in items:
        if "tiny_study" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: needs CUDA, and torch.cuda.is_available() is False on this host")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@dataclass
class LayerCall:
    """What one convolution or linear layer computed with."""

    layer: str
    device_type: str
    output_dtype: torch.dtype
    input_channels_last: bool
    weight_channels_last: bool


@contextmanager
def recording_layers() -> Iterator[list[LayerCall]]:
    """Record every Conv2d and Linear call in this process (a global forward hook, so models built inside work too)."""
    calls: list[LayerCall] = []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d | nn.Linear):
            four_d = inputs[0].dim() == 4
            calls.append(
                LayerCall(
                    type(module).__name__,
                    output.device.type,
                    output.dtype,
                    four_d and inputs[0].is_contiguous(memory_format=torch.channels_last),
                    four_d and module.weight.is_contiguous(memory_format=torch.channels_last),
                )
            )

    handle = nn.modules.module.register_module_forward_hook(record)
    try:
        yield calls
    finally:
        handle.remove()
