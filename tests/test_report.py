"""The report: verdicts and captions computed from the numbers, statistics recomputed from the raw files, every
figure present, one template, renders in headless Chromium."""

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

from cnnablate import intervals
from cnnablate.figures import pareto_front
from cnnablate.report import (
    block_verdict,
    depth_trend,
    erf_depth_table,
    lead_interval,
    method_notes,
    retry_sentences,
    run_state,
    table_rows,
)
from cnnablate.results import collect_results, per_image_correctness, read_tuning, summarize
from conftest import snakemake
from study_fixture import FixtureStudy, write_study

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


def test_pareto_front() -> None:
    cost = np.array([1.0, 2.0, 3.0, 4.0, 2.5])
    accuracy = np.array([0.5, 0.7, 0.6, 0.9, 0.8])
    assert pareto_front(cost, accuracy).tolist() == [0, 1, 4, 3]


def _correct(fixture: FixtureStudy, results: pd.DataFrame) -> dict:
    runs = [Path(p).parent for p in fixture.metrics]
    return per_image_correctness(results, runs, np.load(fixture.test_labels)["y_test"])


def _tables(fixture: FixtureStudy) -> tuple[pd.DataFrame, pd.DataFrame]:
    results = collect_results(fixture.study, fixture.metrics, ["measures", "shift"])
    return results, summarize(results, read_tuning(fixture.tuning), _correct(fixture, results))


@pytest.fixture(scope="module")
def fixture_study(tmp_path_factory: pytest.TempPathFactory) -> FixtureStudy:
    return write_study(tmp_path_factory.mktemp("fixture"))


def test_verdicts_follow_the_holm_corrected_paired_differences(fixture_study: FixtureStudy) -> None:
    results, summary = _tables(fixture_study)
    correct = _correct(fixture_study, results)
    stats_ = summary.set_index("variant")
    for block in fixture_study.study.config["ablations"]:
        members = fixture_study.study.ablation_variants(block)
        text = " ".join(block_verdict(members, summary, results, correct))
        trained = [v for v in members if stats_.loc[v, "trained"]]
        leader, runner_up = stats_.loc[trained, "test_acc_mean"].sort_values(ascending=False).index[:2]
        lead = lead_interval(results, leader, runner_up, correct)
        named = f"{leader} at {stats_.loc[leader, 'test_acc_mean'] * 100:.1f}% leads {runner_up}"
        assert text.startswith(("Best: " if lead.low > 0 else "No best named: ") + named), text
        for variant in trained:
            if variant == "base":
                continue
            row = stats_.loc[variant]
            if row["paired_p_holm"] < 0.05 and row["paired_diff"] > 0:
                assert re.search(rf"[Bb]etter than base: [^;]*{re.escape(variant)} \(\+", text), (variant, text)
            elif row["paired_p_holm"] < 0.05:
                assert re.search(rf"[Ww]orse than base: [^;]*{re.escape(variant)} \(−", text), (variant, text)
            else:
                detectable = f"detectable from ±{row['paired_detectable'] * 100:.1f}"
                assert re.search(rf"[Nn]o detectable difference with 3 seeds: [^;]*{re.escape(variant)} \(", text)
                assert detectable in text
        assert "Resolution: with 3 seeds and 500 test images, this block detects differences" in text
    normalization = " ".join(block_verdict(fixture_study.study.ablation_variants("normalization"), summary, results))
    assert "did not train: norm-none" in normalization
    assert "norm-none (" not in normalization  # never a number
    pooling = " ".join(block_verdict(fixture_study.study.ablation_variants("pooling"), summary, results))
    assert "did not train in 1 of 3 seeds, 1 diverged: pool-none" in pooling  # one of its seeds diverged


