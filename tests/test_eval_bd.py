"""Bjontegaard deltas: zero against itself, exact on known shifts, and the overlap checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from compressai_vlic.errors import ConfigError
from compressai_vlic.evaluation.bd import BDOverlapWarning, bd_metric, bd_rate

RATES = [0.1, 0.2, 0.4, 0.8, 1.6]
PSNR = [26.0, 28.9, 31.5, 34.2, 36.8]  # a realistic concave-in-log-rate curve


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_a_curve_against_itself_is_zero(method):
    assert bd_rate(RATES, PSNR, RATES, PSNR, method=method).value == pytest.approx(0, abs=1e-12)
    assert bd_metric(RATES, PSNR, RATES, PSNR, method=method).value == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_bd_rate_of_a_rate_scaled_curve_is_the_scale(method, factor):
    # Same quality at factor x the rate: log-rate shifts by log(factor) everywhere, so the
    # average rate difference is exactly (factor - 1) * 100 %.
    scaled = [r * factor for r in RATES]
    result = bd_rate(RATES, PSNR, scaled, PSNR, method=method)
    assert result.value == pytest.approx((factor - 1) * 100, abs=1e-9)
    assert result.interval == (min(PSNR), max(PSNR))
    assert result.overlap == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_metric_of_a_shifted_curve_is_the_shift(method):
    shifted = [p + 0.7 for p in PSNR]
    assert bd_metric(RATES, PSNR, RATES, shifted, method=method).value == pytest.approx(0.7)


def test_partial_overlap_uses_the_shared_range_only():
    # Quality linear in log-rate (PCHIP reproduces lines exactly). The test codec reaches the
    # same quality at half the rate, and was only measured on the upper part of the range:
    # over the shared range the log-rate gap is log(0.5) everywhere, so -50 % by hand.
    linear = [30 + 4 * math.log2(r) for r in RATES]
    result = bd_rate(RATES, linear, [r * 0.5 for r in RATES[2:]], linear[2:])
    assert result.value == pytest.approx(-50.0, abs=1e-9)
    assert result.interval == (linear[2], linear[-1])
    assert result.overlap == pytest.approx(1.0)  # relative to the shorter curve


def test_lower_is_better_metrics_work_the_same_way():
    lpips = [0.45, 0.36, 0.27, 0.19, 0.12]
    result = bd_rate(RATES, lpips, [r * 0.9 for r in RATES], lpips)
    assert result.value == pytest.approx(-10.0)


def test_pchip_bd_rate_matches_a_numerical_integration():
    other = [25.0, 28.4, 31.9, 34.9, 37.1]
    got = bd_rate(RATES, PSNR, [r * 1.1 for r in RATES], other).value
    import scipy.integrate
    from scipy.interpolate import PchipInterpolator

    lo, hi = max(min(PSNR), min(other)), min(max(PSNR), max(other))
    grid = np.linspace(lo, hi, 200001)
    fa = PchipInterpolator(PSNR, np.log(RATES))(grid)
    fb = PchipInterpolator(other, np.log([r * 1.1 for r in RATES]))(grid)
    expected = (math.exp(scipy.integrate.trapezoid(fb - fa, x=grid) / (hi - lo)) - 1) * 100
    assert got == pytest.approx(expected, abs=1e-6)


def test_overlap_checks():
    with pytest.raises(ConfigError, match="do not overlap"):
        bd_rate(RATES, PSNR, RATES, [p + 20 for p in PSNR])
    with pytest.warns(BDOverlapWarning, match="overlap on only"):
        bd_rate(RATES, PSNR, RATES, [p + 9 for p in PSNR])
    with warnings.catch_warnings():
        warnings.simplefilter("error", BDOverlapWarning)
        bd_rate(RATES, PSNR, RATES, [p + 1 for p in PSNR])  # 90 % overlap: silent


def test_bad_curves_are_clear_errors():
    with pytest.raises(ConfigError, match="at least 4 points"):
        bd_rate(RATES[:3], PSNR[:3], RATES[:3], PSNR[:3], method="cubic")
    with pytest.raises(ConfigError, match="at least 2"):
        bd_rate(RATES[:1], PSNR[:1], RATES, PSNR)
    with pytest.raises(ConfigError, match="> 0"):
        bd_rate([0.0, *RATES[1:]], PSNR, RATES, PSNR)
    with pytest.raises(ConfigError, match="method"):
        bd_rate(RATES, PSNR, RATES, PSNR, method="akima")
