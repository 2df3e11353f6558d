"""How often a judge agrees with a teacher, with confidence intervals.

Agreement is counted on the teacher's labelled pairs only (abstentions carry no label); a tie of
the judge under test counts as half an agreement, the usual 2AFC convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (default 95%)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Agreement:
    """Agreement of one judge with the teacher on ``n`` labelled pairs."""

    name: str
    n: int
    rate: float
    low: float
    high: float

    def line(self) -> str:
        return f"{self.name}: {100 * self.rate:.1f}% of {self.n} pairs (95% CI {100 * self.low:.1f}-{100 * self.high:.1f}%)"


def correct(prefers_a: Sequence[float], targets: Sequence[float]) -> np.ndarray:
    """Per pair 1 (agrees), 0 (disagrees) or 0.5 (tie). ``prefers_a`` > 0 means A is preferred,
    ``targets`` is 1 for A, 0 for B."""
    s = np.sign(np.asarray(prefers_a, dtype=float))
    t = np.where(np.asarray(targets, dtype=float) > 0.5, 1.0, -1.0)
    return np.where(s == 0, 0.5, (s == t).astype(float))


def agreement(name: str, prefers_a: Sequence[float], targets: Sequence[float]) -> Agreement:
    c = correct(prefers_a, targets)
    n = len(c)
    k = float(c.sum())
    low, high = wilson_interval(k, n)
    return Agreement(name, n, k / n if n else 0.0, low, high)


def bootstrap_difference(
    a: np.ndarray,
    b: np.ndarray,
    groups: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``a - b`` (paired per-pair correctness) and its 95% bootstrap interval.

    With ``groups`` (e.g. the reference image of each pair) whole groups are resampled, so pairs
    of one image do not count as independent evidence.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = a - b
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
        stats = diff[idx].mean(axis=1)
    else:
        keys = sorted(set(groups))
        members = {k: np.flatnonzero(np.asarray(groups) == k) for k in keys}
        sums = np.array([diff[members[k]].sum() for k in keys])
        counts = np.array([len(members[k]) for k in keys])
        pick = rng.integers(0, len(keys), size=(n_boot, len(keys)))
        stats = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)
