"""The study's figures (matplotlib, headless), drawn so that no two texts overlap.

Variants are told apart by colour and marker, listed once in a legend beside the axes, never by labels
next to points (they pile up where variants score alike). Every figure uses constrained layout, so titles,
axis labels and legends get their own room.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker

from cnnablate.heatmaps import DPI, ERF_SCALE, erf_heatmap
from cnnablate.vocabulary import Outcome

sns.set_theme(style="whitegrid", context="notebook")
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "p", "h", "*")
LEGEND_BESIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "fontsize": 8, "borderaxespad": 0.0}


@dataclass(frozen=True)
class Style:
    """How one variant looks in every figure."""

    color: Any
    marker: str


def variant_styles(variants: Sequence[str]) -> dict[str, Style]:
    """A fixed colour and marker per variant, the same in every figure of the report."""
    colors = sns.color_palette("tab20", 20)
    return {variant: Style(colors[index % 20], MARKERS[index % len(MARKERS)]) for index, variant in enumerate(variants)}


def save(fig: plt.Figure, path: str | Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _tick_name(variant: str, trained: bool, diverged: int) -> str:
    """A variant id on two lines at its underscores, with its state under it."""
    name = variant.replace("_", "_\n")
    if not trained:
        name += f"\n({Outcome.DID_NOT_TRAIN.words})"
    elif diverged:
        name += f"\n({diverged} {Outcome.DIVERGED.words})"
    return name


INTERVAL = "95% interval, seeds and test images"


def accuracy_figure(results: pd.DataFrame, summary: pd.DataFrame, members: list[str], block: str, path: Path) -> Path:
    """Every seed's test accuracy next to the mean and its 95% interval over seeds and test images
    (``cnnablate.intervals``), on the whole 0-100% range; variants that did not train in grey."""
    stats = summary.set_index("variant").loc[members]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.35 * len(members) + 1.5), 3.8), layout="constrained")
    offsets = np.linspace(-0.18, 0.18, max(1, results["seed"].nunique()))
    seeds = sorted(results["seed"].unique())
    for position, variant in enumerate(members):
        row = stats.loc[variant]
        trained = bool(row["trained"])
        runs = results[results["variant"] == variant].set_index("seed")["test_acc"].astype(float) * 100
        ax.scatter(
            [position - 0.25 + offsets[seeds.index(seed)] * 0.5 for seed in runs.index],
            runs.to_numpy(),
            s=22,
            color="0.35" if trained else "0.7",
            label="one seed",
            zorder=3,
            clip_on=False,
        )
        mean = row["test_acc_mean"] * 100
        low, high = row["test_acc_ci_low"], row["test_acc_ci_high"]
        error = None if math.isnan(low) else [[mean - low * 100], [high * 100 - mean]]
        ax.errorbar(
            [position + 0.15],
            [mean],
            yerr=error,
            fmt="D",
            color="C3" if trained else "0.6",
            capsize=5,
            markersize=6,
            label=f"mean, {INTERVAL}" if trained else f"mean ({Outcome.DID_NOT_TRAIN.words})",
            clip_on=False,
        )
    ax.set_xticks(
        range(len(members)),
        [_tick_name(v, bool(stats.loc[v, "trained"]), int(stats.loc[v, "diverged"])) for v in members],
        fontsize=8,
    )
    ax.set_xlim(-0.6, len(members) - 0.4)
    ax.set_ylim(0, 100)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{block}: test accuracy, {len(seeds)} seeds", fontsize=10, pad=10)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), **LEGEND_BESIDE)
    return save(fig, path)


def lr_sensitivity_figure(
    tuning: Mapping[str, Mapping[str, Any]], members: list[str], styles: Mapping[str, Style], block: str, path: Path
) -> Path:
    """Validation accuracy against learning rate (log axis) at the largest tuning budget, one line per variant,
    the chosen rate starred, rates added past the configured grid's edge hollow, and the accuracy a run had to
    reach to count as learning (only those rates could be chosen). The ticks are the rates tried, nothing else."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
    chance, rates, learned_acc = None, set(), None
    for variant in members:
        search = tuning.get(variant)
        if not search:
            continue
        chance = search.get("chance", chance)
        learned_acc = search.get("learned_acc", learned_acc)
        rates |= {point["lr"] for point in search["grid"]}
        grid = sorted((point for point in search["grid"] if point["val_acc"] is not None), key=lambda p: p["lr"])
        style = styles[variant]
        label = variant if search.get("trained", True) else f"{variant} ({Outcome.DID_NOT_TRAIN.words})"
        if len(search.get("budgets", [])) > 1:  # no rate had learned at the first budget: judged later
            label += f" (at {search['budgets'][-1]} steps)"
        ax.plot(
            [p["lr"] for p in grid],
            [p["val_acc"] * 100 for p in grid],
            marker=style.marker,
            color=style.color,
            markersize=5,
            label=label,
            linestyle="-" if search.get("trained", True) else ":",
            clip_on=False,
        )
        extended = [p for p in grid if p.get("extended")]
        if extended:
            ax.scatter(
                [p["lr"] for p in extended],
                [p["val_acc"] * 100 for p in extended],
                marker=style.marker,
                s=45,
                color="white",
                edgecolor=style.color,
                linewidth=1.2,
                zorder=4,
            )
        chosen = [p for p in grid if p["lr"] == search["chosen_lr"]]
        if chosen:
            ax.scatter(
                [chosen[0]["lr"]],
                [chosen[0]["val_acc"] * 100],
                marker="*",
                s=160,
                color=style.color,
                edgecolor="black",
                zorder=5,
                clip_on=False,
            )
        diverged = [p["lr"] for p in search["grid"] if p["diverged"]]
        if diverged and chance is not None:
            ax.scatter(diverged, [chance * 100] * len(diverged), marker="x", color=style.color, s=40, zorder=4)
    if chance is not None:
        ax.axhline(
            chance * 100, color="0.4", linestyle="--", linewidth=1, label=f"chance ({Outcome.DIVERGED.words}: x)"
        )
    if learned_acc is not None:
        ax.axhline(learned_acc * 100, color="0.4", linestyle=":", linewidth=1, label="learned: rate can be chosen")
    ax.scatter([], [], marker="*", s=120, color="0.5", edgecolor="black", label="chosen learning rate")
    if any(p.get("extended") for v in members for p in tuning.get(v, {}).get("grid", [])):
        ax.scatter([], [], marker="o", s=45, color="white", edgecolor="0.3", label="added past the grid's edge")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale; ticks: the rates tried)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{block}: learning-rate search", fontsize=10, pad=10)
    ax.legend(**LEGEND_BESIDE)
    if rates:
        _ticks_at(ax, sorted(rates))
    return save(fig, path)


