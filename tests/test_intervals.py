"""The interval engine against hand computations and against simulated studies with a known answer.

A simulated study: N test images drawn from a population whose per-image difficulty q_i is known, runs (variant,
seed) whose correctness on image i is Bernoulli(q_i + u) with a per-run offset u ~ N(0, SEED_SD) (training
randomness), base and several variants. The truth is known: every accuracy's expectation is mean(q), a variant
with no effect differs from base by 0, an injected effect by DELTA.
"""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from scipy import stats

from cnnablate import intervals

IMAGES, SEEDS, VARIANTS, STUDIES = 2000, 3, 6, 400
SEED_SD = 0.008
TRUE_ACCURACY = 0.05 + 0.9 * 0.8  # q = 0.05 + 0.9 x Beta(4, 1): mean 0.77, inside [0.05, 0.95]


@pytest.fixture(autouse=True)
def _no_full_collection_per_holm_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """statsmodels' Holm branch runs gc.collect() on every call (48 ms here): harmless once per report, 40 s over
    the simulations' 800 calls. Skipping it changes no number."""
    monkeypatch.setattr(gc, "collect", lambda *args: 0)  # it imports gc inside the function


def _difficulty(rng: np.random.Generator) -> np.ndarray:
    return 0.05 + 0.9 * rng.beta(4, 1, IMAGES)


def _runs(rng: np.random.Generator, q: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """SEEDS runs of one variant on the study's images: seeds x images, 0/1."""
    offsets = rng.normal(0, SEED_SD, (SEEDS, 1))
    return rng.random((SEEDS, q.size)) < np.clip(q + shift + offsets, 0, 1)


def _study(rng: np.random.Generator, shifts: list[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    q = _difficulty(rng)
    return _runs(rng, q), [_runs(rng, q, shift) for shift in shifts]


def test_accuracy_interval_is_the_crossed_variance_by_hand() -> None:
    correct = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]])
    estimate = intervals.accuracy(correct)
    per_seed, per_image = correct.mean(axis=1), correct.mean(axis=0)
    seed_part, image_part = per_seed.var(ddof=1) / 3, per_image.var(ddof=1) / 4
    df = (seed_part + image_part) ** 2 / (seed_part**2 / 2 + image_part**2 / 3)
    half = stats.t.ppf(0.975, df) * math.sqrt(seed_part + image_part)
    assert estimate.value == pytest.approx(correct.mean())
    assert (estimate.low, estimate.high) == pytest.approx((correct.mean() - half, min(1.0, correct.mean() + half)))
    assert estimate.df == pytest.approx(df)


def test_intervals_stay_inside_their_bounds() -> None:
    near_ceiling = np.ones((2, 50))
    near_ceiling[0, :3] = 0
    accuracy = intervals.accuracy(near_ceiling)
    assert 0 <= accuracy.low <= accuracy.value <= accuracy.high <= 1
    difference = intervals.difference(near_ceiling, 1 - near_ceiling)
    assert -1 <= difference.low <= difference.high <= 1
    ratio = intervals.paired_ratio({0: 10.0, 1: 900.0}, {0: 100.0, 1: 100.0})
    assert 0 < ratio.low < ratio.value < ratio.high
    assert intervals.seed_mean([0.2, 0.9], bounds=(0, 1)).low == 0.0


def test_one_seed_gives_no_interval_and_no_p_value() -> None:
    estimate = intervals.difference(np.ones((1, 10)), np.zeros((1, 10)))
    assert estimate.value == 1.0
    assert math.isnan(estimate.low) and math.isnan(estimate.p_value) and estimate.seeds_needed() is None


def test_pairing_by_image_is_narrower_than_treating_the_accuracies_as_independent() -> None:
    rng = np.random.default_rng(0)
    base, (variant,) = _study(rng, [0.0])
    paired = intervals.difference(variant, base)
    unpaired = intervals.difference_without_images(
        dict(enumerate(variant.mean(axis=1))), dict(enumerate(base.mean(axis=1))), IMAGES
    )
    assert paired.value == pytest.approx(unpaired.value)
    assert paired.image_variance < unpaired.image_variance


def test_simulated_studies_cover_the_truth_and_keep_the_family_wise_error_under_holm() -> None:
    """No variant differs from base: the family-wise rate of false verdicts under Holm stays at 5% (here
    within the simulation's own error), and the 95% intervals of accuracies and differences cover the truth."""
    rng = np.random.default_rng(1)
    false_families, covered_accuracy, covered_difference, total = 0, 0, 0, 0
    for _ in range(STUDIES):
        base, variants = _study(rng, [0.0] * (VARIANTS - 1))
        estimates = [intervals.difference(variant, base) for variant in variants]
        adjusted = intervals.holm([e.p_value for e in estimates])
        false_families += any(p < intervals.ALPHA for p in adjusted)
        for variant, estimate in zip(variants, estimates, strict=True):
            accuracy = intervals.accuracy(variant)
            covered_accuracy += accuracy.low <= TRUE_ACCURACY <= accuracy.high
            covered_difference += estimate.low <= 0 <= estimate.high
            total += 1
    family_wise = false_families / STUDIES
    slack = 2.5 * math.sqrt(0.05 * 0.95 / STUDIES)
    print(
        f"family-wise false verdicts {family_wise:.3f}, coverage accuracy {covered_accuracy / total:.3f}, "
        f"difference {covered_difference / total:.3f}"
    )
    assert family_wise <= intervals.ALPHA + slack
    assert covered_accuracy / total >= 0.93
    assert covered_difference / total >= 0.93


def test_an_injected_difference_at_the_stated_detectable_size_is_found_at_the_stated_power() -> None:
    """The detectable difference the engine states for a design (80% power at the Holm-first-step level for
    VARIANTS - 1 comparisons) is injected into one variant: it is detected in about 80% of simulated studies."""
    rng = np.random.default_rng(2)
    alpha = intervals.family_alpha(VARIANTS - 1)
    designs = [intervals.difference(variants[0], base) for base, variants in (_study(rng, [0.0]) for _ in range(50))]
    # each design's statement scales with its estimated SE; their root mean square is the statement at the true SE
    delta = float(np.sqrt(np.mean([design.detectable(alpha) ** 2 for design in designs])))
    detected = 0
    for _ in range(STUDIES):
        base, variants = _study(rng, [delta] + [0.0] * (VARIANTS - 2))
        adjusted = intervals.holm([intervals.difference(variant, base).p_value for variant in variants])
        detected += adjusted[0] < intervals.ALPHA
    power = detected / STUDIES
    print(f"detectable difference {delta * 100:.2f} points, power {power:.3f}")
    assert 0.70 <= power <= 0.95


def test_seeds_needed_shrink_the_detectable_difference_to_the_observed_one() -> None:
    rng = np.random.default_rng(3)
    base, (variant,) = _study(rng, [0.04])
    estimate = intervals.difference(variant, base)
    needed = estimate.seeds_needed()
    assert needed is not None
    smaller = intervals.Estimate(
        estimate.value, 0, 0, needed - 1, estimate.seed_variance, estimate.image_variance, estimate.image_df
    )
    exact = intervals.Estimate(
        estimate.value, 0, 0, needed, estimate.seed_variance, estimate.image_variance, estimate.image_df
    )
    assert exact.detectable() <= abs(estimate.value) or needed == 2
    assert needed == 2 or smaller.detectable() > abs(estimate.value)


def test_holm_matches_statsmodels_and_leaves_missing_p_values_missing() -> None:
    adjusted = intervals.holm([0.01, math.nan, 0.04, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.06) and adjusted[3] == pytest.approx(0.06)