def test_table_shows_intervals_holm_and_resolution_and_blanks_differences_of_untrained(
    fixture_study: FixtureStudy,
) -> None:
    results, summary = _tables(fixture_study)
    rows = {
        r["variant"]: r for r in table_rows(fixture_study.study.ablation_variants("normalization"), summary, results)
    }
    layer = summary.set_index("variant").loc["norm-layer"]
    assert rows["norm-layer"]["paired"].startswith(f"{layer['paired_diff'] * 100:+.1f}".replace("-", "−"))
    low, high = layer["test_acc_ci_low"] * 100, layer["test_acc_ci_high"] * 100
    assert rows["norm-layer"]["accuracy"] == f"{layer['test_acc_mean'] * 100:.1f} [{low:.1f}, {high:.1f}]"
    assert rows["norm-layer"]["detectable"] == f"±{layer['paired_detectable'] * 100:.1f}"
    assert rows["norm-layer"]["holm"] in ("< 0.001", f"{layer['paired_p_holm']:.3f}")
    assert rows["norm-layer"]["seeds"].count(",") == 2
    assert rows["norm-layer"]["lr"] == "0.1"
    assert rows["norm-none"]["paired"] == rows["norm-none"]["holm"] == rows["norm-none"]["accuracy"] == "–"
    assert rows["norm-none"]["state"] == "did not train"
    assert rows["norm-none"]["dead"]
    assert rows["base"]["state"] == "converged"
    assert not rows["base"]["dead"]
    assert rows["base"]["steps"] == "256"
    assert re.fullmatch(r"\d+", rows["base"]["speed"])
    assert re.fullmatch(r"\d+; [\d.]+x \[[\d.]+, [\d.]+\]", rows["norm-layer"]["speed"])
    assert rows["norm-none"]["speed"] == "not reached"


def test_fewer_seeds_state_a_coarser_resolution(tmp_path: Path) -> None:
    _, two = _tables(write_study(tmp_path / "two", seeds=(0, 1)))
    _, three = _tables(write_study(tmp_path / "three"))
    for variant in ("pool-avg", "norm-layer", "kernel_size-5"):
        assert (
            two.set_index("variant").loc[variant, "paired_detectable"]
            > three.set_index("variant").loc[variant, "paired_detectable"]
        )


def _tables_and_tuning(fixture: FixtureStudy) -> tuple[pd.DataFrame, dict]:
    return _tables(fixture)[0], read_tuning(fixture.tuning)


def test_depth_caption_says_what_the_numbers_show(fixture_study: FixtureStudy) -> None:
    results, _ = _tables(fixture_study)
    runs = [Path(p).parent for p in fixture_study.metrics]
    caption = depth_trend(erf_depth_table(results, runs))
    spatial = len([v for v in fixture_study.study.variants.values() if v.spec["arch"] != "fc"])
    # the fixture's kernel_size-7 grows its ERF/TRF ratio with depth, every other variant shrinks it
    assert caption.startswith(f"After training, ERF/TRF falls from the first to the last block in {spatial - 1} of")
    assert "rises in kernel_size-7" in caption


def test_page_opens_with_the_summary_and_states_its_provenance(tmp_path: Path) -> None:
    fixture = write_study(tmp_path)
    outcome = fixture.build_report(tmp_path)
    page = (tmp_path / "index.html").read_text()
    headings = re.findall(r"<h2>([^<]+)</h2>", page)
    assert headings[0] == "Summary"
    assert page.index('id="summary-table"') < page.index('id="ablations"')
    assert " ".join(outcome["verdicts"]["normalization"]).replace("'", "&#39;") in page
    assert "Δ vs base, points" in page and "Holm" in page and "detectable" in page
    assert "Δ vs base, Welch" not in page and "Wilson" not in page  # one interval engine
    assert "0123abc" in page
    assert re.search(r"config hash[^<]*</td><td>[0-9a-f]{12}<", page)
    assert re.search(r"report written</td><td>\d{4}-\d\d-\d\d", page)
    assert "chosen rate starred" in page
    assert "did not train" in page


def test_tables_agree_with_the_raw_metrics(tiny_study: Path) -> None:
    results = pd.read_csv(tiny_study / "results/tiny/results.csv")
    summary = pd.read_csv(tiny_study / "results/tiny/summary.csv").set_index("variant")
    raw = [json.loads(p.read_text()) for p in tiny_study.glob("results/tiny/runs/*/seed*/metrics.json")]
    assert len(results) == len(raw) == 6
    labels = np.load(tiny_study / "results/tiny/data/dataset.npz")["y_test"]
    for variant in ("base", "pool-avg", "arch-fc"):
        accuracies = [m["test_acc"] for m in raw if m["variant"] == variant]
        runs = sorted(tiny_study.glob(f"results/tiny/runs/{variant}/seed*"))
        correct = np.stack([np.load(run / "test_predictions.npy") == labels for run in runs])
        expected = intervals.accuracy(correct)  # the engine, from the runs' own predictions
        assert summary.loc[variant, "test_acc_mean"] == pytest.approx(np.mean(accuracies)) == expected.value
        assert summary.loc[variant, "test_acc_ci_low"] == pytest.approx(expected.low)
        assert summary.loc[variant, "test_acc_ci_high"] == pytest.approx(expected.high)
        assert summary.loc[variant, "per_image"]
        params = {m["params"] for m in raw if m["variant"] == variant}
        assert summary.loc[variant, "params_mean"] == params.pop()
    measures = json.loads((tiny_study / "results/tiny/runs/base/seed0/measures.json").read_text())
    row = results[(results["variant"] == "base") & (results["seed"] == 0)].iloc[0]
    assert row["macs"] == measures["macs"]
    assert row["trf_size"] == measures["trf"]["size"][0]
    assert "shift_acc_2px" in results.columns


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