def _ticks_at(ax: plt.Axes, rates: Sequence[float]) -> None:
    """x ticks at exactly these values, labelled as written (0.05, not 5×10⁻²), no minor ticks; labels turn
    45 degrees when side by side they would touch."""
    ax.xaxis.set_major_locator(ticker.FixedLocator(rates))
    ax.xaxis.set_major_formatter(ticker.FixedFormatter([f"{rate:g}" for rate in rates]))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    if len(rates) > 1:
        ax.set_xlim(rates[0] / 1.25, rates[-1] * 1.25)
    ax.figure.canvas.draw()  # the final layout (legend beside, constrained) decides where the labels land
    renderer = ax.figure.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in ax.xaxis.get_ticklabels()]
    if any(a.x1 + 2 > b.x0 for a, b in itertools.pairwise(boxes)):
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.xaxis.get_ticklabels():
            label.set_horizontalalignment("right")


def learning_curves_figure(
    histories: pd.DataFrame, members: list[str], styles: Mapping[str, Style], block: str, path: Path
) -> Path:
    """Validation accuracy and loss against optimiser steps: mean over seeds, band = range over seeds."""
    curves = histories[histories["variant"].isin(members)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    if not curves.empty:
        curves = curves.assign(accuracy=curves["val_acc"].astype(float) * 100)
        palette = {variant: styles[variant].color for variant in members}
        for ax, column in zip(axes, ("accuracy", "val_loss"), strict=True):
            sns.lineplot(
                data=curves,
                x="step",
                y=column,
                hue="variant",
                hue_order=members,
                palette=palette,
                errorbar=("pi", 100),
                ax=ax,
                legend=ax is axes[1],
            )
    axes[0].set_ylabel("validation accuracy (%)")
    axes[1].set_ylabel("validation cross-entropy")
    for ax in axes:
        ax.set_xlabel("optimiser step")
    if axes[1].get_legend():
        sns.move_legend(axes[1], **LEGEND_BESIDE)
    fig.suptitle(f"{block}: learning curves (band: range over seeds)", fontsize=10)
    return save(fig, path)


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both lower cost and higher accuracy, by increasing cost."""
    order = np.lexsort((-accuracy, cost))
    front, best = [], -np.inf
    for index in order:
        if accuracy[index] > best:
            front.append(index)
            best = accuracy[index]
    return np.asarray(front, dtype=int)


def _cost_axis(ax: plt.Axes, values: np.ndarray) -> str:
    """The x axis of a cost: logarithmic with engineering ticks (1, 2, 5 per decade on short ranges) when the
    costs span a decade or more, else linear with the full numbers, so a range of 896 parameters around a
    million reads as such rather than as one "1 M" repeated. Returns the scale's name for the axis label."""
    if values.min() > 0 and values.max() / values.min() >= 10:
        ax.set_xscale("log")
        subs = (1.0, 2.0, 5.0) if math.log10(values.max() / values.min()) < 2 else (1.0,)
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=" "))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        return "log scale"
    ax.xaxis.set_major_locator(ticker.MaxNLocator(4, integer=True))
    ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
    ax.margins(x=0.15)
    return "linear scale"


