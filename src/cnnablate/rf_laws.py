"""Receptive-field laws, measured: Luo et al. (2016) on depth, skip connections and training, RepLKNet on kernel size.

Luo, Li, Urtasun & Zemel (NeurIPS 2016, arXiv:1701.04128) state that the effective receptive field (ERF)
of an n-layer stack has a standard deviation growing like n^0.5 (exactly for uniform weights, about so
for random weights and with ReLUs) while the theoretical one (TRF) grows like n, so ERF/TRF falls like
n^-0.5; that skip connections make the ERF smaller; and that training enlarges it. Ding et al.
(RepLKNet, CVPR 2022, arXiv:2203.06717) state that large depthwise kernels enlarge the ERF, measured as
high-contribution area ratios, far more than depth does.

Each law is measured here beside its statement with a computed verdict: stacks of convolutions and the
study's own networks at initialisation need no training; trained numbers come from the study's runs
(``measures.json`` of the measure rule, ``metrics.json`` of training).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from cnnablate import intervals
from cnnablate.measure import AREA_THRESHOLDS, ERFResult, effective_rf
from cnnablate.measure.erf import area_ratios
from cnnablate.models import build_model
from cnnablate.power_law import CLOSE_TOLERANCE, UNIFORM_TOLERANCE, PowerLaw, fit_power_law

SQRT_LAW = 0.5  # Luo et al.: ERF std ~ n^0.5


# --------------------------------------------------------------------------------------------------
# Stacks of convolutions (Luo et al., section 2)


def conv_stack(depth: int, kernel_size: int, channels: int, weights: str, relu: bool, seed: int) -> nn.Sequential:
    """``depth`` stride-1 k x k convolutions (padding k // 2, no bias), optionally each followed by a ReLU.

    ``weights``: ``uniform`` (every weight 1 / (channels k^2): the gradient map is the n-fold convolution
    of a box, Luo et al.'s exact case) or ``random`` (Kaiming fan-in normal, seeded).
    """
    if weights not in ("uniform", "random"):
        raise ValueError(f"weights: unknown value {weights!r}; allowed values: uniform, random")
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
        fan_in = conv.weight[0].numel()
        with torch.no_grad():
            if weights == "uniform":
                conv.weight.fill_(1.0 / fan_in)
            else:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
        layers += [conv, nn.ReLU()] if relu else [conv]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class StackKind:
    """One family of stacks Luo et al. analyse."""

    name: str
    weights: str
    relu: bool
    statement: str


STACK_KINDS = (
    StackKind("uniform linear", "uniform", False, "ERF std grows like n^0.5 exactly (uniform weights)"),
    StackKind("random linear", "random", False, "ERF std grows like n^0.5 (random weights)"),
    StackKind("random ReLU", "random", True, "ERF std grows like about n^0.5 with ReLU nonlinearities"),
)


@dataclass(frozen=True)
class LawSettings:
    """What the no-training measurements use (chosen to run in about a minute on two CPU cores)."""

    depths: tuple[int, ...] = (2, 4, 8, 16, 32)
    kernel_size: int = 3
    channels: int = 8
    draws: int = 4  # weight draws averaged for random stacks
    images: int = 8  # random inputs per ERF
    image_size: int = 32
    kernel_sizes: tuple[int, ...] = (3, 7, 13, 19, 25, 31)
    kernel_depth: int = 4
    kernel_width: int = 8
    frame: int = 128  # side of the common frame of RepLKNet's area ratios (>= every compared TRF)
    seed: int = 0


def stack_rows(settings: LawSettings) -> pd.DataFrame:
    """ERF std and ERF/TRF of every stack kind at every depth (random kinds: mean over weight draws)."""
    rows = []
    shape = (settings.channels, settings.image_size, settings.image_size)
    for kind in STACK_KINDS:
        draws = 1 if kind.weights == "uniform" else settings.draws
        for depth in settings.depths:
            found = []
            for draw in range(draws):
                stack = conv_stack(depth, settings.kernel_size, settings.channels, kind.weights, kind.relu, draw)
                found.append(effective_rf(stack, input_size=shape, n_random=settings.images, seed=settings.seed))
            rows.append(
                {
                    "kind": kind.name,
                    "depth": depth,
                    "trf_size": found[0].trf.size[0],
                    "erf_std": float(np.mean([e.std_mean for e in found])),
                    "erf_trf_ratio": float(np.mean([e.erf_trf_ratio for e in found])),
                }
            )
    return pd.DataFrame(rows)


def stack_fits(stacks: pd.DataFrame, column: str) -> dict[str, PowerLaw]:
    """``column ~ depth^alpha`` for every stack kind (in :data:`STACK_KINDS` order), for the laws and the figure."""
    fits = {}
    for kind in STACK_KINDS:
        rows = stacks[stacks["kind"] == kind.name]
        fits[kind.name] = fit_power_law(rows["depth"], rows[column])
    return fits


# --------------------------------------------------------------------------------------------------
# The study's networks at initialisation


def network_erf(
    spec: Mapping[str, Any], settings: LawSettings, num_classes: int = 10, in_channels: int = 3
) -> ERFResult:
    """ERF of the last spatial feature map of ``spec`` at initialisation (seeded; random normal inputs)."""
    torch.manual_seed(settings.seed)
    model = build_model(spec, num_classes, in_channels, settings.image_size).eval()
    shape = (in_channels, settings.image_size, settings.image_size)
    return effective_rf(model, input_size=shape, n_random=settings.images, seed=settings.seed)


def residual_rows(base: Mapping[str, Any], depths: Iterable[int], settings: LawSettings) -> pd.DataFrame:
    """Plain against residual ERF at equal depth (blocks per stage), base otherwise, at initialisation."""
    rows = []
    for depth in depths:
        for residual in (False, True):
            erf = network_erf({**base, "blocks_per_stage": depth, "residual": residual}, settings)
            rows.append(
                {
                    "blocks_per_stage": depth,
                    "residual": residual,
                    "trf_size": erf.trf.size[0],
                    "erf_std": erf.std_mean,
                    "erf_trf_ratio": erf.erf_trf_ratio,
                }
            )
    return pd.DataFrame(rows)


def kernel_rows(base: Mapping[str, Any], settings: LawSettings) -> pd.DataFrame:
    """ERF std and area ratios against the depthwise kernel size at a fixed depth (one stage, no pooling)."""
    rows = []
    for k in settings.kernel_sizes:
        spec = {
            **base,
            "arch": "conv",
            "block": "separable",
            "kernel_size": k,
            "dilation": 1,
            "widths": [settings.kernel_width],
            "width": 1.0,
            "blocks_per_stage": settings.kernel_depth,
            "pool": "none",
        }
        erf = network_erf(spec, settings)
        ratios = area_ratios(erf.raw, settings.frame)
        rows.append(
            {
                "kernel_size": k,
                "depth": settings.kernel_depth,
                "trf_size": erf.trf.size[0],
                "erf_std": erf.std_mean,
                **{f"area_ratio_{round(t * 100)}": r for t, r in ratios.items()},
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# The study: runs, laws, verdicts


@dataclass
class StudyRuns:
    """Every run's spec, metrics and measures, one row per run."""

    frame: pd.DataFrame
    base: dict[str, Any]

    @classmethod
    def read(cls, run_dirs: Iterable[str | Path], base: Mapping[str, Any]) -> StudyRuns:
        rows = []
        for run_dir in map(Path, run_dirs):
            metrics = json.loads((run_dir / "metrics.json").read_text())
            measures = json.loads((run_dir / "measures.json").read_text())
            erf, erf_init = measures.get("erf") or {}, measures.get("erf_init") or {}
            rows.append(
                {
                    "variant": metrics["variant"],
                    "seed": metrics["seed"],
                    "spec": {**base, **metrics["spec"]},
                    "test_acc": metrics.get("test_acc"),
                    "val_acc": metrics.get("val_acc"),
                    "lr": metrics.get("lr"),
                    "trained": metrics.get("trained", not metrics.get("diverged", False)),
                    "erf_std_init": erf_init.get("std_mean"),
                    "erf_std_trained": erf.get("std_mean"),
                    "erf_by_depth": measures.get("erf_by_depth") or [],
                }
            )
        return cls(pd.DataFrame(rows), dict(base))

    def differing_only_in(self, axes: set[str]) -> pd.DataFrame:
        """Runs whose spec differs from base only in ``axes`` (base included)."""
        keep = [all(spec[a] == self.base[a] for a in self.base if a not in axes) for spec in self.frame["spec"]]
        return self.frame[keep]


def trainability_rows(runs: StudyRuns) -> pd.DataFrame:
    """Test accuracy (mean, 95% interval over seeds, cut to 0-100%) against depth for plain/residual x norm variants."""
    frame = runs.differing_only_in({"blocks_per_stage", "residual", "norm"})
    rows = []
    for variant, group in frame.groupby("variant", sort=False):
        spec = group["spec"].iloc[0]
        accuracy = intervals.seed_mean(group["test_acc"], intervals.ACCURACY_BOUNDS)  # cut to 0-100%
        mean, low, high = accuracy.value, accuracy.low, accuracy.high
        rows.append(
            {
                "variant": variant,
                "blocks_per_stage": spec["blocks_per_stage"],
                "residual": spec["residual"],
                "norm": spec["norm"],
                "test_acc": mean,
                "test_acc_low": low,
                "test_acc_high": high,
                "lr": group["lr"].mean() if group["lr"].notna().any() else None,
                "trained_runs": int(group["trained"].sum()),
                "runs": len(group),
            }
        )
    columns = ["variant", "blocks_per_stage", "residual", "norm", "test_acc", "test_acc_low", "test_acc_high"]
    frame = pd.DataFrame(rows, columns=[*columns, "lr", "trained_runs", "runs"])
    return frame.sort_values(["norm", "residual", "blocks_per_stage"]).reset_index(drop=True)


def training_rows(runs: StudyRuns) -> pd.DataFrame:
    """ERF std at initialisation and trained, per variant (mean over seeds), with their ratio's geometric mean and
    its interval on the log scale."""
    rows = []
    for variant, group in runs.frame.groupby("variant", sort=False):
        usable = group.dropna(subset=["erf_std_init", "erf_std_trained"])
        if usable.empty:
            continue
        # a ratio: geometric mean, interval on the log scale, so it stays positive
        growth = intervals.ratio_mean(usable["erf_std_trained"] / usable["erf_std_init"])
        mean, low, high = growth.value, growth.low, growth.high
        rows.append(
            {
                "variant": variant,
                "erf_std_init": usable["erf_std_init"].mean(),
                "erf_std_trained": usable["erf_std_trained"].mean(),
                "growth": mean,
                "growth_low": low,
                "growth_high": high,
                "erf_runs": len(usable),
            }
        )
    return pd.DataFrame(rows)


def base_depth_fits(runs: StudyRuns) -> dict[str, PowerLaw | None]:
    """ERF std ~ depth^alpha along base's blocks (mean over seeds per depth), at initialisation and trained."""
    base = runs.frame[runs.frame["variant"] == "base"]
    fits: dict[str, PowerLaw | None] = {}
    for stage in ("init", "trained"):
        per_depth: dict[int, list[float]] = {}
        for rows in base["erf_by_depth"]:
            for row in rows:
                value = row.get(f"erf_std_{stage}")
                if value is not None and math.isfinite(value) and value > 0:
                    per_depth.setdefault(row["depth"], []).append(value)
        depths = sorted(per_depth)
        fits[stage] = (
            fit_power_law(depths, [float(np.mean(per_depth[d])) for d in depths]) if len(depths) >= 3 else None
        )
    return fits


@dataclass
class Law:
    """One row of the laws table: the paper's statement, our measurement, and the verdict."""

    law: str
    paper: str
    statement: str
    measured: str
    verdict: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    notes: str = field(default="")


def _exponent_law(name: str, statement: str, fit: PowerLaw, expected: float, tolerance: float = CLOSE_TOLERANCE) -> Law:
    verdict = fit.verdict(expected, tolerance)
    why = (
        f"The fitted exponent {fit.exponent:.3f} (95% interval [{fit.low:.3f}, {fit.high:.3f}]) excludes the stated "
        f"{expected:g} and lies {abs(fit.exponent - expected):.3f} from it, beyond the {tolerance:g} counted as close."
    )
    return Law(
        law=name,
        paper="Luo et al. 2016",
        statement=statement,
        measured=f"alpha = {fit.describe()} over {fit.points} depths",
        verdict=verdict,
        value=fit.exponent,
        low=fit.low,
        high=fit.high,
        notes=why if verdict == "differs" else "",
    )


def growth_direction(growth: float, low: float, high: float) -> str:
    """'grew' / 'shrank' when the interval of trained / initial ERF std excludes 1, else 'did not change'.

    With one seed (no interval) the point estimate decides, and the sentence says there is no interval.
    """
    if math.isfinite(low) and math.isfinite(high) and low <= 1.0 <= high:
        return "did not change"
    return "grew" if growth > 1 else "shrank"


def training_sentence(training: pd.DataFrame, dataset: str, pattern_size: int | None) -> str:
    """What the ERF did with training, in words computed from the numbers."""
    base = training[training["variant"] == "base"]
    if base.empty:
        return "No trained base run with an ERF: the effect of training was not measured."
    row = base.iloc[0]
    direction = growth_direction(row["growth"], row["growth_low"], row["growth_high"])
    interval = (
        f" (95% interval of the ratio over seeds [{row['growth_low']:.2f}, {row['growth_high']:.2f}])"
        if math.isfinite(row["growth_low"])
        else " (one seed: no interval)"
    )
    changed = [growth_direction(*r) for r in training[["growth", "growth_low", "growth_high"]].itertuples(index=False)]
    sentence = (
        f"On {dataset}, training {direction} base's ERF std: {row['erf_std_init']:.2f} -> "
        f"{row['erf_std_trained']:.2f} px (x{row['growth']:.2f}){interval}. Across the {len(training)} variants it "
        f"grew in {changed.count('grew')}, shrank in {changed.count('shrank')} and did not change in "
        f"{changed.count('did not change')}. Luo et al. report that training on CIFAR-10 enlarges the ERF."
    )
    if pattern_size is not None and direction != "grew":
        pattern_std = math.sqrt((pattern_size**2 - 1) / 12)
        sentence += (
            f" The synthetic classes are decided by a {pattern_size}x{pattern_size} pattern (the std of a uniform "
            f"{pattern_size}-pixel box is {pattern_std:.2f} px): a network that only needs a small local detector "
            f"has no reason to spread its gradient, so this does not contradict a law stated for natural images, "
            f"whose evidence is spread out."
        )
    return sentence


def laws_table(
    stacks: pd.DataFrame,
    residual: pd.DataFrame,
    kernels: pd.DataFrame,
    base_fits: Mapping[str, PowerLaw | None],
    training: pd.DataFrame,
    training_text: str,
) -> pd.DataFrame:
    """Every measured law beside the paper's statement, with a computed verdict."""
    laws: list[Law] = []
    std_fits, ratio_fits = stack_fits(stacks, "erf_std"), stack_fits(stacks, "erf_trf_ratio")
    for kind in STACK_KINDS:
        fit = std_fits[kind.name]
        tolerance = UNIFORM_TOLERANCE if kind.weights == "uniform" else CLOSE_TOLERANCE
        laws.append(_exponent_law(f"ERF std vs depth: {kind.name} stack", kind.statement, fit, SQRT_LAW, tolerance))
    for kind in STACK_KINDS:
        fit = ratio_fits[kind.name]
        law = _exponent_law(f"ERF/TRF vs depth: {kind.name} stack", "ERF/TRF falls like n^-0.5", fit, -SQRT_LAW)
        laws.append(law)
    for stage, fit in base_fits.items():
        if fit is not None:
            law = _exponent_law(
                f"ERF std vs depth: base network, {'at initialisation' if stage == 'init' else 'trained'}",
                "ERF std grows like n^0.5 (stated for stride-1 stacks; base also pools between stages)",
                fit,
                SQRT_LAW,
            )
            laws.append(law)
    pivot = residual.pivot_table(index="blocks_per_stage", columns="residual", values="erf_std")
    ratio = pivot[True] / pivot[False]
    laws.append(
        Law(
            law="Skip connections: residual / plain ERF std at equal depth (initialisation)",
            paper="Luo et al. 2016",
            statement="skip connections make the ERF smaller",
            measured=", ".join(f"{d} blocks/stage: x{r:.3f}" for d, r in ratio.items()),
            verdict="agrees" if (ratio < 1).all() else ("mixed" if (ratio < 1).any() else "differs"),
            value=float(ratio.mean()),
            notes=""
            if (ratio < 1).any()
            else f"At every depth measured the residual network's ERF std is at least the plain one's "
            f"(ratios {ratio.min():.3f} to {ratio.max():.3f}), at initialisation.",
        )
    )
    for t in AREA_THRESHOLDS:
        column = f"area_ratio_{round(t * 100)}"
        rho = stats.spearmanr(kernels["kernel_size"], kernels[column]).statistic
        first, last = kernels[column].iloc[0], kernels[column].iloc[-1]
        grows = bool(last > first and rho > 0)
        laws.append(
            Law(
                law=f"Area ratio t={round(t * 100)}% vs depthwise kernel size (depth {kernels['depth'].iloc[0]})",
                paper="Ding et al. 2022 (RepLKNet)",
                statement="larger depthwise kernels give a larger high-contribution area",
                measured=(
                    f"k={kernels['kernel_size'].iloc[0]}: {first:.4f} -> k={kernels['kernel_size'].iloc[-1]}: "
                    f"{last:.4f} (Spearman rho {rho:.2f})"
                ),
                verdict="agrees" if grows else "differs",
                value=float(last / first) if first > 0 else None,
                notes=""
                if grows
                else f"The area did not grow with the kernel: {first:.4f} at the smallest kernel against {last:.4f} "
                f"at the largest, rank correlation {rho:.2f}.",
            )
        )
    base = training[training["variant"] == "base"]
    if not base.empty:
        row = base.iloc[0]
        laws.append(
            Law(
                law="Training: trained / initial ERF std of base",
                paper="Luo et al. 2016",
                statement="training enlarges the ERF",
                measured=f"x{row['growth']:.3f}",
                verdict={"grew": "agrees", "shrank": "differs", "did not change": "inconclusive"}[
                    growth_direction(row["growth"], row["growth_low"], row["growth_high"])
                ],
                value=float(row["growth"]),
                low=float(row["growth_low"]),
                high=float(row["growth_high"]),
                notes=training_text,
            )
        )
    return pd.DataFrame([asdict(law) for law in laws])


# --------------------------------------------------------------------------------------------------
# The study's outputs


def study_rf_laws(
    config: Mapping[str, Any],
    run_dirs: Iterable[str | Path],
    outputs: Mapping[str, str | Path],
    settings: LawSettings | None = None,
) -> pd.DataFrame:
    """The study-level analysis: laws table and its data, and figures (paths in ``outputs``); the trainability
    figure only when ``outputs`` names it (workflow/rules/rf_laws.smk does so for a study with a depth block)."""
    settings = settings or LawSettings()
    base = dict(config["base"])
    runs = StudyRuns.read(run_dirs, base)
    stacks = stack_rows(settings)
    depths = sorted({base["blocks_per_stage"], *runs.frame["spec"].map(lambda s: s["blocks_per_stage"])})
    spatial_base = base if base["arch"] != "fc" else {**base, "arch": "conv"}
    residual = residual_rows(spatial_base, depths if len(depths) > 1 else [1, 2, 4], settings)
    kernels = kernel_rows(spatial_base, settings)
    trainability = trainability_rows(runs)
    training = training_rows(runs)
    data = config["data"]
    pattern = data.get("synthetic", {}).get("pattern_size", 5) if data["dataset"] == "synthetic" else None
    text = training_sentence(training, data["dataset"], pattern)
    laws = laws_table(stacks, residual, kernels, base_depth_fits(runs), training, text)
    laws.to_csv(outputs["laws"], index=False, float_format="%.6g")
    measured = pd.concat(
        [stacks.assign(study="stack"), residual.assign(study="residual"), kernels.assign(study="kernel_size")]
    )
    measured.to_csv(outputs["measurements"], index=False, float_format="%.6g")
    trainability.merge(training, on="variant", how="outer").to_csv(
        outputs["trainability"], index=False, float_format="%.6g"
    )
    from cnnablate import figures  # matplotlib and seaborn: only the study draws

    figures.rf_laws_depth_figure(stacks, stack_fits(stacks, "erf_std"), residual, outputs["depth_figure"])
    figures.rf_laws_kernel_figure(kernels, outputs["kernel_figure"])
    if "trainability_figure" in outputs:  # only a study with a depth block asks what made depth trainable
        figures.rf_laws_trainability_figure(trainability, training, outputs["trainability_figure"])
    return laws
