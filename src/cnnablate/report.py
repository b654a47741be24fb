"""The study report: verdicts and captions computed from the numbers, honest intervals, one Jinja2 template.

``build_report`` prepares the data (tables, figures, sentences) from the rule's declared inputs and renders
``templates/report.html.j2`` once. The page embeds every image (base64), so it opens from disk with no server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml
from markupsafe import Markup

from cnnablate import figures, intervals, layout
from cnnablate.config import Study
from cnnablate.results import (
    Correctness,
    collect_results,
    difference_estimate,
    per_image_correctness,
    read_tuning,
    scored_images,
    summarize,
)
from cnnablate.sections import Column, Section
from cnnablate.tracking import numeric_items
from cnnablate.vocabulary import RETRY_GAP, TRAINED_MARGIN, Outcome, trained_accuracy

DID_NOT_TRAIN_RULE = (
    f"the final model classifies less than {TRAINED_MARGIN:.0%} of the way from chance to 100% of its whole "
    f"training split correctly ({trained_accuracy(0.1):.1%} on 10 classes), or the loss became non-finite "
    f"({Outcome.DIVERGED.words})"
)
PRINTED_RESOLUTION = 0.001  # accuracies are printed to 0.1 points
CEILING = 0.9995  # a mean that prints as 100.0%: nothing above it to tell variants apart
VERSIONS = ("cnnablate", "torch", "torchvision", "numpy", "pandas", "matplotlib", "snakemake", "mlflow", "jinja2")


@dataclass
class Picture:
    """An embedded PNG and what it shows."""

    src: str
    caption: str

    @classmethod
    def of(cls, path: Path, caption: str) -> Picture:
        return cls("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(), caption)


@dataclass
class Block:
    """One ablation block: its verdict, its rows of the summary table and its figures."""

    name: str
    sentences: list[str]
    rows: list[dict[str, Any]]
    pictures: list[Picture] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- formatting


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _points(value: float) -> str:
    return "–" if _missing(value) else f"{value * 100:.1f}"


def _signed(value: float) -> str:
    text = f"{value * 100:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text.replace("-", "−")


def _interval(diff: float, low: float, high: float) -> str:
    if _missing(diff):
        return "–"
    return _signed(diff) + ("" if _missing(low) else f" [{_signed(low)}, {_signed(high)}]")


def _count(value: float) -> str:
    if _missing(value):
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def _number(value: float, digits: str = ".3g") -> str:
    return "–" if _missing(value) else format(value, digits)


def _table(frame: pd.DataFrame) -> Markup:
    """A pandas table as escaped HTML, for the long tables at the end."""
    return Markup(frame.to_html(index=False, na_rep="–", float_format="{:.4g}".format, classes="table", border=0))


# ---------------------------------------------------------------------------------------------- verdicts


def _chosen_interval(row: pd.Series) -> tuple[float, float, float]:
    """The difference to base, paired by seed and by image (``cnnablate.intervals``)."""
    return row["paired_diff"], row["paired_ci_low"], row["paired_ci_high"]


def lead_interval(
    results: pd.DataFrame, leader: str, runner_up: str, correct: Correctness | None = None
) -> intervals.Estimate:
    """The leader's lead over the runner-up in test accuracy, from the same engine as every difference: paired
    by seed and by image where the runs kept their predictions."""
    return difference_estimate(
        results[results["variant"] == leader], results[results["variant"] == runner_up], correct or {}
    )


def _ratio(value: float, low: float, high: float) -> str:
    """A ratio with its interval (when there is one), two significant digits."""
    return f"{value:.2g}x" + ("" if _missing(low) else f" [{low:.2g}, {high:.2g}]")


def _p(value: float) -> str:
    return "–" if _missing(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def _not_converged(row: pd.Series) -> int:
    return int(row.get("not_converged_runs", 0) or 0)


def _named(variant: str, stats: pd.DataFrame) -> str:
    """A variant's name, with the runs that reached the step cap still improving, so no claim hides them."""
    capped = _not_converged(stats.loc[variant])
    if not capped:
        return variant
    return f"{variant} ({Outcome.NOT_CONVERGED.words}: {capped} of {stats.loc[variant, 'seeds']} runs at the cap)"