def cost_figure(summary: pd.DataFrame, styles: Mapping[str, Style], path: Path) -> Path:
    """Accuracy (0-100%) against parameters and against MACs, Pareto front of the variants that trained."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained", sharey=True)
    for ax, column, label in zip(axes, ("params_mean", "macs_mean"), ("parameters", "MACs per image"), strict=True):
        data = summary.dropna(subset=[column, "test_acc_mean"])
        for row in data.itertuples():
            style = styles[row.variant]
            ax.scatter(
                getattr(row, column),
                row.test_acc_mean * 100,
                s=55,
                marker=style.marker,
                color=style.color if row.trained else "none",
                edgecolor=style.color,
                linewidth=1.5,
                label=row.variant if row.trained else f"{row.variant} ({Outcome.DID_NOT_TRAIN.words})",
            )
        trained = data[data["trained"]]
        cost, accuracy = trained[column].to_numpy(dtype=float), trained["test_acc_mean"].to_numpy() * 100
        front = pareto_front(cost, accuracy)
        ax.step(cost[front], accuracy[front], where="post", color="C3", lw=1.5, label="Pareto front")
        scale = _cost_axis(ax, data[column].to_numpy(dtype=float)) if len(data) else "no data"
        ax.set_xlabel(f"{label} ({scale})")
        ax.set_title(f"Accuracy against {label}", fontsize=10)
    axes[0].set_ylabel("test accuracy (%), mean over seeds")
    axes[0].set_ylim(0, 100)
    axes[1].legend(**LEGEND_BESIDE)
    return save(fig, path)


def sqrt_law_std(trf: np.ndarray, kernel: int, dilation: int) -> np.ndarray:
    """ERF std of a stride-1 stack of uniform k x k kernels with dilation d, as a function of its TRF.

    n layers: TRF - 1 = n d (k - 1) and variance = n d^2 (k^2 - 1) / 12, so std = sqrt((TRF - 1) d (k + 1) / 12)."""
    return np.sqrt(np.maximum(trf - 1, 0) * dilation * (kernel + 1) / 12)


def rf_figure(summary: pd.DataFrame, styles: Mapping[str, Style], path: Path) -> tuple[Path, str]:
    """ERF std against TRF per variant (filled: trained, hollow: at initialisation), with the square-root law
    of a uniform stride-1 stack for each kernel size and dilation shown; returns the figure and its caption."""
    data = summary.dropna(subset=["trf_size_mean", "erf_std_trained_mean"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    if data.empty:
        ax.text(0.5, 0.5, "no variant with a spatial feature map", ha="center", transform=ax.transAxes)
        return save(fig, path), "No variant has a spatial feature map."
    for row in data.itertuples():
        style = styles[row.variant]
        ax.scatter(
            row.trf_size_mean,
            row.erf_std_trained_mean,
            marker=style.marker,
            color=style.color,
            s=50,
            label=row.variant if row.trained else f"{row.variant} ({Outcome.DID_NOT_TRAIN.words})",
        )
        ax.scatter(
            row.trf_size_mean, row.erf_std_init_mean, marker=style.marker, color="none", edgecolor=style.color, s=50
        )
    trf = np.linspace(1, data["trf_size_mean"].max() * 1.05, 200)
    laws = sorted({(int(k), int(d)) for k, d in zip(data["kernel_size"], data["dilation"], strict=True)})
    dashes = ("--", "-.", (0, (6, 2)), (0, (3, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2, 2, 2)))
    for (kernel, dilation), linestyle in zip(laws, dashes * 4, strict=False):
        ax.plot(
            trf,
            sqrt_law_std(trf, kernel, dilation),
            color="k",
            linestyle=linestyle,
            lw=1,
            label=f"uniform {kernel}x{kernel}, dilation {dilation}, stride 1",
        )
    ax.plot(trf, trf / math.sqrt(12), color="0.6", lw=1, label="flat over the TRF (TRF/sqrt 12)")
    ax.scatter([], [], marker="o", color="none", edgecolor="0.3", label="hollow: at initialisation")
    ax.set_xlabel("theoretical receptive field (pixels)")
    ax.set_ylabel("effective receptive field std (pixels)")
    ax.set_title("Effective against theoretical receptive field", fontsize=10)
    ax.legend(**LEGEND_BESIDE)
    above = data[
        data["erf_std_trained_mean"]
        > sqrt_law_std(data["trf_size_mean"], data["kernel_size"].astype(int), data["dilation"].astype(int))
    ]
    law_names = [f"{k}x{k} dilation {d}" for k, d in laws]
    grew = int((data["erf_std_trained_mean"] > data["erf_std_init_mean"]).sum())
    strided = int((data.get("trf_stride_mean", pd.Series(1, index=data.index)) > 1).sum())
    caption = (
        "ERF std (filled: trained, hollow: at initialisation) against TRF. Lines: the square-root law of a "
        f"stride-1 stack of uniform kernels, for each kernel size and dilation present ({', '.join(law_names)}). "
        f"{strided} of {len(data)} variants downsample (TRF stride > 1), so for them the line is a reference, "
        f"not a prediction. {len(above)} of {len(data)} variants lie above the line of their own kernel and "
        f"dilation; training enlarged the ERF std in {grew} of {len(data)}."
    )
    return save(fig, path), caption


def erf_depth_figure(depth: pd.DataFrame, styles: Mapping[str, Style], path: Path) -> Path:
    """ERF/TRF ratio against depth, at initialisation and after training, one line per variant."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, layout="constrained")
    for ax, stage in zip(axes, ("init", "trained"), strict=True):
        column = f"erf_trf_ratio_{stage}"
        if not depth.empty and column in depth:
            variants = list(dict.fromkeys(depth["variant"]))
            sns.lineplot(
                data=depth,
                x="depth",
                y=column,
                hue="variant",
                hue_order=variants,
                palette={v: styles[v].color for v in variants},
                marker="o",
                errorbar=("pi", 100),
                ax=ax,
                legend=stage == "trained",
            )
        ax.set_xlabel("depth (convolution blocks from the input)")
        ax.set_ylabel("ERF size / TRF size")
        ax.set_title("at initialisation" if stage == "init" else "after training", fontsize=10)
    if axes[1].get_legend():
        sns.move_legend(axes[1], **LEGEND_BESIDE)
    fig.suptitle("Effective over theoretical receptive field, block by block", fontsize=10)
    return save(fig, path)


