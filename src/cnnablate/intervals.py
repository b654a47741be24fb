"""One interval engine for every number the report prints: accuracies, differences to base, speed ratios and
the per-seed numbers of the analyses, with their multiplicity correction and the smallest effect they resolve.

Why this method. A study scores every run on the same test images, so an accuracy is uncertain in two crossed
ways: another set of training seeds would move it, and so would another draw of test images. A variant's
accuracy is the mean over its seeds (s) and images (i) of a 0/1 correctness c[s, i]; the variance of that mean
is estimated as

    var(per-seed accuracies) / n  +  var(per-image accuracy averaged over seeds) / N

(crossed random effects, e.g. Bouthillier et al. 2021, "Accounting for variance in machine learning
benchmarks"). Each term also holds the seed x image interaction, once more than needed, so the sum errs wide.
A difference to base is the same computation on c_variant[s, i] - c_base[s, i]: paired twice, by seed (same data
order and augmentation stream) and by image (two models err together on hard images, which an unpaired
interval such as Newcombe's ignores). The interval is Student's t with Welch-Satterthwaite degrees of freedom
(the seed term has n - 1, the image term N - 1), cut to the quantity's bounds: an accuracy lies in [0, 1], a
difference in [-1, 1]. Ratios (steps to a target) are paired by seed on the log scale, so they stay positive.
Numbers measured once per run with no test images (the analyses' tables) take the seed term alone.

Hand-written here, and why: the crossed variance and the Satterthwaite combination (no maintained library
computes a two-way crossed design from a 0/1 matrix), and the detectable difference, solved on scipy's
noncentral t with the combined standard error and degrees of freedom (statsmodels' power classes take one
sample's standard deviation and n - 1 degrees of freedom, not a sum of two variance components). Quantiles
come from scipy.stats and the Holm correction from statsmodels. ``tests/test_intervals.py`` checks the engine
against simulated studies with a known answer: coverage, the family-wise false verdict rate under no effect,
and power at an injected one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE
POWER = 0.8  # the power at which the report states the smallest difference a design could detect
ACCURACY_BOUNDS = (0.0, 1.0)
DIFFERENCE_BOUNDS = (-1.0, 1.0)
MAX_SEEDS_NEEDED = 1000  # beyond this, "more seeds" is not an answer: the test set's own error dominates


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval and the variance components it came from.

    ``log``: computed on the log scale (a ratio); value, low and high are then back on the ratio scale, and
    ``null`` is the value of no effect on the scale the test runs on (0 for a difference or a log ratio)."""

    value: float
    low: float
    high: float
    seeds: int
    seed_variance: float  # sample variance of the per-seed values (NaN with one seed)
    image_variance: float  # variance of the mean from the finite test set (0 without images)
    image_df: float
    log: bool = False
    null: float = 0.0

    @property
    def centre(self) -> float:
        """The estimate on the scale the test runs on."""
        return math.log(self.value) if self.log else self.value

    @property
    def se(self) -> float:
        return _standard_error(self.seed_variance, self.seeds, self.image_variance, self.image_df)[0]

    @property
    def df(self) -> float:
        return _standard_error(self.seed_variance, self.seeds, self.image_variance, self.image_df)[1]

    @property
    def p_value(self) -> float:
        """Two-sided p-value of no effect (t with the interval's degrees of freedom); NaN without an interval."""
        if math.isnan(self.se):
            return math.nan
        if self.se == 0:
            return 1.0 if self.centre == self.null else 0.0
        return float(2 * stats.t.sf(abs(self.centre - self.null) / self.se, self.df))

    def detectable(self, alpha: float = ALPHA, power: float = POWER) -> float:
        """The smallest true effect this design detects with ``power`` at two-sided level ``alpha``, on the test's
        scale (a difference of accuracies, or a log ratio)."""
        return _detectable(self.se, self.df, alpha, power)

    def seeds_needed(self, alpha: float = ALPHA, power: float = POWER) -> int | None:
        """How many seeds would detect the observed effect with ``power``, the test set and the per-seed spread
        unchanged; None when no number up to MAX_SEEDS_NEEDED would (the test set's own error, or no spread to
        estimate, is the limit)."""
        effect = abs(self.centre - self.null)
        if math.isnan(self.seed_variance) or effect == 0:
            return None

        def detects(seeds: int) -> bool:
            se, df = _standard_error(self.seed_variance, seeds, self.image_variance, self.image_df)
            return _detectable(se, df, alpha, power) <= effect

        if not detects(MAX_SEEDS_NEEDED):
            return None
        low, high = 1, MAX_SEEDS_NEEDED  # the detectable difference shrinks with every seed: bisect
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if detects(middle) else (middle, high)
        return high