def ranking_sentence(
    ranked: Sequence[str], stats: pd.DataFrame, results: pd.DataFrame, correct: Correctness | None = None
) -> str:
    """Who is best, only when the data can tell: a tie at the ceiling is named as a tie, and a leader is called
    best only when the 95% interval of its lead over the runner-up excludes zero."""
    leader = ranked[0]
    accuracy = {v: _points(stats.loc[v, "test_acc_mean"]) for v in ranked}
    if len(ranked) == 1:
        return f"Only {_named(leader, stats)} trained: {accuracy[leader]}% mean test accuracy; nothing to rank."
    at_ceiling = [v for v in ranked if stats.loc[v, "test_acc_mean"] >= CEILING]
    if len(at_ceiling) >= 2:
        names = ", ".join(_named(v, stats) for v in at_ceiling)
        return f"{names} all at {_points(CEILING)}%: this dataset cannot separate them, so no best is named."
    runner_up = ranked[1]
    lead = lead_interval(results, leader, runner_up, correct)
    leads = f"{_named(leader, stats)} at {accuracy[leader]}% leads {runner_up} ({accuracy[runner_up]}%)"
    if _missing(lead.low):
        return f"No best named: {leads} by {_signed(lead.value)} points; one seed gives no interval."
    interval = f"{_signed(lead.value)} points, 95% CI [{_signed(lead.low)}, {_signed(lead.high)}]"
    if lead.low > 0:
        return f"Best: {leads} by {interval}."
    return f"No best named: {leads} by {interval}; the interval includes zero."


def generalises_worse(variant: str, stats: pd.DataFrame) -> bool:
    """Clearly worse than base on the test set, while its training accuracy is not: its training-accuracy
    difference to base lies above the whole interval of its test-accuracy difference. The gap is then
    generalisation, not optimisation (fc on real images is the textbook case); a variant that fits worse by as
    much as it tests worse is simply worse."""
    train, base_train = stats.loc[variant].get("train_acc_mean"), stats.loc["base"].get("train_acc_mean")
    if _missing(train) or _missing(base_train):
        return False
    _, _, high = _chosen_interval(stats.loc[variant])
    # by more than the 0.1 points the report prints: equal printed gaps are no evidence of a generalisation gap
    return high < 0 and train - base_train > high + PRINTED_RESOLUTION


def _dead_parts(dead: Sequence[str], stats: pd.DataFrame) -> list[str]:
    """The variants that did not train in every seed, as states: how many seeds, how many of them diverged."""
    parts, never = [], [v for v in dead if not stats.loc[v, "trained_runs"]]
    if never:
        parts.append(f"{Outcome.DID_NOT_TRAIN.words}: {', '.join(never)}")
    for variant in (v for v in dead if v not in never):
        row = stats.loc[variant]
        untrained = row["seeds"] - row["trained_runs"]
        diverged = f", {row['diverged']} {Outcome.DIVERGED.words}" if row["diverged"] else ""
        parts.append(f"{Outcome.DID_NOT_TRAIN.words} in {untrained} of {row['seeds']} seeds{diverged}: {variant}")
    return parts


def _no_difference(variant: str, row: pd.Series, stats: pd.DataFrame) -> str:
    """A difference the study did not detect, with its scale: the smallest difference the design detects and
    how many seeds this one would need."""
    needed = row.get("paired_seeds_needed")
    if _missing(needed):
        more = ", no number of seeds would detect this one on this test set" if row["paired_diff"] else ""
    else:
        more = f", {needed:.0f} seeds would detect this one"
    return (
        f"{_named(variant, stats)} ({_signed(row['paired_diff'])} points, detectable from "
        f"±{abs(row['paired_detectable']) * 100:.1f}{more})"
    )


def resolution_sentence(compared: Sequence[str], summary: pd.DataFrame, results: pd.DataFrame) -> str | None:
    """The smallest difference the block's design detects, as a range over its variants, and at which level."""
    stats = summary.set_index("variant")
    detectable = stats.loc[list(compared), "paired_detectable"].dropna() if compared else pd.Series(dtype=float)
    if detectable.empty:
        return None
    comparisons = summary.attrs.get("comparisons", len(detectable))
    images = scored_images(results)
    low, high = detectable.min() * 100, detectable.max() * 100
    scale = f"{low:.1f} points" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}–{high:.1f} points"
    on = f" and {images:,.0f} test images" if not _missing(images) else ""
    return (
        f"Resolution: with {int(stats.loc[list(compared), 'paired_seeds'].max())} seeds{on}, this block detects "
        f"differences to base of {scale} with 80% power (two-sided, at 0.05 / {comparisons}, the strictest step of "
        f"Holm's correction over the study's {comparisons} comparisons)."
    )