def erf_grid_figure(maps: Sequence[tuple[str, np.ndarray, np.ndarray]], seed: int, path: Path) -> Path:
    """ERF maps in a grid: variants across, initialisation and trained down, one colour scale for all."""
    per_row = min(7, max(1, len(maps)))
    groups = max(1, math.ceil(len(maps) / per_row))
    fig, axes = plt.subplots(
        2 * groups, per_row, figsize=(1.3 * per_row + 1.2, 2.6 * groups + 0.4), squeeze=False, layout="constrained"
    )
    image = None
    for ax in axes.flat:
        ax.set_axis_off()
    for index, (variant, init, trained) in enumerate(maps):
        group, column = divmod(index, per_row)
        for row, (erf, stage) in enumerate(((init, "init"), (trained, "trained"))):
            ax = axes[2 * group + row, column]
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            image = erf_heatmap(ax, erf)
            if row == 0:
                ax.set_title(variant.replace("_", "_\n"), fontsize=8)
            if column == 0:
                ax.set_ylabel(stage, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=ERF_SCALE)
    fig.suptitle(f"ERF maps, seed {seed}: initialisation (top) and trained (bottom)", fontsize=10)
    return save(fig, path)


ARCH_NAMES = {"fc": "fc\n(no prior)", "local": "local\n(locality)", "conv": "conv\n(locality +\nweight sharing)"}


