"""Shared fixtures: the repository root, the tiny config, and a runner for Snakemake in a scratch directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def snakemake(
    workdir: Path,
    configfile: Path,
    *args: str,
    check: bool = True,
    timeout: int = 900,
    snakefile: Path = ROOT / "Snakefile",
) -> subprocess.CompletedProcess:
    """Run the project's workflow with a scratch working directory (results/ and reports/ land there)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["CNNABLATE_GPU_LOCK_DIR"] = str(workdir / "locks")
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
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
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