def speed_sentence(compared: Sequence[str], summary: pd.DataFrame) -> str | None:
    """Steps to the target against base's, judged like accuracy: a ratio paired by seed with its interval and
    Holm-adjusted p-value; a variant that never reached the target says so."""
    stats = summary.set_index("variant")
    if "speed_ratio" not in stats or "base" not in stats.index or stats.loc["base", "target_reached"] == 0:
        return None
    later, sooner, same, never = [], [], [], []
    for variant in compared:
        row = stats.loc[variant]
        if row["target_reached"] == 0:
            never.append(variant)
            continue
        if _missing(row["speed_ratio_low"]):
            same.append(f"{variant} ({row['speed_ratio']:.2g}x, {row['speed_pairs']} seed pair: no interval)")
            continue
        reached = "" if row["target_reached"] == row["seeds"] else f", {row['target_reached']} of {row['seeds']} seeds"
        ratio = _ratio(row["speed_ratio"], row["speed_ratio_low"], row["speed_ratio_high"])
        interval = f"{ratio}, Holm p {_p(row['speed_p_holm'])}{reached}"
        if row["speed_p_holm"] < intervals.ALPHA:
            (later if row["speed_ratio"] > 1 else sooner).append(f"{variant} ({interval})")
        else:
            same.append(f"{variant} ({interval})")
    parts = []
    if later:
        parts.append(f"later than base: {', '.join(later)}")
    if sooner:
        parts.append(f"sooner than base: {', '.join(sooner)}")
    if same:
        parts.append(f"no detectable difference: {', '.join(same)}")
    if never:
        parts.append(f"never reached the target: {', '.join(never)}")
    return ("Steps to the target, variant / base (paired by seed): " + "; ".join(parts) + ".") if parts else None


def block_verdict(
    members: Sequence[str], summary: pd.DataFrame, results: pd.DataFrame, correct: Correctness | None = None
) -> list[str]:
    """Up to four sentences: who is best, only where the interval against the runner-up says so (a tie at the
    ceiling is named as one); the differences to base that survive Holm's correction over the study's
    comparisons (better or worse, with their size), a trained variant that generalises worse as its own case,
    the rest as no detectable difference with the size the design detects; the block's resolution; the steps
    to the target against base's; the variants that did not train, as a state; runs that stopped at the step
    cap, wherever they are named."""
    stats = summary.set_index("variant")
    trained = [v for v in members if stats.loc[v, "trained"] and not _missing(stats.loc[v, "test_acc_mean"])]
    dead = [v for v in members if v not in trained]
    sentences = []
    if trained:
        ranked = sorted(trained, key=lambda v: -stats.loc[v, "test_acc_mean"])
        sentences.append(ranking_sentence(ranked, stats, results, correct))
    parts = []
    compared = [v for v in trained if v != "base"]
    if "base" in trained:
        better, worse, worse_generalising, same, no_interval = [], [], [], [], []
        for variant in compared:
            row = stats.loc[variant]
            diff, low, high = _chosen_interval(row)
            named = _named(variant, stats)
            if _missing(low):
                no_interval.append(named)
                continue
            holm = _p(row["paired_p_holm"])
            evidence = f"{_signed(diff)} points, 95% CI [{_signed(low)}, {_signed(high)}], Holm p {holm}"
            if not row["paired_p_holm"] < intervals.ALPHA:
                same.append(_no_difference(variant, row, stats))
            elif diff > 0:
                better.append(f"{named} ({evidence})")
            elif generalises_worse(variant, stats):
                base = stats.loc["base"]
                worse_generalising.append(
                    f"{named} trained (training accuracy {_points(row['train_acc_mean'])}% against base's "
                    f"{_points(base['train_acc_mean'])}%) but generalises worse: {evidence} in test accuracy"
                )
            else:
                worse.append(f"{named} ({evidence})")
        seeds = int(stats.loc[trained, "paired_seeds"].max())
        if better:
            parts.append(f"better than base: {', '.join(better)}")
        if worse:
            parts.append(f"worse than base: {', '.join(worse)}")
        parts += worse_generalising
        if same:
            parts.append(f"no detectable difference with {seeds} seeds: {', '.join(same)}")
        if no_interval:
            parts.append(f"no interval with one seed: {', '.join(no_interval)}")
        if _not_converged(stats.loc["base"]):
            parts.append(f"base itself: {_named('base', stats).removeprefix('base (').removesuffix(')')}")
    else:
        parts.append(f"base {Outcome.DID_NOT_TRAIN.words}, so nothing is compared with it")
        dead.remove("base")
        compared = []
    parts += _dead_parts(dead, stats)
    if parts:
        sentence = "; ".join(parts)
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
    sentences += [s for s in (resolution_sentence(compared, summary, results), speed_sentence(compared, summary)) if s]
    return sentences


def retry_sentences(members: Sequence[str], results: pd.DataFrame) -> list[str]:
    """Every final run that was retried at a lower learning rate, with the gap to its tuning run that caused it."""
    retried = results[results["variant"].isin(members) & results["retry_lr"].notna()]
    sentences = []
    for run in retried.itertuples():
        first, tuned = run.first_attempt_val_acc, run.first_attempt_tuning_val_acc
        gap = (
            Outcome.DIVERGED.words
            if _missing(first)
            else f"ended {(tuned - first) * 100:.1f} points below its tuning run"
        )
        against = "" if _missing(first) else f" ({_points(first)}% against {_points(tuned)}% validation accuracy)"
        sentences.append(
            f"{run.variant}, seed {run.seed}: retried at lr {run.retry_lr:g} after the run at lr "
            f"{run.first_attempt_lr:g} {gap}{against}; the attempt with the better validation accuracy, at lr "
            f"{run.lr:g}, was kept."
        )
    return sentences