def test_html_report_renders_every_section_without_broken_images(tiny_study: Path, tmp_path: Path) -> None:
    page = tiny_study / "reports/tiny/index.html"
    text = page.read_text()
    for section in (
        "Summary",
        "Ablations",
        "Cost and receptive fields",
        "Analyses",
        "What the network learned",
        "Tables",
        "Reproduce",
    ):
        assert f">{section}</h2>" in text
    for title in (  # the analyses' sections, titled as their rule files declare them (cnnablate.sections)
        "Cost and receptive fields of every variant",
        "Robustness to translated test images",
        "Receptive-field laws",
    ):
        assert f"<h3>{title}</h3>" in text
    assert "accuracy, shift 2 px (%)" in text and "shift_acc" not in text.split('id="tables"')[0]
    # two epochs on 256 images stay at chance: the verdict says so instead of ranking anything
    assert "<p>Base did not train, so nothing is compared with it; did not train: pool-avg.</p>" in text, text
    assert "Best:" not in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium package is needed for this test (.ci/run installs it)"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    assert images >= 12
    assert 'data-broken-images="0"' in body
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={screenshot}", "--window-size=1200,3000", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.stat().st_size > 50_000


@pytest.mark.e2e
def test_snakemake_report_archive_holds_every_figure(tiny_study: Path, tmp_path: Path) -> None:
    archive = tmp_path / "report.zip"
    snakemake(tiny_study, tiny_study / "config.yaml", "--report", str(archive))
    names = zipfile.ZipFile(archive).namelist()
    pictures = sorted((tiny_study / "results/tiny/figures").rglob("*.png"))
    assert len(pictures) >= 10
    for picture in pictures:
        assert any(name.endswith("/" + picture.name) for name in names), f"{picture.name} not in {names}"
    assert any(name.endswith("report.html") for name in names)
    assert any("summary.csv" in name for name in names)
    assert any(name.endswith("index.html") for name in names)
    # the analyses' captions reach Snakemake's report from their sections' declarations, not from .rst copies
    contents = "".join(zipfile.ZipFile(archive).read(name).decode(errors="ignore") for name in names if ".htm" in name)
    assert "when every test image is translated" in contents


def _rewrite_runs(fixture: FixtureStudy, variant: str, change) -> None:  # type: ignore[no-untyped-def]
    """Give every run of ``variant`` the fields ``change(seed, metrics)`` returns (the new metrics.json contract)."""
    for path in map(Path, fixture.metrics):
        metrics = json.loads(path.read_text())
        if metrics["variant"] == variant:
            path.write_text(json.dumps({**metrics, **change(metrics["seed"], metrics)}))


def _converged(train_acc: float):  # type: ignore[no-untyped-def]
    return lambda seed, m: {"outcome": "converged", "converged": True, "train_acc": train_acc, "trained": True}


@pytest.fixture
def outcome_study(tmp_path: Path) -> tuple[FixtureStudy, pd.DataFrame, pd.DataFrame]:
    """The fixture with outcomes: base and arch-local converge; arch-fc fits its training set as well as base does
    but tests lower; pool-avg hits the step cap in 2 of 3 seeds; kernel_size-5 was retried in seed 1."""
    fixture = write_study(tmp_path)
    for variant in fixture.study.variants:
        _rewrite_runs(fixture, variant, _converged(0.95))
    _rewrite_runs(fixture, "base", _converged(0.99))
    _rewrite_runs(fixture, "arch-fc", _converged(0.995))
    _rewrite_runs(fixture, "arch-local", _converged(0.70))
    _rewrite_runs(
        fixture,
        "pool-avg",
        lambda seed, m: {"outcome": "converged" if seed == 0 else "not_converged", "stop_reason": "cap"},
    )
    _rewrite_runs(fixture, "norm-none", lambda seed, m: {"outcome": "did_not_train", "trained": False})

    def retried(seed: int, metrics: dict) -> dict:
        if seed != 1:
            return {"tuning_val_acc": 0.82, "retried": False, "attempts": [{"lr": metrics["lr"], "val_acc": 0.81}]}
        attempts = [
            {"lr": 0.3, "val_acc": 0.74, "tuning_val_acc": 0.82, "outcome": "converged"},
            {"lr": 0.1, "val_acc": 0.815, "tuning_val_acc": 0.79},  # the kept attempt's tuning run differs
        ]
        return {"tuning_val_acc": 0.79, "retried": True, "attempts": attempts, "lr": 0.1}

    _rewrite_runs(fixture, "kernel_size-5", retried)
    return fixture, *_tables(fixture)


