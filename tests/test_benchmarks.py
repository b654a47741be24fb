"""The benchmark scripts still run against the package they measure (a renamed function breaks them silently)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_CONFIG, workflow_env


def test_throughput_benchmark_runs_the_project_loop_its_ceiling_and_a_textbook_loop(tmp_path) -> None:
    output = tmp_path / "throughput.json"
    command = [sys.executable, str(ROOT / "benchmarks/throughput.py"), "--config", str(TINY_CONFIG)]
    command += ["--repeats", "1", "--workers", "0", "--skip-overhead", "--cpu", "--json", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(output.read_text())
    assert measured["images_per_epoch"] > 0
    assert set(measured["ratios"]) >= {"a/b", "a/c"}
    assert all(value > 0 for value in measured["images_per_second"].values())


def test_layer_benchmark_times_the_project_layers_against_the_ones_they_replace() -> None:
    command = [sys.executable, str(ROOT / "benchmarks/layers.py"), "--config", str(ROOT / "config/demo.yaml")]
    command += ["--repeats", "1", "--steps", "1", "--variants", "arch-local", "norm-group"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| (\S+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", result.stdout, flags=re.MULTILINE)
    assert [row[0] for row in rows] == ["arch-local", "norm-group"]
    assert all(float(value) > 0 for row in rows for value in row[1:])


@pytest.mark.e2e
def test_gpu_check_runs_its_phases_and_prints_the_numbers_in_its_reduced_cpu_mode(tmp_path) -> None:
    environment = {**workflow_env(tmp_path), "MODE": "cpu", "NO_WHEELS": "1", "PY": sys.executable}
    environment["OUT"] = str(tmp_path / "check")
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh")], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout.split("== summary", 1)[1]
    assert re.search(r"tests passed: \d+/\d+ \(pytest -m gpu; \d+ skipped\)", summary), summary
    assert re.search(r"throughput \(eager, cpu\): a/b \d\.\d{3}, a/c \d+\.\d{3}, .* rate \d+\.\d%", summary), summary
    assert re.search(r"study wall: \d+ s, 4 jobs", summary), summary  # data, train, shift, measure
    assert "GPU busy fraction: n/a (no job ran on a GPU)" in summary
    assert re.search(r"fixed cost per job \(median s\): train \d+\.\d\d \(imports \d+\.\d\d", summary), summary
    assert re.search(r"shift \d+\.\d\d \(imports and exit", summary)
    assert re.search(r"measure \d+\.\d\d", summary)
