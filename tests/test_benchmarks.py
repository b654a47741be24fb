"""The benchmark scripts still run against the package they measure (a renamed function breaks them silently)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, TINY_CONFIG


def test_throughput_benchmark_runs_the_project_loop_its_ceiling_and_a_textbook_loop(tmp_path) -> None:
    output = tmp_path / "throughput.json"
    command = [sys.executable, str(ROOT / "benchmarks/throughput.py"), "--config", str(TINY_CONFIG)]
    command += ["--repeats", "1", "--workers", "0", "--skip-overhead", "--cpu", "--json", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(output.read_text())
    assert measured["images_per_epoch"] > 0 and set(measured["ratios"]) >= {"a/b", "a/c"}
    assert all(value > 0 for value in measured["images_per_second"].values())