def test_verdicts_name_outcomes_and_a_generalisation_gap(outcome_study) -> None:  # type: ignore[no-untyped-def]
    fixture, results, summary = outcome_study
    stats_ = summary.set_index("variant")
    fc_vs_conv = " ".join(block_verdict(fixture.study.ablation_variants("fc_vs_conv"), summary, results))
    fc, base = stats_.loc["arch-fc"], stats_.loc["base"]
    assert fc["paired_ci_high"] < 0
    assert fc["train_acc_mean"] >= base["train_acc_mean"] - 0.01
    gap = f"{fc['paired_diff'] * 100:+.1f}".replace("-", "−")
    assert f"arch-fc trained (training accuracy 99.5% against base's 99.0%) but generalises worse: {gap}" in fc_vs_conv
    assert re.search(r"[Ww]orse than base: arch-local \(−", fc_vs_conv)  # it did not fit its training set either
    pooling = " ".join(block_verdict(fixture.study.ablation_variants("pooling"), summary, results))
    assert "pool-avg (not converged within the budget: 2 of 3 runs at the cap)" in pooling
    rows = {r["variant"]: r for r in table_rows(fixture.study.ablation_variants("pooling"), summary, results)}
    assert rows["pool-avg"]["state"] == "not converged within the budget: 2 of 3 runs at the cap"
    assert rows["base"]["state"] == "converged"
    assert run_state(stats_.loc["norm-none"]) == "did not train"
    normalization = " ".join(block_verdict(fixture.study.ablation_variants("normalization"), summary, results))
    assert "did not train: norm-none" in normalization
    assert "norm-none (" not in normalization
    notes = " ".join(method_notes(results, read_tuning(fixture.tuning)))
    assert "32.5% on 10 classes" in notes
    assert "Generalises worse" in notes


def test_retries_and_tuning_against_final_are_reported(outcome_study) -> None:  # type: ignore[no-untyped-def]
    fixture, results, summary = outcome_study
    members = fixture.study.ablation_variants("kernel_size")
    (sentence,) = retry_sentences(members, results)
    assert sentence.startswith(
        "kernel_size-5, seed 1: retried at lr 0.1 after the run at lr 0.3 ended 8.0 points below its tuning run"
    )
    assert "(74.0% against 82.0% validation accuracy)" in sentence  # the first attempt's own tuning run
    rows = {r["variant"]: r for r in table_rows(members, summary, results)}
    row = summary.set_index("variant").loc["kernel_size-5"]
    assert (
        rows["kernel_size-5"]["tuning"] == f"{row['tuning_val_acc_mean'] * 100:.1f} → {row['val_acc_mean'] * 100:.1f}"
    )
    assert rows["kernel_size-5"]["lr"].endswith("(1 retried)")
    assert rows["base"]["tuning"].endswith(f"→ {summary.set_index('variant').loc['base', 'val_acc_mean'] * 100:.1f}")


