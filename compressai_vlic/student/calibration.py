"""From student scores to opinion scores: the 4-parameter logistic of quality assessment.

``mos ~ b2 + (b1 - b2) / (1 + exp(-(s - b3) / |b4|))`` with ``s = -distance`` (higher = better),
fitted by least squares (``scipy.optimize.curve_fit``) on a small labelled subset. SRCC (rank
agreement, unchanged by any monotone map) and PLCC (linear agreement after the map) say how well
the student predicts the opinion scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from compressai_vlic.errors import ConfigError


def logistic4(s: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    z = np.clip(-(s - b3) / (abs(b4) + 1e-12), -60.0, 60.0)
    return b2 + (b1 - b2) / (1.0 + np.exp(z))


def _jacobian(s: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """Analytic derivatives (finite differences stall where a parameter starts at 0)."""
    a = abs(b4) + 1e-12
    u = np.clip((s - b3) / a, -60.0, 60.0)
    sig = 1.0 / (1.0 + np.exp(-u))
    g = (b1 - b2) * sig * (1 - sig)
    return np.stack([sig, 1 - sig, -g / a, -g * u * np.sign(b4 or 1.0) / a], axis=1)


@dataclass
class Calibration:
    """A fitted 4-parameter logistic and its fit statistics."""

    b1: float
    b2: float
    b3: float
    b4: float
    n_fit: int
    srcc_fit: float
    plcc_fit: float

    def __call__(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        return logistic4(np.asarray(scores, float), self.b1, self.b2, self.b3, self.b4)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def correlations(
    scores: Sequence[float], opinions: Sequence[float], calibration: Calibration | None = None
) -> tuple[float, float]:
    """(SRCC, PLCC) of student scores against opinion scores.

    SRCC is taken on the raw scores (a saturating logistic would create ties), signed by the
    direction of the calibration; PLCC on the calibrated predictions (raw scores without one).
    """
    from scipy.stats import pearsonr, spearmanr

    s, o = np.asarray(scores, float), np.asarray(opinions, float)
    if len(s) < 3 or np.ptp(s) == 0 or np.ptp(o) == 0:
        return float("nan"), float("nan")
    sign = 1.0 if calibration is None or calibration.b1 >= calibration.b2 else -1.0
    pred = s if calibration is None else calibration(s)
    if np.ptp(pred) == 0:
        return float(sign * spearmanr(s, o).statistic), float("nan")
    return float(sign * spearmanr(s, o).statistic), float(pearsonr(pred, o).statistic)


def fit_calibration(scores: Sequence[float], opinions: Sequence[float]) -> Calibration:
    """Fit the 4-parameter logistic from student scores (higher = better) to opinion scores."""
    from scipy.optimize import curve_fit

    s, o = np.asarray(scores, float), np.asarray(opinions, float)
    if len(s) != len(o):
        raise ConfigError(f"{len(s)} scores but {len(o)} opinion scores")
    if len(s) < 5:
        raise ConfigError(f"calibration needs at least 5 labelled images, got {len(s)}")
    if not (np.isfinite(s).all() and np.isfinite(o).all()):
        raise ConfigError("scores and opinion scores must be finite")
    p0 = [o.max(), o.min(), float(np.median(s)), float(s.std() or 1.0)]
    try:
        params, _ = curve_fit(logistic4, s, o, p0=p0, jac=_jacobian, maxfev=20000)
    except (RuntimeError, ValueError):  # no convergence: the monotone linear map is the fallback
        slope, icpt = np.polyfit(s, o, 1)
        span = float(s.std() or 1.0) * 50
        params = np.array(
            [
                icpt + slope * (np.median(s) + 2 * span),
                icpt + slope * (np.median(s) - 2 * span),
                float(np.median(s)),
                span,
            ]
        )
    b1, b2, b3, b4 = (float(v) for v in params)
    if not all(math.isfinite(v) for v in (b1, b2, b3, b4)):
        raise ConfigError("the calibration fit diverged; give more or more varied labelled images")
    cal = Calibration(b1, b2, b3, b4, len(s), 0.0, 0.0)
    cal.srcc_fit, cal.plcc_fit = correlations(s, o, cal)
    return cal
