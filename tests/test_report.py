"""The report: statistics recomputed from the raw files, every figure present, renders in headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cnnablate.report import pareto_front
from cnnablate.results import difference_interval, mean_interval
from conftest import snakemake

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_mean_interval_matches_a_hand_computation() -> None:
    mean, low, high = mean_interval([0.90, 0.92, 0.94])
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert mean == pytest.approx(0.92) and low == pytest.approx(0.92 - half) and high == pytest.approx(0.92 + half)
    assert math.isnan(mean_interval([0.5])[1])


def test_difference_interval_is_welch() -> None:
    a, b = [0.80, 0.82, 0.85, 0.81], [0.90, 0.91, 0.93]
    diff, low, high = difference_interval(a, b)
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(0.95)
    assert diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (low, high) == pytest.approx((interval.low, interval.high))


def test_pareto_front() -> None:
    cost = np.array([1.0, 2.0, 3.0, 4.0, 2.5])
    accuracy = np.array([0.5, 0.7, 0.6, 0.9, 0.8])
    assert pareto_front(cost, accuracy).tolist() == [0, 1, 4, 3]


@pytest.mark.e2e
def test_tables_agree_with_the_raw_metrics(tiny_study: Path) -> None:
    results = pd.read_csv(tiny_study / "results/tiny/results.csv")
    summary = pd.read_csv(tiny_study / "results/tiny/summary.csv").set_index("variant")
    raw = [json.loads(p.read_text()) for p in tiny_study.glob("results/tiny/runs/*/seed*/metrics.json")]
    assert len(results) == len(raw) == 6
    for variant in ("base", "pool-avg", "arch-fc"):
        accuracies = [m["test_acc"] for m in raw if m["variant"] == variant]
        mean = float(np.mean(accuracies))
        half = stats.t.ppf(0.975, len(accuracies) - 1) * np.std(accuracies, ddof=1) / math.sqrt(len(accuracies))
        assert summary.loc[variant, "test_acc_mean"] == pytest.approx(mean)
        assert summary.loc[variant, "test_acc_ci_low"] == pytest.approx(mean - half, nan_ok=True)
        assert summary.loc[variant, "test_acc_ci_high"] == pytest.approx(mean + half, nan_ok=True)
        params = {m["params"] for m in raw if m["variant"] == variant}
        assert summary.loc[variant, "params_mean"] == params.pop()
    base = [m["test_acc"] for m in raw if m["variant"] == "base"]
    avg = [m["test_acc"] for m in raw if m["variant"] == "pool-avg"]
    assert summary.loc["pool-avg", "diff_vs_base"] == pytest.approx(np.mean(avg) - np.mean(base))
    measures = json.loads((tiny_study / "results/tiny/runs/base/seed0/measures.json").read_text())
    row = results[(results["variant"] == "base") & (results["seed"] == 0)].iloc[0]
    assert row["macs"] == measures["macs"] and row["trf_size"] == measures["trf"]["size"][0]
    assert "shift_acc_2px" in results.columns


@pytest.mark.e2e
def test_every_figure_is_produced(tiny_study: Path) -> None:
    figures = tiny_study / "results/tiny/figures/report"
    expected = {
        "accuracy_fc_vs_conv",
        "accuracy_pooling",
        "curves_fc_vs_conv",
        "curves_pooling",
        "accuracy_vs_cost",
        "trf_vs_erf",
        "erf_maps",
        "fc_vs_conv",
        "erf_by_depth",
    }
    assert expected <= {p.stem for p in figures.glob("*.png")}
    interpret = tiny_study / "results/tiny/runs/base/seed0/interpret"
    assert {"filters.png", "feature_maps.png", "attributions.png"} <= {p.name for p in interpret.iterdir()}
    assert (tiny_study / "results/tiny/figures/shift_robustness.png").exists()


@pytest.mark.e2e
def test_html_report_renders_every_section_without_broken_images(tiny_study: Path, tmp_path: Path) -> None:
    page = tiny_study / "reports/tiny/index.html"
    text = page.read_text()
    for section in (
        "Findings",
        "Ablations",
        "Cost and receptive fields",
        "Analyses",
        "What the network learned",
        "Tables",
        "Reproduce",
    ):
        assert f">{section}</h2>" in text
    assert re.search(r"[+-]\d+\.\d points against pool max", text)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium package is needed for this test (.ci/run installs it)"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    assert images >= 12 and 'data-broken-images="0"' in body
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={screenshot}", "--window-size=1200,3000", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.stat().st_size > 50_000


@pytest.mark.e2e
def test_snakemake_report_archive(own_tiny_study: Path) -> None:
    archive = own_tiny_study / "reports/tiny/report.zip"
    snakemake(own_tiny_study, own_tiny_study / "config.yaml", "--report", str(archive))
    names = zipfile.ZipFile(archive).namelist()
    assert any(name.endswith("report.html") for name in names)
    assert any("shift_robustness.png" in name for name in names)
    assert any("summary.csv" in name for name in names)
