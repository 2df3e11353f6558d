"""Bjontegaard deltas between two rate-quality curves (VCEG-M33, with the usual variants).

BD-rate: average rate difference (%) at equal quality, from log-rate fitted as a function of the
metric and integrated over the metric range both curves cover. BD-metric: average metric
difference at equal rate, from the metric fitted as a function of log-rate. ``method="pchip"``
(piecewise cubic Hermite, as in the JVET/AOM tools; works from 2 points) or ``"cubic"`` (the
original 3rd-order polynomial, needs 4 points). Deltas are only meaningful where the curves
overlap: no overlap raises, a small overlap warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compressai_vlic.errors import ConfigError
from compressai_vlic.extras import require

BD_METHODS = ("pchip", "cubic")


class BDOverlapWarning(UserWarning):
    """The two curves share only a small part of their range: the delta is an extrapolation risk."""


@dataclass(frozen=True)
class BDResult:
    """A Bjontegaard delta and the interval it was integrated over."""

    value: float  # BD-rate in percent (negative = test saves rate) or BD-metric in metric units
    interval: tuple[float, float]  # metric interval (BD-rate) or log-rate interval (BD-metric)
    overlap: float  # overlap length / the shorter curve's range, in [0, 1]
    method: str


def _prepare(
    rate: Sequence[float], metric: Sequence[float], label: str
) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rate, dtype=np.float64)
    m = np.asarray(metric, dtype=np.float64)
    if r.ndim != 1 or r.shape != m.shape:
        raise ConfigError(f"{label}: rate and metric must be 1-D sequences of the same length")
    if r.size < 2:
        raise ConfigError(f"{label}: a curve needs at least 2 rate points, got {r.size}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(m))) or np.any(r <= 0):
        raise ConfigError(f"{label}: rates must be finite and > 0 and metrics finite")
    return np.log(r), m


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Integral over [lo, hi] of the curve y(x) fitted through the points."""
    order = np.argsort(x)
    x, y = x[order], y[order]
    if np.any(np.diff(x) == 0):
        raise ConfigError("a curve has two points with the same abscissa; it must be monotone")
    if method == "cubic":
        if x.size < 4:
            raise ConfigError("method='cubic' needs at least 4 points per curve; use 'pchip'")
        poly = np.polyint(np.polyfit(x, y, 3))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    interpolate = require("scipy.interpolate", "eval", "BD metrics with method='pchip'")

    return float(interpolate.PchipInterpolator(x, y).integrate(lo, hi))


def _overlap(
    a: np.ndarray, b: np.ndarray, what: str, min_overlap: float
) -> tuple[float, float, float]:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    if hi <= lo:
        raise ConfigError(
            f"the curves do not overlap in {what} ([{a.min():.4g}, {a.max():.4g}] vs "
            f"[{b.min():.4g}, {b.max():.4g}]): no Bjontegaard delta exists"
        )
    shorter = min(a.max() - a.min(), b.max() - b.min())
    overlap = float((hi - lo) / shorter) if shorter > 0 else 0.0
    if overlap < min_overlap:
        warnings.warn(
            f"the curves overlap on only {overlap:.0%} of the shorter {what} range "
            f"([{lo:.4g}, {hi:.4g}]); the Bjontegaard delta is unreliable",
            BDOverlapWarning,
            stacklevel=4,  # the caller of bd_rate / bd_metric (via _mean_gap)
        )
    return float(lo), float(hi), overlap


def _mean_gap(
    x_anchor: np.ndarray,
    y_anchor: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    what: str,
    method: str,
    min_overlap: float,
) -> tuple[float, float, float, float]:
    """Mean of ``y_test - y_anchor`` over the shared ``x`` range (the core of both BD deltas).

    Returns the mean gap, the range (lo, hi) and the overlap fraction.
    """
    lo, hi, overlap = _overlap(x_anchor, x_test, what, min_overlap)
    test = _integral(x_test, y_test, lo, hi, method)
    anchor = _integral(x_anchor, y_anchor, lo, hi, method)
    return (test - anchor) / (hi - lo), lo, hi, overlap


def _check_method(method: str) -> None:
    if method not in BD_METHODS:
        raise ConfigError(f"method must be one of {BD_METHODS}, got {method!r}")


def bd_rate(
    rate_anchor: Sequence[float],
    metric_anchor: Sequence[float],
    rate_test: Sequence[float],
    metric_test: Sequence[float],
    method: str = "pchip",
    min_overlap: float = 0.5,
) -> BDResult:
    """Average rate change (%) of ``test`` vs ``anchor`` at equal metric (negative = test better).

    Works for metrics where higher or lower is better alike: both log-rates are integrated over
    the same metric interval.
    """
    _check_method(method)
    log_ra, ma = _prepare(rate_anchor, metric_anchor, "anchor")
    log_rt, mt = _prepare(rate_test, metric_test, "test")
    avg_diff, lo, hi, overlap = _mean_gap(ma, log_ra, mt, log_rt, "metric", method, min_overlap)
    return BDResult(float((np.exp(avg_diff) - 1.0) * 100.0), (lo, hi), overlap, method)


def bd_metric(
    rate_anchor: Sequence[float],
    metric_anchor: Sequence[float],
    rate_test: Sequence[float],
    metric_test: Sequence[float],
    method: str = "pchip",
    min_overlap: float = 0.5,
) -> BDResult:
    """Average metric difference (test - anchor) at equal rate, over the shared log-rate range."""
    _check_method(method)
    log_ra, ma = _prepare(rate_anchor, metric_anchor, "anchor")
    log_rt, mt = _prepare(rate_test, metric_test, "test")
    avg_diff, lo, hi, overlap = _mean_gap(log_ra, ma, log_rt, mt, "log-rate", method, min_overlap)
    return BDResult(float(avg_diff), (lo, hi), overlap, method)