def _standard_error(seed_variance: float, seeds: int, image_variance: float, image_df: float) -> tuple[float, float]:
    """Standard error and Welch-Satterthwaite degrees of freedom of the two variance components."""
    if seeds < 2 or math.isnan(seed_variance):
        return math.nan, math.nan
    parts = [(seed_variance / seeds, seeds - 1), (image_variance, image_df)]
    variance = sum(v for v, _ in parts)
    denominator = sum(v * v / df for v, df in parts if v > 0 and df > 0)
    return math.sqrt(variance), (variance * variance / denominator if denominator > 0 else math.inf)


def _detectable(se: float, df: float, alpha: float, power: float) -> float:
    """The effect a two-sided t test at ``alpha`` with ``df`` degrees of freedom detects with ``power`` when its
    standard error is ``se``: solved on the noncentral t (scipy), which stays exact at the few degrees of
    freedom of a three-seed study, where the normal shortcut (t_{1-a/2} + t_{power}) x SE promises too much."""
    if math.isnan(se):
        return math.nan
    if se == 0:
        return 0.0
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(shift: float) -> float:
        # the far tail (an effect called in the wrong direction) can come back NaN from scipy where it is ~0
        wrong_way = float(np.nan_to_num(stats.nct.cdf(-critical, df, shift)))
        return float(stats.nct.sf(critical, df, shift)) + wrong_way - power

    upper = critical + stats.norm.ppf(power) + 1.0
    while shortfall(upper) < 0:
        upper *= 2
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-6) * se)


def _estimate(
    per_seed: np.ndarray,
    image_variance: float,
    image_df: float,
    value: float,
    bounds: tuple[float, float] | None,
    log: bool = False,
) -> Estimate:
    """``value`` and ``per_seed`` on the test's scale (logs for a ratio); the result back on the ratio scale."""
    seeds = int(per_seed.size)
    seed_variance = float(per_seed.var(ddof=1)) if seeds >= 2 else math.nan
    se, df = _standard_error(seed_variance, seeds, image_variance, image_df)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df) * se) if seeds >= 2 else math.nan
    low, high = value - half, value + half
    if log:
        value, low, high = math.exp(value), math.exp(low), math.exp(high)
    if bounds is not None and seeds >= 2:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(value, low, high, seeds, seed_variance, image_variance, image_df, log)


