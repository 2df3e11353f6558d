"""Psychometric scaling of scenes with three or more stimuli: Bradley-Terry and Thurstone Case V."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compressai_vlic.errors import ConfigError
from compressai_vlic.extras import require
from compressai_vlic.judges.audit.options import ScaleType
from compressai_vlic.judges.audit.readers import HumanPair
from compressai_vlic.judges.audit.statistics import Estimate, bootstrap_mean
from compressai_vlic.judges.types import Choice, Judgment
from compressai_vlic.options import check_option


def fit_scale(
    wins: np.ndarray, scale_type: ScaleType = "bradley-terry", ridge: float = 0.01
) -> np.ndarray:
    """Per-stimulus scale values from a win matrix (``wins[i, j]`` = times i was preferred to j).

    Maximum likelihood with ``P(i > j) = sigmoid(s_i - s_j)`` (Bradley-Terry) or
    ``Phi(s_i - s_j)`` (Thurstone Case V). A small ridge keeps the values finite when one
    stimulus always wins; values are centred to mean 0.
    """
    minimize = require("scipy.optimize", "judges", "Psychometric scaling").minimize
    from scipy.special import expit, log_expit
    from scipy.stats import norm

    check_option("scale_type", scale_type, ScaleType)
    w = np.asarray(wins, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or (w < 0).any():
        raise ConfigError("wins must be a square matrix of non-negative counts")
    k = w.shape[0]

    def objective(s: np.ndarray) -> tuple[float, np.ndarray]:
        d = s[:, None] - s[None, :]
        if scale_type == "bradley-terry":
            ll = (w * log_expit(d)).sum()
            g = w * (1.0 - expit(d))  # d/dd log sigmoid(d)
        else:
            ll = (w * norm.logcdf(d)).sum()
            g = w * np.exp(norm.logpdf(d) - norm.logcdf(d))
        grad = g.sum(axis=1) - g.sum(axis=0)
        return -ll + ridge * (s @ s), -grad + 2 * ridge * s

    res = minimize(objective, np.zeros(k), jac=True, method="L-BFGS-B")
    s = res.x
    return s - s.mean()


@dataclass
class SceneScale:
    scene: str
    stimuli: list[str]
    judge_scale: list[float]
    human_scale: list[float]
    spearman: float


@dataclass
class ScalingStats:
    """Per-stimulus scale values and their rank agreement with the human scale."""

    scale_type: ScaleType
    n_scenes: int
    spearman: Estimate  # mean per-scene Spearman, scene-bootstrap interval
    scenes: list[SceneScale]


def scaling_stats(
    judgments: Sequence[Judgment],
    pairs: Sequence[HumanPair],
    scale_type: ScaleType,
    n_boot: int,
    rng: np.random.Generator,
) -> ScalingStats | None:
    spearmanr = require("scipy.stats", "judges", "Scaling statistics").spearmanr

    by_scene: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_scene.setdefault(p.scene, []).append(i)
    scenes = []
    for scene, idx in sorted(by_scene.items()):
        stimuli = sorted({str(pairs[i].a) for i in idx} | {str(pairs[i].b) for i in idx})
        if len(stimuli) < 3:
            continue
        pos = {s: k for k, s in enumerate(stimuli)}
        wj = np.zeros((len(stimuli), len(stimuli)))
        wh = np.zeros_like(wj)
        for i in idx:
            a, b = pos[str(pairs[i].a)], pos[str(pairs[i].b)]
            c = judgments[i].choice
            pa = {Choice.A: 1.0, Choice.B: 0.0}.get(c, 0.5)  # abstention: half a win each
            wj[a, b] += pa
            wj[b, a] += 1 - pa
            n = pairs[i].n_humans or 1
            wh[b, a] += pairs[i].human_b * n
            wh[a, b] += (1 - pairs[i].human_b) * n
        sj, sh = fit_scale(wj, scale_type), fit_scale(wh, scale_type)
        rho = spearmanr(sj, sh).statistic if np.ptp(sj) > 0 and np.ptp(sh) > 0 else float("nan")
        scenes.append(SceneScale(scene, stimuli, sj.tolist(), sh.tolist(), float(rho)))
    if not scenes:
        return None
    rhos = np.array([s.spearman for s in scenes if not math.isnan(s.spearman)])
    return ScalingStats(scale_type, len(scenes), bootstrap_mean(rhos, n_boot, rng), scenes)