def fc_vs_conv_figure(summary: pd.DataFrame, path: Path) -> Path:
    """What locality and weight sharing buy: accuracy and parameters of fc, local and conv."""
    data = summary[summary["variant"].isin(["base", "arch-fc", "arch-local", "arch-conv"])]  # arch alone differs
    order = [a for a in ARCH_NAMES if a in set(data["arch"])]
    data = data.set_index("arch").loc[order].reset_index()
    names, colors = [ARCH_NAMES[a] for a in order], ["C0", "C1", "C2"][: len(order)]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), layout="constrained")
    mean = data["test_acc_mean"]
    error = np.nan_to_num([(mean - data["test_acc_ci_low"]) * 100, (data["test_acc_ci_high"] - mean) * 100])
    axes[0].bar(names, mean * 100, yerr=error, color=colors, capsize=6)
    axes[0].set_ylabel(f"test accuracy (%), mean and\n{INTERVAL}", fontsize=9)
    axes[0].set_ylim(0, 100)
    axes[0].set_title("Accuracy", fontsize=10)
    axes[1].bar(names, data["params_mean"], color=colors)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("parameters (log scale)")
    axes[1].set_title("Parameters", fontsize=10)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.supxlabel("architecture: no prior, then locality, then locality and weight sharing", fontsize=9)
    return save(fig, path)


# --------------------------------------------------------------------------------------------------
# Receptive-field laws (cnnablate.rf_laws)


class PowerFit(Protocol):
    """A fitted ``y = prefactor * x^exponent`` (``cnnablate.rf_laws.PowerLaw``)."""

    @property
    def exponent(self) -> float: ...

    @property
    def prefactor(self) -> float: ...