def _speed(row: pd.Series, compared: bool) -> str:
    """Mean steps to the target, and for a compared variant the ratio to base's with its interval."""
    if _missing(row.get("steps_to_target_mean")):
        return "–" if _missing(row.get("val_acc_mean")) else "not reached"
    reached = f" ({row['target_reached']}/{row['seeds']})" if row["target_reached"] < row["seeds"] else ""
    text = f"{row['steps_to_target_mean']:.0f}{reached}"
    if compared and not _missing(row.get("speed_ratio")):
        text += "; " + _ratio(row["speed_ratio"], row["speed_ratio_low"], row["speed_ratio_high"])
    return text


def run_state(row: pd.Series) -> str:
    """How a variant's runs ended, in words: did not train (a state), not converged within the budget, converged,
    or "trained" for runs that predate the outcome field."""
    seeds = row["seeds"]
    if not row["trained"]:
        untrained = seeds - row["trained_runs"]
        diverged = f", {row['diverged']} {Outcome.DIVERGED.words}" if row["diverged"] else ""
        return (
            Outcome.DID_NOT_TRAIN.words + ("" if untrained == seeds else f" in {untrained} of {seeds} seeds") + diverged
        )
    capped = _not_converged(row)
    if capped:
        return f"{Outcome.NOT_CONVERGED.words}: {capped} of {seeds} runs at the cap"
    if row.get("converged_runs", 0) == seeds:
        return Outcome.CONVERGED.words
    return "trained"


def _accuracy_interval(row: pd.Series) -> str:
    """The accuracy with its 95% interval over seeds and test images, in points."""
    if _missing(row["test_acc_ci_low"]):
        return _points(row["test_acc_mean"])
    return f"{_points(row['test_acc_mean'])} [{_points(row['test_acc_ci_low'])}, {_points(row['test_acc_ci_high'])}]"


def _tuning_against_final(row: pd.Series) -> str:
    tuning, final = row.get("tuning_val_acc_mean"), row.get("val_acc_mean")
    if _missing(tuning):
        return "–"
    return f"{_points(tuning)} → {_points(final)}"


def table_rows(members: Sequence[str], summary: pd.DataFrame, results: pd.DataFrame) -> list[dict[str, str]]:
    """The compact table of one block: accuracy with its interval and every seed, the difference to base with
    its interval, Holm-adjusted p-value and detectable size, cost, receptive fields, learning rate (retries
    marked), tuning against final validation accuracy, steps, speed and how the runs ended. No difference for a
    variant that did not train."""
    stats = summary.set_index("variant")
    rows = []
    for variant in members:
        row = stats.loc[variant]
        seeds = results[results["variant"] == variant].sort_values("seed")
        compared = variant != "base" and row["trained"] and stats.loc["base", "trained"]
        retried = int(row.get("retried_runs", 0) or 0)
        detectable = row.get("paired_detectable")
        rows.append(
            {
                "variant": variant,
                "accuracy": _accuracy_interval(row) if row["trained"] else "–",
                "seeds": ", ".join(_points(a) for a in seeds["test_acc"].astype(float)),
                "paired": _interval(row["paired_diff"], row["paired_ci_low"], row["paired_ci_high"])
                if compared
                else "–",
                "holm": _p(row["paired_p_holm"]) if compared else "–",
                "detectable": f"±{detectable * 100:.1f}" if compared and not _missing(detectable) else "–",
                "params": _count(row.get("params_mean")),
                "macs": _count(row.get("macs_mean")),
                "trf": _number(row.get("trf_size_mean"), ".0f"),
                "erf": _number(row.get("erf_std_trained_mean"), ".1f"),
                "lr": _number(row.get("lr_mean")) + (f" ({retried} retried)" if retried else ""),
                "tuning": _tuning_against_final(row),
                "steps": _number(row.get("steps_mean"), ".0f"),
                "speed": _speed(row, bool(compared)),
                "state": run_state(row),
                "dead": not row["trained"],
            }
        )
    return rows