def _finite(values: Iterable[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def accuracy(correct: np.ndarray) -> Estimate:
    """A variant's test accuracy from its runs' per-image correctness (seeds x images, 0/1)."""
    correct = np.asarray(correct, dtype=float)
    images = correct.shape[1]
    image_variance = float(correct.mean(axis=0).var(ddof=1)) / images
    return _estimate(correct.mean(axis=1), image_variance, images - 1, float(correct.mean()), ACCURACY_BOUNDS)


def difference(correct: np.ndarray, other: np.ndarray) -> Estimate:
    """``correct``'s accuracy minus ``other``'s, paired by seed (rows in the same seed order) and by image."""
    paired = np.asarray(correct, dtype=float) - np.asarray(other, dtype=float)
    images = paired.shape[1]
    image_variance = float(paired.mean(axis=0).var(ddof=1)) / images
    return _estimate(paired.mean(axis=1), image_variance, images - 1, float(paired.mean()), DIFFERENCE_BOUNDS)


def accuracy_without_images(accuracies: Iterable[float | None], images: float) -> Estimate:
    """A variant's accuracy when its runs kept no per-image predictions (runs older than the file): the image
    term is the binomial variance p(1 - p) / N of the mean accuracy, as if every image were an independent draw."""
    per_seed = _finite(accuracies)
    if per_seed.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, math.nan, math.nan, math.nan)
    mean = float(per_seed.mean())
    return _estimate(per_seed, mean * (1 - mean) / images, images - 1, mean, ACCURACY_BOUNDS)


def difference_without_images(
    accuracy_by_seed: Mapping[int, float | None], other_by_seed: Mapping[int, float | None], images: float
) -> Estimate:
    """The paired-by-seed difference of two variants' accuracies without per-image predictions: the image term
    treats the two accuracies as independent (p1(1 - p1) + p2(1 - p2)) / N, wider than the paired one."""
    seeds = [s for s in accuracy_by_seed if _both_finite(accuracy_by_seed.get(s), other_by_seed.get(s))]
    a = np.asarray([accuracy_by_seed[s] for s in seeds], dtype=float)
    b = np.asarray([other_by_seed[s] for s in seeds], dtype=float)
    if not seeds:
        return Estimate(math.nan, math.nan, math.nan, 0, math.nan, math.nan, math.nan)
    image_variance = (a.mean() * (1 - a.mean()) + b.mean() * (1 - b.mean())) / images
    return _estimate(a - b, float(image_variance), images - 1, float((a - b).mean()), DIFFERENCE_BOUNDS)


def _both_finite(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and not math.isnan(a) and not math.isnan(b)


def seed_mean(values: Iterable[float | None], bounds: tuple[float, float] | None = None) -> Estimate:
    """The mean of a number measured once per run (no test images), with the t interval over seeds, cut to
    ``bounds``; a positive quantity whose interval would leave zero is better served by ``ratio_mean``."""
    per_seed = _finite(values)
    if per_seed.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, math.nan, 0.0, math.inf)
    return _estimate(per_seed, 0.0, math.inf, float(per_seed.mean()), bounds)


def ratio_mean(values: Iterable[float | None]) -> Estimate:
    """The geometric mean of a positive ratio measured once per run, with its t interval on the log scale: it
    stays positive (an arithmetic interval of ratios can cross zero)."""
    per_seed = _finite(values)
    per_seed = per_seed[per_seed > 0]
    if per_seed.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, math.nan, 0.0, math.inf, log=True)
    logs = np.log(per_seed)
    return _estimate(logs, 0.0, math.inf, float(logs.mean()), None, log=True)


def paired_ratio(values: Mapping[int, float | None], other: Mapping[int, float | None]) -> Estimate:
    """values[seed] / other[seed], paired by seed, as a geometric mean with its interval (``ratio_mean``); seeds
    where either is missing (a target never reached) are left out, and ``seeds`` says how many pairs remain."""
    return ratio_mean(
        values[seed] / other[seed]
        for seed in values
        if _both_finite(values.get(seed), other.get(seed)) and values[seed] > 0 and other[seed] > 0
    )


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """Holm-adjusted p-values (family-wise error at ``alpha``) over the comparisons that have one; NaN stays NaN."""
    present = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    if present:
        corrected = multipletests([p_values[i] for i in present], alpha=alpha, method="holm")[1]
        for index, value in zip(present, corrected, strict=True):
            adjusted[index] = float(value)
    return adjusted


def family_alpha(comparisons: int, alpha: float = ALPHA) -> float:
    """The level Holm's first (strictest) step tests at: the one a single true effect among ``comparisons`` must
    pass, so the level at which the study's detectable differences are stated."""
    return alpha / max(comparisons, 1)
