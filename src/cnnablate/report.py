"""The study report: seaborn figures, tables and findings written from the numbers, as one HTML page.

The page embeds every image (base64), so it opens from disk with no server; the same figures are flagged
for Snakemake's own report.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import yaml

from cnnablate.config import Study
from cnnablate.results import collect_results, summarize
from cnnablate.tracking import numeric_items

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _points(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].astype(float) * 100


def accuracy_figure(
    results: pd.DataFrame, summary: pd.DataFrame, ablation: str, members: list[str], path: Path
) -> Path:
    """Every seed's accuracy and the mean with its 95% interval, for the variants of one ablation."""
    runs = results[results["variant"].isin(members)].copy()
    runs["test accuracy (%)"] = _points(runs, "test_acc")
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(members) + 2), 3.8))
    sns.stripplot(
        data=runs,
        x="variant",
        y="test accuracy (%)",
        order=members,
        color="0.35",
        size=6,
        ax=ax,
        jitter=0.08,
        label="single seed",
    )
    stats = summary.set_index("variant").loc[members]
    means = stats["test_acc_mean"].to_numpy() * 100
    low = np.nan_to_num(means - stats["test_acc_ci_low"].to_numpy() * 100)
    high = np.nan_to_num(stats["test_acc_ci_high"].to_numpy() * 100 - means)
    ax.errorbar(
        range(len(members)),
        means,
        yerr=[low, high],
        fmt="D",
        color="C3",
        capsize=6,
        markersize=7,
        label="mean, 95% CI",
    )
    for index, variant in enumerate(members):
        if stats.loc[variant, "diverged"]:
            ax.annotate(
                f"{int(stats.loc[variant, 'diverged'])} diverged",
                (index, np.nanmin([means[index], 100])),
                textcoords="offset points",
                xytext=(0, -18),
                ha="center",
                color="C3",
                fontsize=8,
            )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    ax.legend(unique.values(), unique.keys(), loc="best", fontsize=8)
    ax.set_title(f"Ablation '{ablation}': test accuracy per variant ({results['seed'].nunique()} seeds)")
    ax.set_xlabel("variant")
    ax.tick_params(axis="x", rotation=20)
    return _save(fig, path)


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both lower cost and higher accuracy, by increasing cost."""
    order = np.lexsort((-accuracy, cost))
    front, best = [], -np.inf
    for index in order:
        if accuracy[index] > best:
            front.append(index)
            best = accuracy[index]
    return np.asarray(front, dtype=int)


def cost_figure(summary: pd.DataFrame, path: Path) -> Path:
    """Accuracy against parameters and against MACs (log axes), Pareto front marked."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, column, label in zip(axes, ("params_mean", "macs_mean"), ("parameters", "MACs per image"), strict=True):
        data = summary.dropna(subset=[column, "test_acc_mean"])
        cost, accuracy = data[column].to_numpy(), data["test_acc_mean"].to_numpy() * 100
        sns.scatterplot(x=cost, y=accuracy, hue=data["arch"].to_numpy(), style=data["arch"].to_numpy(), s=70, ax=ax)
        for x, y, name in zip(cost, accuracy, data["variant"], strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        front = pareto_front(cost, accuracy)
        ax.step(cost[front], accuracy[front], where="post", color="C3", lw=1.5, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (log scale)")
        ax.set_ylabel("test accuracy (%), mean over seeds")
        ax.set_title(f"Accuracy against {label}")
        ax.legend(fontsize=8)
    return _save(fig, path)


def rf_figure(summary: pd.DataFrame, path: Path) -> Path:
    """ERF size against TRF size per variant, with the square-root law of a uniform 3x3 stack."""
    data = summary.dropna(subset=["trf_size_mean", "erf_std_trained_mean"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if data.empty:
        ax.text(0.5, 0.5, "no variant with a spatial feature map", ha="center", transform=ax.transAxes)
        return _save(fig, path)
    for stage, marker in (("init", "o"), ("trained", "D")):
        ax.scatter(
            data["trf_size_mean"],
            data[f"erf_std_{stage}_mean"],
            marker=marker,
            s=50,
            label=f"ERF std, {'at initialisation' if stage == 'init' else 'trained'}",
        )
    for _, row in data.iterrows():
        ax.annotate(
            row["variant"],
            (row["trf_size_mean"], row["erf_std_trained_mean"]),
            textcoords="offset points",
            xytext=(4, 3),
            fontsize=7,
        )
    trf = np.linspace(1, data["trf_size_mean"].max() * 1.05, 200)
    ax.plot(trf, np.sqrt((trf - 1) / 3), "k--", lw=1, label="uniform 3x3 stack: sqrt(n (k²-1)/12)")
    ax.plot(trf, trf / math.sqrt(12), "k:", lw=1, label="flat over the TRF (std = TRF/sqrt 12)")
    ax.set_xlabel("theoretical receptive field (pixels)")
    ax.set_ylabel("effective receptive field std (pixels)")
    ax.set_title("Effective against theoretical receptive field")
    ax.legend(fontsize=7)
    return _save(fig, path)


def erf_grid_figure(results_dir: Path, variants: list[str], seed: int, path: Path) -> Path:
    """ERF maps at initialisation and after training, side by side, for every spatial variant."""
    maps = []
    for variant in variants:
        run = results_dir / "runs" / variant / f"seed{seed}"
        init, trained = np.load(run / "erf_init.npy"), np.load(run / "erf_trained.npy")
        if init.size > 1:
            maps.append((variant, init, trained))
    fig, axes = plt.subplots(max(1, len(maps)), 2, figsize=(5.4, 2.5 * max(1, len(maps))), squeeze=False)
    for row, (variant, init, trained) in enumerate(maps):
        for column, (erf, stage) in enumerate(((init, "init"), (trained, "trained"))):
            ax = axes[row, column]
            ax.imshow(np.log10(erf / erf.max() + 1e-4), cmap="magma", vmin=-4, vmax=0)
            ax.set_title(f"{variant}: {stage}", fontsize=8)
            ax.set_axis_off()
    fig.suptitle(f"ERF maps (log10 of relative gradient, seed {seed})", fontsize=10)
    return _save(fig, path)


def erf_depth_table(results_dir: Path, variants: list[str], seeds: list[int]) -> pd.DataFrame:
    """ERF and TRF after every block of every spatial variant and seed (from measures.json)."""
    rows = []
    for variant in variants:
        for seed in seeds:
            measures = json.loads((results_dir / "runs" / variant / f"seed{seed}" / "measures.json").read_text())
            rows += [{"variant": variant, "seed": seed, **row} for row in measures.get("erf_by_depth", [])]
    return pd.DataFrame(rows)


def erf_depth_figure(depth: pd.DataFrame, path: Path) -> Path:
    """ERF/TRF ratio against depth, trained and at initialisation: the ERF fills less of the TRF as it grows."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, stage in zip(axes, ("init", "trained"), strict=True):
        if not depth.empty:
            sns.lineplot(
                data=depth,
                x="depth",
                y=f"erf_trf_ratio_{stage}",
                hue="variant",
                marker="o",
                ax=ax,
                errorbar=("ci", 95),
                legend=stage == "trained",
            )
        ax.set_xlabel("depth (convolution blocks from the input)")
        ax.set_ylabel("ERF size / TRF size")
        ax.set_title("at initialisation" if stage == "init" else "after training")
    if not depth.empty:
        axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Effective over theoretical receptive field, block by block")
    return _save(fig, path)


def learning_curves_figure(results_dir: Path, ablation: str, members: list[str], seeds: list[int], path: Path) -> Path:
    """Validation accuracy and loss per step for the variants of one ablation (mean and 95% CI over seeds)."""
    frames = []
    for variant in members:
        for seed in seeds:
            history = pd.read_csv(results_dir / "runs" / variant / f"seed{seed}" / "history.csv")
            frames.append(history.assign(variant=variant, seed=seed))
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if not curves.empty:
        curves["validation accuracy (%)"] = curves["val_acc"] * 100
        sns.lineplot(data=curves, x="step", y="validation accuracy (%)", hue="variant", errorbar=("ci", 95), ax=axes[0])
        sns.lineplot(
            data=curves,
            x="step",
            y="val_loss",
            hue="variant",
            errorbar=("ci", 95),
            ax=axes[1],
            legend=False,
        )
    axes[1].set_ylabel("validation cross-entropy")
    for ax in axes:
        ax.set_xlabel("optimiser step")
    fig.suptitle(f"Learning curves, ablation '{ablation}'")
    return _save(fig, path)


def fc_vs_conv_figure(summary: pd.DataFrame, path: Path) -> Path:
    """What locality and weight sharing buy: accuracy and parameters of fc, local and conv."""
    data = summary[summary["variant"].isin(["base", "arch-fc", "arch-local", "arch-conv"])]  # arch alone differs
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    order = [a for a in ("fc", "local", "conv") if a in set(data["arch"])]
    data = data.set_index("arch").loc[order].reset_index()
    axes[0].bar(
        data["arch"],
        data["test_acc_mean"] * 100,
        yerr=np.nan_to_num(
            [
                (data["test_acc_mean"] - data["test_acc_ci_low"]) * 100,
                (data["test_acc_ci_high"] - data["test_acc_mean"]) * 100,
            ]
        ),
        color=["C0", "C1", "C2"][: len(data)],
        capsize=6,
    )
    axes[0].set_ylabel("test accuracy (%), mean and 95% CI")
    axes[0].set_title("Accuracy")
    axes[1].bar(data["arch"], data["params_mean"], color=["C0", "C1", "C2"][: len(data)])
    axes[1].set_yscale("log")
    axes[1].set_ylabel("parameters (log scale)")
    axes[1].set_title("Parameters")
    for ax in axes:
        ax.set_xlabel("architecture (no prior -> locality -> locality + weight sharing)")
    return _save(fig, path)


def findings(summary: pd.DataFrame, study: Study) -> dict[str, list[str]]:
    """One sentence per variant and ablation, written from the table's numbers."""
    stats = summary.set_index("variant")
    base_acc = stats.loc["base", "test_acc_mean"] * 100
    text: dict[str, list[str]] = {}
    for ablation, block in study.config.get("ablations", {}).items():
        members = study.ablation_variants(ablation)
        lines = []
        for variant in members:
            if variant == "base":
                continue
            row = stats.loc[variant]
            label = ", ".join(f"{axis} {study.variants[variant].spec[axis]}" for axis in block)
            base_label = ", ".join(f"{axis} {study.config['base'][axis]}" for axis in block)
            interval = (
                ""
                if math.isnan(row["diff_ci_low"])
                else f", 95% CI [{row['diff_ci_low'] * 100:+.1f}, {row['diff_ci_high'] * 100:+.1f}]"
            )
            diverged = f"; {int(row['diverged'])} of {int(row['seeds'])} runs diverged" if row["diverged"] else ""
            lines.append(
                f"{label}: {row['diff_vs_base'] * 100:+.1f} points against {base_label} "
                f"({row['test_acc_mean'] * 100:.1f}% vs {base_acc:.1f}%){interval}, "
                f"{int(row['seeds'])} seeds{diverged}."
            )
        ranked = stats.loc[members, "test_acc_mean"].dropna().sort_values(ascending=False)
        if not ranked.empty:
            lines.insert(0, f"Best: {ranked.index[0]} at {ranked.iloc[0] * 100:.1f}% mean test accuracy.")
        text[ablation] = lines
    rf = summary.dropna(subset=["erf_trf_ratio_trained_mean"])
    if not rf.empty:
        lines = [
            f"{row.variant}: TRF {row.trf_size_mean:.0f} px, ERF/TRF {row.erf_trf_ratio_trained_mean:.2f} "
            f"trained ({row.erf_trf_ratio_init_mean:.2f} at init); training changed the ERF std by "
            f"x{row.erf_growth_mean:.2f}."
            for row in rf.itertuples()
        ]
        text["receptive fields"] = lines
    return text


def depth_findings(depth: pd.DataFrame) -> list[str]:
    """How the ERF/TRF ratio changes from the first to the last block, per variant (mean over seeds)."""
    if depth.empty:
        return []
    means = depth.groupby(["variant", "depth"], as_index=False).mean(numeric_only=True)
    lines = []
    for variant, group in means.groupby("variant", sort=False):
        first, last = group.iloc[0], group.iloc[-1]
        lines.append(
            f"{variant}: ERF/TRF falls from {first['erf_trf_ratio_trained']:.2f} after block 1 "
            f"(TRF {first['trf_size']:.0f} px) to {last['erf_trf_ratio_trained']:.2f} after block "
            f"{int(last['depth'])} (TRF {last['trf_size']:.0f} px), trained; at initialisation "
            f"{first['erf_trf_ratio_init']:.2f} to {last['erf_trf_ratio_init']:.2f}."
        )
    return lines


def analysis_columns(results_dir: Path, study: Study, analysis: str) -> list[str]:
    """The results.csv columns an analysis contributes (the numbers in one of its run files)."""
    variant, seed = next(iter(study.variants)), study.config["seeds"][0]
    path = results_dir / "runs" / variant / f"seed{seed}" / f"{analysis}.json"
    return list(numeric_items(json.loads(path.read_text()), "")) if path.exists() else []


def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>'
        f"{html.escape(alt)}</figcaption></figure>"
    )


def _table(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    return frame.to_html(index=False, na_rep="–", float_format=float_format.format, classes="table", border=0)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #aaa}figure{margin:1em 0}
img{max-width:100%}figcaption{font-size:.85em;color:#555}.table{border-collapse:collapse;font-size:.8em}
.table td,.table th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}pre{background:#f4f4f4;
padding:1em;overflow-x:auto}.scroll{overflow-x:auto}"""


# Marks the page with how many images failed to decode, so a headless browser can check the page.
SELF_CHECK = """<script>window.addEventListener("load", () => {
const images = [...document.images];
document.body.dataset.images = images.length;
document.body.dataset.brokenImages = images.filter(i => !i.complete || i.naturalWidth === 0).length;
});</script>"""


def build_report(
    study: Study,
    results_dir: str | Path,
    figures_dir: str | Path,
    html_path: str | Path,
    analyses: Mapping[str, list[str]],
    results_csv: str | Path,
    summary_csv: str | Path,
    interpret_dirs: list[str],
) -> dict[str, Any]:
    """Write results.csv, summary.csv, every figure and the self-contained index.html."""
    results_dir, figures_dir, html_path = Path(results_dir), Path(figures_dir), Path(html_path)
    figures_dir.mkdir(parents=True, exist_ok=True)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    results = collect_results(study, results_dir, analyses)
    summary = summarize(results)
    results.to_csv(results_csv, index=False)
    summary.to_csv(summary_csv, index=False)
    seeds = list(study.config["seeds"])

    sections: list[tuple[str, str]] = []
    notes = findings(summary, study)
    spatial = [v for v in study.variants if study.variants[v].spec["arch"] != "fc"]
    depth = erf_depth_table(results_dir, spatial, seeds)
    notes["receptive fields by depth"] = depth_findings(depth)
    sections.append(
        (
            "Findings",
            "".join(
                f"<h3>{html.escape(name)}</h3><ul>{''.join(f'<li>{html.escape(line)}</li>' for line in lines)}</ul>"
                for name, lines in notes.items()
            ),
        )
    )
    ablation_html = []
    for ablation in study.config.get("ablations", {}):
        members = study.ablation_variants(ablation)
        accuracy = accuracy_figure(results, summary, ablation, members, figures_dir / f"accuracy_{ablation}.png")
        curves = learning_curves_figure(results_dir, ablation, members, seeds, figures_dir / f"curves_{ablation}.png")
        ablation_html.append(
            f"<h3>{html.escape(ablation)}</h3>"
            + _image_tag(accuracy, f"Test accuracy per variant, ablation {ablation}")
            + _image_tag(curves, f"Learning curves, ablation {ablation}")
        )
    sections.append(("Ablations", "".join(ablation_html)))
    sections.append(
        (
            "Cost and receptive fields",
            "".join(
                [
                    _image_tag(
                        cost_figure(summary, figures_dir / "accuracy_vs_cost.png"),
                        "Accuracy against parameters and MACs (Pareto front in red)",
                    ),
                    _image_tag(rf_figure(summary, figures_dir / "trf_vs_erf.png"), "ERF against TRF per variant"),
                    _image_tag(
                        erf_depth_figure(depth, figures_dir / "erf_by_depth.png"),
                        "ERF/TRF block by block: the ERF fills less of the TRF as depth grows",
                    ),
                    _image_tag(
                        erf_grid_figure(results_dir, spatial, seeds[0], figures_dir / "erf_maps.png"),
                        "ERF maps at initialisation and after training",
                    ),
                    _image_tag(
                        fc_vs_conv_figure(summary, figures_dir / "fc_vs_conv.png"),
                        "fc against local against conv",
                    ),
                ]
            ),
        )
    )
    analysis_html = []
    for name, outputs in analyses.items():
        parts = [f"<h3>{html.escape(name)}</h3>"]
        columns = analysis_columns(results_dir, study, name)
        if columns and name != "measures":
            means = results.groupby("variant", sort=False)[columns].mean().reset_index()
            parts.append(
                f"<p>Mean over seeds of every number in <code>{name}.json</code>.</p>"
                f'<div class="scroll">{_table(means)}</div>'
            )
        for output in map(Path, outputs):
            if output.suffix == ".png":
                parts.append(_image_tag(output, f"{name}: {output.stem}"))
            elif output.suffix == ".csv":
                parts.append(f'<div class="scroll">{_table(pd.read_csv(output))}</div>')
        analysis_html.append("".join(parts))
    sections.append(("Analyses", "".join(analysis_html) or "<p>No analysis registered.</p>"))
    learned = []
    for directory in map(Path, interpret_dirs):
        variant = directory.parent.parent.name
        images = [
            _image_tag(png, f"{variant}: {png.stem.replace('_', ' ')}") for png in sorted(directory.glob("*.png"))
        ]
        learned.append(f"<h3>{html.escape(variant)}</h3>" + "".join(images))
    edge = summary[["variant", "edge_match_init_mean", "edge_match_trained_mean"]].dropna()
    learned.append(
        "<h3>Edge-detector likeness of first-layer filters</h3><p>Mean over filters of the best "
        "|correlation| with Sobel and Gabor kernels (1 = a perfect oriented edge detector).</p>" + _table(edge)
    )
    sections.append(("What the network learned", "".join(learned)))
    columns = [
        "variant",
        "ablations",
        "seeds",
        "diverged",
        "test_acc_mean",
        "test_acc_ci_low",
        "test_acc_ci_high",
        "diff_vs_base",
        "diff_ci_low",
        "diff_ci_high",
        "params_mean",
        "macs_mean",
        "trf_size_mean",
        "erf_std_trained_mean",
        "erf_trf_ratio_trained_mean",
        "train_seconds_mean",
    ]
    sections.append(
        (
            "Tables",
            "<h3>Per variant (summary.csv)</h3><div class='scroll'>"
            + _table(summary[[c for c in columns if c in summary]])
            + "</div><h3>Every run (results.csv)"
            "</h3><div class='scroll'>" + _table(results) + "</div>",
        )
    )
    study_config = yaml.safe_dump(study.config, sort_keys=False)
    sections.append(
        (
            "Reproduce",
            f"""<p>Config of this study:</p><pre>{html.escape(study_config)}</pre>
<pre>make setup            # .venv from uv.lock
.venv/bin/snakemake --cores all --configfile CONFIG   # this study's config file
.venv/bin/snakemake --configfile CONFIG --report reports/{study.name}/report.zip</pre>
<p>Per-run files: <code>{results_dir}/runs/&lt;variant&gt;/seed&lt;seed&gt;/</code>. MLflow: experiment
<code>{html.escape(study.name)}</code> in the tracking store of the config (default
<code>sqlite:///results/mlflow.db</code>); browse with <code>make mlflow-ui</code>.</p>""",
        )
    )
    toc = "".join(f'<li><a href="#{i}">{html.escape(title)}</a></li>' for i, (title, _) in enumerate(sections))
    body = "".join(
        f'<section id="{i}"><h2>{html.escape(title)}</h2>{content}</section>'
        for i, (title, content) in enumerate(sections)
    )
    n_runs, n_diverged = len(results), int(results["diverged"].astype(bool).sum())
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cnnablate: {html.escape(study.name)}"
        f"</title><style>{STYLE}</style></head><body><h1>cnnablate study '{html.escape(study.name)}'</h1>"
        f"<p>{len(study.variants)} variants x {len(seeds)} seeds = {n_runs} runs ({n_diverged} diverged), "
        f"dataset {html.escape(study.config['data']['dataset'])}.</p><ol>{toc}</ol>{body}{SELF_CHECK}</body></html>"
    )
    html_path.write_text(page)
    return {"runs": n_runs, "diverged": n_diverged, "findings": notes}