def method_notes(
    results: pd.DataFrame, searches: Mapping[str, Mapping[str, Any]], summary: pd.DataFrame | None = None
) -> list[str]:
    """How every interval, verdict, the ranking, the run outcomes and the training speed are computed."""
    rule = next((s["rule"] for s in searches.values() if s.get("rule")), None)
    images = scored_images(results)
    on = f"the {images:.0f} test images" if not _missing(images) else "the test images"
    comparisons = summary.attrs.get("comparisons") if summary is not None else None
    per_image = summary is not None and bool(summary["per_image"].all())
    notes = [
        "Every interval in this report comes from one engine (cnnablate.intervals): the 95% Student-t interval "
        f"of a mean over seeds and {on}, its variance the per-seed values' variance / n plus the per-image "
        "values' (averaged over seeds) variance / N, with Welch-Satterthwaite degrees of freedom, cut to the "
        "quantity's bounds (0–100% for an accuracy, ±100 points for a difference). It holds both what another "
        "seed would change and what another draw of test images would; with one seed it gives no interval.",
        "Accuracy [95%]: mean test accuracy over seeds with that interval; every seed lists each run's accuracy.",
        "Δ vs base (percentage points): the variant's accuracy minus base's, paired by seed (same data order "
        "and augmentation stream) and "
        + (
            "by image (each run's test_predictions.npy: two models err together on hard images, so pairing "
            "removes what they share)"
            if per_image
            else "with the test-set term of two independent accuracies, as some runs kept no per-image predictions"
        )
        + ", with its 95% interval.",
        "Holm p: the p-value of no difference, adjusted by Holm's method (statsmodels) over the study's "
        + (f"{comparisons} " if comparisons is not None else "")
        + "comparisons of a trained variant with base, which keeps the chance of any false 'better' or 'worse' "
        "in the study at 5%. The verdicts call a difference better or worse only when its Holm p is below 0.05; "
        "the 95% interval beside it is not corrected, so it can exclude zero where the verdict does not.",
        "Detectable ±: the smallest true difference the design finds with 80% power, two-sided at 0.05 divided "
        "by the number of comparisons (Holm's strictest step), from the measured seed spread and test-set "
        "variance (noncentral t). 'No detectable difference' reads with it: a true difference that large would "
        "have been found 4 times in 5; the seeds a difference would need keep the test set fixed.",
        "A best variant is named only when the 95% interval of the leader's lead over the runner-up, from the same "
        f"engine, excludes zero. Variants that all reach {_points(CEILING)}% are a tie at the ceiling: the dataset "
        "cannot separate them.",
        "Generalises worse: a trained variant worse than base after Holm's correction, whose training-accuracy "
        "difference to base lies above the whole interval of its test-accuracy difference.",
        f"Outcome: {Outcome.CONVERGED.words} = stopped because validation accuracy, validation loss and training "
        f"loss all stopped improving; {Outcome.NOT_CONVERGED.words} = reached train.max_steps while still improving "
        f"(its accuracy is a lower bound; every verdict naming it says so); {Outcome.DID_NOT_TRAIN.words}: "
        f"{DID_NOT_TRAIN_RULE}. A retried run ended more than {RETRY_GAP * 100:g} validation points below its "
        "tuning run and was run once more at the next "
        "lower learning rate; the attempt with the better validation accuracy was kept.",
        f"{Outcome.DID_NOT_TRAIN.words.capitalize()}: {DID_NOT_TRAIN_RULE}. Such variants are a state: never "
        "ranked, no difference to base.",
    ]
    if rule:
        notes.append(f"Learning rate, per variant (from its tuning file): {rule}.")
    if "tuning_val_acc" in results and results["tuning_val_acc"].notna().any():
        notes.append(
            "Tuning → final: validation accuracy of the variant's tuning run at the learning rate finally used, "
            "beside the final runs' (mean over seeds)."
        )
    if "speed_target" in results.attrs and not _missing(results.attrs["speed_target"]):
        notes.append(
            f"Steps to target: optimiser steps until the validation accuracy first reached "
            f"{results.attrs['speed_fraction']:g} x base's final validation accuracy "
            f"({results.attrs['speed_target'] * 100:.1f}%), mean over the seeds that reached it (their count in "
            "brackets when not all did); then the ratio to base's steps, paired by seed, as a geometric mean with "
            "its 95% interval on the log scale (so it stays positive), Holm-corrected like the accuracies in the "
            "verdicts' speed sentence."
        )
    return notes


# ---------------------------------------------------------------------------------------------- captions


def depth_trend(depth: pd.DataFrame) -> str:
    """What the ERF/TRF ratio does from the first to the last block, counted over variants (mean over seeds)."""
    if depth.empty:
        return "No variant has a spatial feature map."
    means = depth.groupby(["variant", "depth"], sort=False, as_index=False).mean(numeric_only=True)
    sentences = []
    for stage, name in (("trained", "after training"), ("init", "at initialisation")):
        column = f"erf_trf_ratio_{stage}"
        if column not in means or means[column].isna().all():
            continue
        change = means.dropna(subset=[column]).groupby("variant", sort=False)[column].agg(["first", "last"])
        falls = change.index[change["last"] < change["first"]].tolist()
        rises = change.index[change["last"] > change["first"]].tolist()
        text = f"{name}, ERF/TRF falls from the first to the last block in {len(falls)} of {len(change)} variants"
        if rises:
            text += f" and rises in {', '.join(rises)}"
        sentences.append(text)
    text = "; ".join(sentences)
    return text[0].upper() + text[1:] + "."