def rf_laws_depth_figure(
    stacks: pd.DataFrame, fits: Mapping[str, PowerFit], residual: pd.DataFrame, path: str | Path
) -> Path:
    """ERF std vs depth (log-log, with each stack kind's fit), ERF/TRF vs depth with the n^-0.5 reference, and
    plain vs residual networks at equal depth. ``fits``: ERF std against depth per stack kind, in legend order."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    for kind, fit in fits.items():
        rows = stacks[stacks["kind"] == kind]
        (line,) = axes[0].plot(rows["depth"], rows["erf_std"], "o", label=f"{kind}: alpha {fit.exponent:.3f}")
        axes[0].plot(rows["depth"], fit.prefactor * rows["depth"] ** fit.exponent, "-", color=line.get_color())
        axes[1].plot(rows["depth"], rows["erf_trf_ratio"], "o-", color=line.get_color(), label=kind)
    depths = np.asarray(sorted(stacks["depth"].unique()), dtype=float)
    first = stacks[stacks["depth"] == depths[0]]["erf_trf_ratio"].mean()
    axes[1].plot(depths, first * np.sqrt(depths[0] / depths), "k--", label="1/sqrt(n) reference")
    for ax, label in ((axes[0], "ERF std (pixels)"), (axes[1], "ERF size / TRF size")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth n (layers)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[0].set_title("ERF growth with depth (Luo et al.: n^0.5)")
    axes[1].set_title("ERF relative to TRF")
    for residual_flag, rows in residual.groupby("residual"):
        axes[2].plot(rows["blocks_per_stage"], rows["erf_std"], "o-", label="residual" if residual_flag else "plain")
    axes[2].set_xlabel("blocks per stage")
    axes[2].set_ylabel("ERF std at initialisation (pixels)")
    axes[2].set_title("Plain against residual at equal depth")
    axes[2].legend(fontsize=8)
    return save(fig, path)


def rf_laws_kernel_figure(kernels: pd.DataFrame, path: str | Path) -> Path:
    """RepLKNet's area ratios (columns ``area_ratio_<t in %>``) and the ERF std against the depthwise kernel size."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for column in (c for c in kernels.columns if c.startswith("area_ratio_")):
        axes[0].plot(kernels["kernel_size"], kernels[column], "o-", label=f"t = {column.removeprefix('area_ratio_')}%")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("high-contribution area ratio (common frame)")
    axes[1].plot(kernels["kernel_size"], kernels["erf_std"], "o-")
    axes[1].set_ylabel("ERF std (pixels)")
    for ax in axes:
        ax.set_xlabel("depthwise kernel size k")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Kernel size at fixed depth ({kernels['depth'].iloc[0]} separable blocks), at initialisation")
    return save(fig, path)


def rf_laws_trainability_figure(trainability: pd.DataFrame, training: pd.DataFrame, path: str | Path) -> Path:
    """Accuracy against depth (plain/residual x norm) and ERF std before and after training per variant."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
    for (norm, residual), rows in trainability.groupby(["norm", "residual"]):
        label = f"{'residual' if residual else 'plain'}, norm {norm}"
        # Intervals clipped to the possible range [0, 1]: with two seeds the t interval is wide.
        low, high = rows["test_acc_low"].clip(0, 1), rows["test_acc_high"].clip(0, 1)
        error = np.vstack([rows["test_acc"] - low, high - rows["test_acc"]])
        axes[0].errorbar(
            rows["blocks_per_stage"],
            rows["test_acc"] * 100,
            yerr=np.nan_to_num(error) * 100,
            marker="o",
            capsize=3,
            label=label,
        )
    axes[0].set_xlabel("blocks per stage")
    axes[0].set_ylabel("test accuracy (%, 95% interval over seeds)")
    axes[0].set_ylim(0, 100)
    axes[0].set_title("What made depth trainable")
    axes[0].legend(fontsize=8)
    positions = np.arange(len(training))
    axes[1].bar(positions - 0.2, training["erf_std_init"], 0.4, label="initialisation")
    axes[1].bar(positions + 0.2, training["erf_std_trained"], 0.4, label="trained")
    axes[1].set_xticks(positions, training["variant"], rotation=60, ha="right", fontsize=7)
    axes[1].set_ylabel("ERF std (pixels)")
    axes[1].set_title("ERF before and after training")
    axes[1].legend(fontsize=8)
    return save(fig, path)