def _runs(accuracies: dict[str, list[float]], **fields: object) -> pd.DataFrame:
    """A results table by hand: one row per (variant, seed) with the given test accuracies."""
    from cnnablate.config import model_axes

    rows = [
        {
            "variant": v,
            "seed": seed,
            "test_acc": a,
            "ablations": "block",
            "diverged": False,
            "trained": True,
            "outcome": "converged",
            "retried": False,
            "test_images": 1000,
        }
        | dict.fromkeys(model_axes())
        | fields
        for v, values in accuracies.items()
        for seed, a in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_a_tie_at_the_ceiling_is_named_and_best_needs_an_interval() -> None:
    ceiling = _runs({"base": [1.0], "norm-group": [1.0], "norm-instance": [1.0], "norm-nf": [1.0], "x": [0.9]})
    text = " ".join(block_verdict(list(dict.fromkeys(ceiling["variant"])), summarize(ceiling), ceiling))
    assert text.startswith("base, norm-group, norm-instance, norm-nf all at 100.0%: this dataset cannot separate them")
    assert "Best" not in text
    clear = _runs({"base": [0.90, 0.91, 0.92], "a": [0.80, 0.815, 0.82]})
    assert block_verdict(["base", "a"], summarize(clear), clear)[0].startswith("Best: base at 91.0% leads a (81.2%)")
    close = _runs({"base": [0.90, 0.93, 0.91], "a": [0.91, 0.91, 0.915]})
    sentence = block_verdict(["base", "a"], summarize(close), close)[0]
    assert sentence.startswith("No best named: base at 91.3% leads a (91.2%)")
    assert "includes zero" in sentence
    one_seed = _runs({"base": [0.9], "a": [0.8]})
    assert "one seed gives no interval" in block_verdict(["base", "a"], summarize(one_seed), one_seed)[0]


def test_intervals_stay_in_bounds_however_few_the_seeds() -> None:
    runs = _runs({"base": [0.95, 0.85], "a": [0.606, 0.10]})
    summary = summarize(runs).set_index("variant")
    row = summary.loc["a"]
    assert 0 <= row["test_acc_ci_low"] < row["test_acc_ci_high"] <= 1
    assert (row["paired_ci_low"], row["paired_ci_high"]) == (-1.0, 1.0)  # two seeds 40 points apart bound nothing
    rows = {r["variant"]: r for r in table_rows(["base", "a"], summary.reset_index(), runs)}
    assert rows["a"]["accuracy"] == f"35.3 [{row['test_acc_ci_low'] * 100:.1f}, {row['test_acc_ci_high'] * 100:.1f}]"
    assert rows["a"]["seeds"] == "60.6, 10.0"


def _interval_cells(page: str) -> list[tuple[str, float, float, float]]:
    """(column header, value, low, high) of every "value [low, high]" cell of every table on the page."""
    found = []
    for table in re.findall(r"<table.*?</table>", page, flags=re.S):
        headers = [re.sub(r"<.*?>", " ", h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table, flags=re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S):
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
            for column, cell in enumerate(cells):
                for value, low, high in re.findall(r"([−+\-\d.e]+)x? \[([−+\-\d.e]+), ([−+\-\d.e]+)\]", cell):
                    numbers = [float(n.replace("−", "-")) for n in (value, low, high)]
                    found.append((headers[column] if column < len(headers) else "", *numbers))
    return found


def _bounds(header: str) -> tuple[float, float]:
    """What an interval in this column may span: accuracies in % or as fractions, differences, ratios."""
    if "Δ" in header:
        return -100.0, 100.0
    if "accuracy %" in header or "accuracy (%)" in header:
        return 0.0, 100.0
    if "×" in header or "/" in header or "ratio" in header:
        return 0.0, math.inf
    if "accuracy" in header:
        return 0.0, 1.0
    return -math.inf, math.inf


def assert_intervals_in_bounds(page: str) -> int:
    cells = _interval_cells(page)
    for header, value, low, high in cells:
        lower, upper = _bounds(header)
        assert lower <= low <= high <= upper, (header, value, low, high)
        assert low <= value <= high or math.isclose(value, low) or math.isclose(value, high), (header, value)
    return len(cells)


def test_every_rendered_report_keeps_its_intervals_inside_their_bounds(tiny_study: Path, tmp_path: Path) -> None:
    """The tiny study's report, the demo-sized fixture's and a receptive-field depth table built from two seeds
    far apart (the case that once printed test accuracy 0.661 [-3.596, 4.918] and a growth [0.35, 1.29] ratio)."""
    assert assert_intervals_in_bounds((tiny_study / "reports/tiny/index.html").read_text()) >= 3
    fixture = write_study(tmp_path / "fixture")
    fixture.build_report(tmp_path / "fixture")
    assert assert_intervals_in_bounds((tmp_path / "fixture" / "index.html").read_text()) >= 30
    from cnnablate.report import _table, labelled
    from cnnablate.rf_laws import StudyRuns, trainability_rows, training_rows
    from cnnablate.sections import Column, Section

    base = {"arch": "conv", "blocks_per_stage": 6, "residual": False, "norm": "none"}
    frame = pd.DataFrame(
        [
            {
                "variant": "deep",
                "seed": seed,
                "spec": base,
                "test_acc": acc,
                "lr": 0.1,
                "trained": True,
                "erf_std_init": 5.0,
                "erf_std_trained": trained,
            }
            for seed, acc, trained in ((0, 0.113, 1.2), (1, 0.95, 6.5))
        ]
    )
    runs = StudyRuns(frame, base)
    section = Section("rf_laws", "laws", columns=(Column("test_acc", "test accuracy", percent=True),))
    page = str(_table(labelled(trainability_rows(runs), section))) + str(_table(labelled(training_rows(runs), section)))
    assert assert_intervals_in_bounds(page) == 2
    assert "test accuracy (%) [95% interval]" in page