def lr_caption(members: Sequence[str], searches: Mapping[str, Mapping[str, Any]]) -> str:
    """The learning rate each variant chose, and which choices sit on the edge of the searched grid."""
    chosen = {v: searches[v] for v in members if v in searches}
    edges = [
        v
        for v, s in chosen.items()
        if s["chosen_lr"] in (min(p["lr"] for p in s["grid"]), max(p["lr"] for p in s["grid"]))
    ]
    text = (
        "Validation accuracy against learning rate (log axis, ticks at the rates tried; hollow: added past the "
        "configured grid's edge), chosen rate starred: "
        + ", ".join(f"{v} {s['chosen_lr']:g}" for v, s in chosen.items())
        + "."
    )
    if edges:
        text += f" At the edge of the grid (a wider search might choose otherwise): {', '.join(edges)}."
    return text


def pareto_caption(summary: pd.DataFrame) -> str:
    trained = summary[summary["trained"]].dropna(subset=["test_acc_mean"])
    parts = []
    for column, name in (("params_mean", "parameters"), ("macs_mean", "MACs")):
        data = trained.dropna(subset=[column])
        front = figures.pareto_front(data[column].to_numpy(dtype=float), data["test_acc_mean"].to_numpy())
        parts.append(f"by {name}: {', '.join(data['variant'].iloc[front])}")
    return (
        f"Accuracy against parameters and MACs; hollow markers {Outcome.DID_NOT_TRAIN.words} and are left off the "
        "Pareto front "
        "(no other variant is both cheaper and more accurate). On the front " + "; ".join(parts) + "."
    )


def fc_vs_conv_caption(summary: pd.DataFrame) -> str:
    rows = summary[summary["variant"].isin(["base", "arch-fc", "arch-local", "arch-conv"])].set_index("arch")
    return (
        "fc against local against conv: "
        + "; ".join(
            f"{arch} {_points(rows.loc[arch, 'test_acc_mean'])}% with {_count(rows.loc[arch, 'params_mean'])} params"
            for arch in ("fc", "local", "conv")
            if arch in rows.index
        )
        + "."
    )


# ---------------------------------------------------------------------------------------------- run files


def read_histories(results: pd.DataFrame, runs: Sequence[Path]) -> pd.DataFrame:
    frames = [
        pd.read_csv(layout.run_file(run, layout.HISTORY)).assign(variant=variant, seed=seed)
        for run, variant, seed in zip(runs, results["variant"], results["seed"], strict=True)
        if layout.run_file(run, layout.HISTORY).exists()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["variant", "seed"])


def erf_depth_table(results: pd.DataFrame, runs: Sequence[Path]) -> pd.DataFrame:
    """ERF and TRF after every block of every run that has them (measures.json)."""
    rows = []
    for run, variant, seed in zip(runs, results["variant"], results["seed"], strict=True):
        measures = layout.run_file(run, layout.MEASURES)
        if measures.exists():
            by_depth = json.loads(measures.read_text()).get("erf_by_depth", [])
            rows += [{"variant": variant, "seed": seed, **row} for row in by_depth]
    return pd.DataFrame(rows)


