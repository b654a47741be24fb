"""Power laws fitted with an interval on their exponent, and one run's ERF exponents along its depth.

The measure job writes every run's ``rf_laws.json`` from this module alone: numpy and ``scipy.special`` (0.08 s
to import), not ``scipy.stats`` and pandas (0.6 s, in each of the study's 30-odd measure jobs). The study's laws
(:mod:`cnnablate.rf_laws`) are fitted with the same functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import stdtrit

CONFIDENCE = 0.95
UNIFORM_TOLERANCE = 1e-3  # the uniform case is exact up to floating point
CLOSE_TOLERANCE = 0.1  # "about 0.5": within this of the law when the interval excludes it


@dataclass(frozen=True)
class PowerLaw:
    """``y = prefactor * x^exponent`` fitted by least squares on logs, with a Student-t interval on the exponent."""

    exponent: float
    low: float
    high: float
    prefactor: float
    points: int

    def verdict(self, expected: float, tolerance: float = CLOSE_TOLERANCE) -> str:
        """'agrees' if the interval holds ``expected`` (or the fit is within 1e-3 of it), 'close', or 'differs'."""
        if self.low <= expected <= self.high or abs(self.exponent - expected) <= UNIFORM_TOLERANCE:
            return "agrees"
        return "close" if abs(self.exponent - expected) <= tolerance else "differs"

    def describe(self) -> str:
        return f"{self.exponent:.4f} [{self.low:.4f}, {self.high:.4f}]"


def fit_power_law(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE) -> PowerLaw:
    """Fit ``y ~ x^alpha`` on log-log axes; the interval is the t interval of the OLS slope (n - 2 dof)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    if lx.size < 3:
        raise ValueError(f"a power law with an interval needs at least 3 points, got {lx.size}")
    centred = lx - lx.mean()
    spread = float(centred @ centred)
    slope = float(centred @ (ly - ly.mean())) / spread
    intercept = float(ly.mean()) - slope * float(lx.mean())
    residuals = ly - intercept - slope * lx
    stderr = math.sqrt(float(residuals @ residuals) / (lx.size - 2) / spread)
    half = float(stdtrit(lx.size - 2, 0.5 + confidence / 2)) * stderr  # the t quantile
    return PowerLaw(slope, slope - half, slope + half, math.exp(intercept), int(lx.size))


def depth_exponents(erf_by_depth: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Fit ERF std ~ depth^alpha along one network's blocks, at initialisation and trained (None if undefined)."""
    result: dict[str, float | None] = {}
    for stage in ("init", "trained"):
        points = [(r["depth"], r.get(f"erf_std_{stage}")) for r in erf_by_depth]
        points = [(d, s) for d, s in points if s is not None and s > 0 and math.isfinite(s)]
        fit = fit_power_law(*zip(*points, strict=True)) if len(points) >= 3 else None
        result[f"alpha_{stage}"] = fit.exponent if fit else None
        result[f"alpha_{stage}_low"] = fit.low if fit else None
        result[f"alpha_{stage}_high"] = fit.high if fit else None
    return result


def run_rf_laws(measures_path: str | Path, output: str | Path) -> dict[str, Any]:
    """The per-run rf_laws.json: depth exponents of the ERF and the ERF growth with training."""
    measures = json.loads(Path(measures_path).read_text())
    result: dict[str, Any] = depth_exponents(measures.get("erf_by_depth") or [])
    result["erf_growth"] = measures.get("erf_growth")
    Path(output).write_text(json.dumps(result, indent=2) + "\n")
    return result