def erf_maps(results: pd.DataFrame, runs: Sequence[Path], seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    maps = []
    for run, variant, run_seed in zip(runs, results["variant"], results["seed"], strict=True):
        init, trained = layout.run_file(run, layout.ERF_INIT), layout.run_file(run, layout.ERF_TRAINED)
        if run_seed == seed and init.exists() and trained.exists():
            init_map, trained_map = np.load(init), np.load(trained)
            if init_map.size > 1 and trained_map.size > 1:
                maps.append((variant, init_map, trained_map))
    return maps


def provenance(study: Study, metrics_paths: Sequence[str | Path]) -> dict[str, str]:
    """Where the numbers come from: commits that trained the runs, config hash, versions, date."""
    commits, trained_with = set(), {}
    for path in metrics_paths:
        metrics = json.loads(Path(path).read_text())
        commits.add(metrics.get("git_commit") or "unknown")
        trained_with = metrics.get("versions") or trained_with
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    config_hash = hashlib.sha256(json.dumps(study.config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {
        "git commit of the runs": ", ".join(sorted(commits)),
        "config hash (sha256 of the validated config)": config_hash,
        "versions that trained": ", ".join(f"{k} {v}" for k, v in trained_with.items()) or "not recorded",
        "versions that wrote this report": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "report written": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ---------------------------------------------------------------------------------------------- the report


@dataclass
class StudyData:
    """Everything the sections are drawn from: the tables, the searches and each run's folder."""

    study: Study
    results: pd.DataFrame
    summary: pd.DataFrame
    searches: dict[str, dict[str, Any]]
    runs: list[Path]
    figures_dir: Path
    correct: Correctness = field(default_factory=dict)  # (variant, seed) -> per-test-image correctness

    @cached_property
    def styles(self) -> dict[str, figures.Style]:
        return figures.variant_styles(list(self.study.variants))


def ablation_block(data: StudyData, name: str, histories: pd.DataFrame) -> Block:
    """Verdict, table rows and figures of one ablation block: accuracy per seed, LR search, learning curves."""
    members, directory = data.study.ablation_variants(name), data.figures_dir
    accuracy = figures.accuracy_figure(data.results, data.summary, members, name, directory / f"accuracy_{name}.png")
    pictures = [
        Picture.of(
            accuracy,
            f"{name}: every seed's test accuracy (dots) beside the mean and its 95% interval over seeds and test "
            "images (the report's one interval engine). Axis 0–100%.",
        )
    ]
    if any(v in data.searches for v in members):
        path = figures.lr_sensitivity_figure(data.searches, members, data.styles, name, directory / f"lr_{name}.png")
        pictures.append(Picture.of(path, lr_caption(members, data.searches)))
    steps = data.summary.set_index("variant").loc[members, "steps_mean"].dropna()
    caption = f"{name}: learning curves, mean over seeds, band = range over seeds."
    if not steps.empty:
        caption += " Steps trained (mean): " + ", ".join(f"{v} {s:.0f}" for v, s in steps.items()) + "."
    curves = figures.learning_curves_figure(histories, members, data.styles, name, directory / f"curves_{name}.png")
    pictures.append(Picture.of(curves, caption))
    return Block(
        name,
        block_verdict(members, data.summary, data.results, data.correct),
        table_rows(members, data.summary, data.results),
        pictures,
        retry_sentences(members, data.results),
    )


def cost_pictures(data: StudyData) -> list[Picture]:
    """Accuracy against cost, ERF against TRF, ERF/TRF by depth, ERF maps, fc against local against conv."""
    summary, directory, styles = data.summary, data.figures_dir, data.styles
    depth = erf_depth_table(data.results, data.runs)
    seed = int(data.results["seed"].min())
    rf_path, rf_caption = figures.rf_figure(summary, styles, directory / "trf_vs_erf.png")
    pictures = [
        Picture.of(figures.cost_figure(summary, styles, directory / "accuracy_vs_cost.png"), pareto_caption(summary)),
        Picture.of(rf_path, rf_caption),
        Picture.of(figures.erf_depth_figure(depth, styles, directory / "erf_by_depth.png"), depth_trend(depth)),
        Picture.of(
            figures.erf_grid_figure(erf_maps(data.results, data.runs, seed), seed, directory / "erf_maps.png"),
            "ERF maps (log10 of the gradient relative to its peak, one colour scale): variants across, "
            "at initialisation above, trained below.",
        ),
    ]
    if summary["variant"].isin(["arch-fc", "arch-local"]).any():
        path = figures.fc_vs_conv_figure(summary, directory / "fc_vs_conv.png")
        pictures.append(Picture.of(path, fc_vs_conv_caption(summary)))
    return pictures


def labelled(frame: pd.DataFrame, section: Section | None = None) -> pd.DataFrame:
    """A table for the page, its headings from the section's declared columns: X, X_low and X_high become one
    "heading [95% interval]" column, fractions declared as percentages are shown times 100, hidden columns go."""
    section = section or Section.undeclared("")
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        declared, heading = section.column(column)
        if (declared and declared.hidden) or (column.endswith(("_low", "_high")) and column.rsplit("_", 1)[0] in frame):
            continue
        scale = 100.0 if declared and declared.percent else 1.0
        low, high = f"{column}_low", f"{column}_high"
        if low in frame and high in frame:
            out[f"{heading} [95% interval]"] = [
                "–"
                if _missing(v)
                else f"{v * scale:.4g}" + ("" if _missing(a) else f" [{a * scale:.4g}, {b * scale:.4g}]")
                for v, a, b in zip(frame[column], frame[low], frame[high], strict=True)
            ]
        else:
            out[heading] = frame[column] * scale if scale != 1.0 else frame[column]
    return out


def per_run_columns(data: StudyData, section: Section) -> list[str]:
    """The results.csv columns of a section's per-run table: those it names (``Section.per_run``), in that order,
    else every number of its analysis file."""
    if section.per_run is None:
        numbers = numeric_items(_first_analysis(data.runs, section.name), "")
        return [column for column in numbers if column in data.results]
    return [
        column for name in section.per_run for column in data.results.columns if Column(name).match(column) is not None
    ]


def analysis_sections(
    data: StudyData, analyses: Mapping[str, Sequence[str]], sections: Mapping[str, Section]
) -> list[dict[str, Any]]:
    """Per registered analysis, as its section declares: the mean over seeds of its numbers, and its study-level
    figures and tables, each with its caption."""
    rendered = []
    for name, outputs in analyses.items():
        section = sections.get(name) or Section.undeclared(name)
        columns = per_run_columns(data, section)
        means = data.results.groupby("variant", sort=False)[columns].mean().reset_index()
        rendered.append(
            {
                "title": section.title,
                "text": section.text,
                "means": _table(labelled(means, section)) if columns else None,
                "pictures": [Picture.of(Path(p), section.caption(p)) for p in outputs if p.endswith(".png")],
                "tables": [
                    {"caption": section.caption(p), "table": _table(labelled(pd.read_csv(p), section))}
                    for p in outputs
                    if p.endswith(".csv")
                ],
            }
        )
    return rendered


def learned_sections(interpret: Sequence[str | Path], section: Section) -> list[dict[str, Any]]:
    """The interpretation figures of each interpreted run, named after the run's own metrics.json, captioned by
    the interpret section's declaration."""
    runs = []
    for directory in map(Path, interpret):
        variant = layout.run_metrics(directory)["variant"]
        pictures = [Picture.of(png, f"{variant}: {section.caption(png)}") for png in sorted(directory.glob("*.png"))]
        runs.append({"variant": variant, "pictures": pictures})
    return runs


def build_report(
    study: Study,
    *,
    metrics: Sequence[str | Path],
    tuning: Sequence[str | Path],
    interpret: Sequence[str | Path],
    analyses: Mapping[str, Sequence[str]],
    sections: Mapping[str, Section] | None = None,
    results_csv: str | Path,
    summary_csv: str | Path,
    figures_dir: str | Path,
    html_path: str | Path,
    test_labels: str | Path | None = None,
) -> dict[str, Any]:
    """Write results.csv, summary.csv, every figure and index.html from the report rule's declared inputs:
    every run's metrics.json (its other files sit next to it), the learning-rate searches, the interpretation
    folders, each analysis's study-level outputs and the prepared dataset (its test labels score each run's
    test predictions image by image). ``sections``: each analysis's declared report section by name
    (``cnnablate.sections``; "interpret" for the interpretation figures); an analysis without one is shown
    under its name."""
    sections = sections or {}
    learned = sections.get("interpret") or Section.undeclared("interpret")
    Path(figures_dir).mkdir(parents=True, exist_ok=True)
    Path(html_path).parent.mkdir(parents=True, exist_ok=True)
    results = collect_results(study, metrics, analyses)
    searches = read_tuning(tuning)
    runs = [Path(path).parent for path in metrics]
    correct = per_image_correctness(results, runs, np.load(test_labels)["y_test"]) if test_labels else {}
    summary = summarize(results, searches, correct)
    results.to_csv(results_csv, index=False)
    summary.to_csv(summary_csv, index=False)
    data = StudyData(study, results, summary, searches, runs, Path(figures_dir), correct)
    histories = read_histories(results, runs)
    blocks = [ablation_block(data, name, histories) for name in study.config.get("ablations", {})]
    page = _template().render(
        Outcome=Outcome,
        study=study.name,
        dataset=study.config["data"]["dataset"],
        variants=len(study.variants),
        seeds=results["seed"].nunique(),
        runs=len(results),
        diverged=int(results["diverged"].astype(bool).sum()),
        not_converged=int(summary["not_converged_runs"].sum()),
        not_trained=summary.loc[~summary["trained"], "variant"].tolist(),
        blocks=blocks,
        notes=method_notes(results, searches, summary),
        cost_pictures=cost_pictures(data),
        analyses=analysis_sections(data, analyses, sections),
        learned=learned_sections(interpret, learned),
        learned_title=learned.title,
        edge=_table(summary[["variant", "edge_match_init_mean", "edge_match_trained_mean"]].dropna()),
        summary_table=_table(summary),
        results_table=_table(results),
        config=yaml.safe_dump(study.config, sort_keys=False),
        reports_dir=layout.reports_dir(study.name),
        run_pattern=layout.run_dir(layout.results_dir(study.name), "<variant>", "<seed>"),
        provenance=provenance(study, metrics),
    )
    Path(html_path).write_text(page)
    return {"runs": len(results), "verdicts": {block.name: block.sentences for block in blocks}}


def _first_analysis(runs: Sequence[Path], analysis: str) -> dict[str, Any]:
    """The numbers one run's analysis file holds (every run's file has the same keys)."""
    path = layout.analysis_file(runs[0], analysis)
    return json.loads(path.read_text()) if path.exists() else {}


def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cnnablate", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return environment.get_template("report.html.j2")
