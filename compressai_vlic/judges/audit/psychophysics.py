"""The analyses of psychophysical attribute studies, for judges as observers.

A study of how VLMs judge contrast, colourfulness and overall preference (two images, no
original, 2AFC, each trial repeated) reports, per model and attribute:

- **VR %**, the intra-model *variation ratio* over repeats: for one trial with R repeated
  answers, ``VR = 1 - f_mode / R`` (``f_mode``: how many repeats gave the most frequent answer;
  an abstention is an answer of its own), averaged over trials and given in percent. 0 % means
  every repeat gave the same answer.
- **Responses**: per trial ``(n_A - n_B) / R`` in [-1, 1] (humans: ``1 - 2 h_b``), then
  **z-scored** within each observer and attribute (mean 0, standard deviation 1 over trials) so
  observers with different response ranges are comparable.
- **One-vs-many inter-model variability**: each model's z-scored responses against the mean of
  all other models' (Spearman rho, and the mean absolute z difference).
- **Spearman with humans** over trials, with an interval from resampling *scenes* (all trials of a
  resampled scene go together, so correlated trials do not narrow the interval).
- **The attribute-weighting fit**: overall preference as a weighted combination of contrast and
  colourfulness, ``z_overall ~ w_c z_contrast + w_f z_colorfulness`` (least squares, no intercept
  on z-scores), with scene-bootstrap intervals, the relative weight ``w_c / (|w_c| + |w_f|)`` and
  R^2; for each model and for the humans.
- **Agreement against perceptual separability**: accuracy against the human majority by bins of
  ``|h - 0.5|`` (the audit's :func:`~.statistics.binned_accuracy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.audit.collect import RawAnswers, collect
from compressai_vlic.judges.audit.readers import HumanPair
from compressai_vlic.judges.audit.statistics import (
    SEPARABILITY_EDGES,
    BinStats,
    Estimate,
    binned_accuracy,
)
from compressai_vlic.judges.compose import combine_orders
from compressai_vlic.judges.types import Choice, Judge, Judgment, choice_from_score

WEIGHTED_ATTRIBUTES = ("contrast", "colorfulness")
OVERALL = "overall"
ATTRS_ORDER = (*WEIGHTED_ATTRIBUTES, OVERALL)
_CODE = {Choice.A: 1, Choice.B: -1, Choice.ABSTAIN: 0}


# --------------------------------------------------------------------------- pure statistics


def variation_ratio(answers: np.ndarray) -> np.ndarray:
    """Per-trial variation ratio ``1 - f_mode / R`` of an (R repeats, N trials) answer array
    (any hashable codes, e.g. +1 A, -1 B, 0 abstain)."""
    answers = np.asarray(answers)
    if answers.ndim != 2 or answers.shape[0] < 1:
        raise ConfigError(f"answers must be (repeats, trials), got shape {answers.shape}")
    r = answers.shape[0]
    out = np.empty(answers.shape[1])
    for i in range(answers.shape[1]):
        _, counts = np.unique(answers[:, i], return_counts=True)
        out[i] = 1.0 - counts.max() / r
    return out


def vr_percent(answers: np.ndarray) -> float:
    """VR %: the mean per-trial variation ratio, in percent."""
    return float(100.0 * variation_ratio(answers).mean())


def responses(answers: np.ndarray) -> np.ndarray:
    """Per-trial response ``(n_A - n_B) / R`` of an (R, N) array of +1 (A) / -1 (B) / 0 codes."""
    return np.asarray(answers, dtype=np.float64).mean(axis=0)


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardise to mean 0, standard deviation 1 (population); all zeros when constant."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    return np.zeros_like(x) if sd == 0 or not np.isfinite(sd) else (x - x.mean()) / sd


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _scene_resamples(
    scenes: Sequence[str], n_boot: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Trial indices of ``n_boot`` resamples of whole scenes (with replacement)."""
    by_scene: dict[str, list[int]] = {}
    for i, s in enumerate(scenes):
        by_scene.setdefault(s, []).append(i)
    groups = [np.array(v) for v in by_scene.values()]
    picks = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    return [np.concatenate([groups[k] for k in row]) for row in picks]


def _interval(point: float, samples: list[float], alpha: float = 0.05) -> Estimate:
    vals = np.array([s for s in samples if math.isfinite(s)])
    if not math.isfinite(point) or vals.size == 0:
        return Estimate(point, point, point)
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return Estimate(point, float(lo), float(hi))


def spearman_scene_bootstrap(
    x: np.ndarray,
    y: np.ndarray,
    scenes: Sequence[str],
    n_boot: int,
    rng: np.random.Generator,
) -> Estimate:
    """Spearman rho of ``x`` and ``y`` over trials, with a scene-bootstrap percentile interval."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    point = _spearman(x, y)
    if n_boot <= 0:
        return Estimate(point, point, point)
    boots = [_spearman(x[idx], y[idx]) for idx in _scene_resamples(scenes, n_boot, rng)]
    return _interval(point, boots)


@dataclass
class WeightFit:
    """``z_overall ~ w_contrast z_contrast + w_colorfulness z_colorfulness`` with intervals."""

    w_contrast: Estimate
    w_colorfulness: Estimate
    relative_contrast: Estimate  # w_c / (|w_c| + |w_f|)
    r2: float
    n_trials: int
    identifiable: bool = True  # False: contrast and colourfulness responses are collinear


def _lstsq(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    zc, zf, zo = zscore(x[:, 0]), zscore(x[:, 1]), zscore(y)
    design = np.stack([zc, zf], axis=1)
    w, *_ = np.linalg.lstsq(design, zo, rcond=None)
    resid = zo - design @ w
    ss = float(zo @ zo)
    r2 = 1.0 - float(resid @ resid) / ss if ss > 0 else float("nan")
    return float(w[0]), float(w[1]), r2


def attribute_weights(
    contrast: np.ndarray,
    colorfulness: np.ndarray,
    overall: np.ndarray,
    scenes: Sequence[str],
    n_boot: int,
    rng: np.random.Generator,
) -> WeightFit:
    """Fit overall preference as a weighted combination of contrast and colourfulness.

    All three are per-trial responses of one observer on the same trials; each is z-scored (in
    every bootstrap resample too) and the weights are the least-squares solution without an
    intercept. Intervals resample scenes.

    Args:
        contrast: responses to "which has more contrast", one per trial.
        colorfulness: responses to "which is more colourful", same trials.
        overall: responses to "which do you prefer", same trials.
        scenes: the scene of each trial (the bootstrap unit).
        n_boot: bootstrap resamples (0: no interval).
        rng: random generator of the resampling.
    """
    x = np.stack([np.asarray(contrast, np.float64), np.asarray(colorfulness, np.float64)], axis=1)
    y = np.asarray(overall, np.float64)
    if x.shape[0] != y.shape[0] or y.shape[0] != len(scenes):
        raise ConfigError(
            "contrast, colorfulness, overall and scenes must have one entry per trial"
        )
    wc, wf, r2 = _lstsq(x, y)
    design = np.stack([zscore(x[:, 0]), zscore(x[:, 1])], axis=1)
    identifiable = bool(np.linalg.matrix_rank(design, tol=1e-9) == 2)

    def rel(a: float, b: float) -> float:
        den = abs(a) + abs(b)
        return a / den if den > 0 else float("nan")

    bc, bf, br = [], [], []
    if n_boot > 0:
        for idx in _scene_resamples(scenes, n_boot, rng):
            c, f, _ = _lstsq(x[idx], y[idx])
            bc.append(c)
            bf.append(f)
            br.append(rel(c, f))
    return WeightFit(
        _interval(wc, bc) if bc else Estimate(wc, wc, wc),
        _interval(wf, bf) if bf else Estimate(wf, wf, wf),
        _interval(rel(wc, wf), br) if br else Estimate(rel(wc, wf), rel(wc, wf), rel(wc, wf)),
        r2,
        int(y.shape[0]),
        identifiable,
    )


@dataclass
class OneVsMany:
    """One model's z-scored responses against the mean of all other models' (one attribute)."""

    model: str
    attribute: str
    spearman: float
    mean_abs_z_diff: float


def one_vs_many(z_by_model: Mapping[str, np.ndarray], attribute: str = "") -> list[OneVsMany]:
    """Inter-model variability: each model against the mean of the others (needs >= 2 models).

    Args:
        z_by_model: model -> z-scored responses on the same trials.
        attribute: the attribute these responses answer (for the report).
    """
    names = list(z_by_model)
    out = []
    if len(names) < 2:
        return out
    for m in names:
        others = np.mean([z_by_model[k] for k in names if k != m], axis=0)
        zm = np.asarray(z_by_model[m], np.float64)
        out.append(
            OneVsMany(m, attribute, _spearman(zm, others), float(np.mean(np.abs(zm - others))))
        )
    return out


# --------------------------------------------------------------------------- the study


@dataclass
class AttributeStats:
    """One observer (a model or the humans) on one attribute."""

    observer: str
    attribute: str
    n_trials: int
    repeats: int
    vr_percent: float | None  # None for humans (one proportion per trial, no repeats)
    abstain_rate: float
    spearman_vs_human: Estimate | None
    separability: list[BinStats] = field(default_factory=list)


@dataclass
class PsychophysicsReport:
    source: str
    attributes: list[str]
    repeats: int
    bootstrap: int
    stats: list[AttributeStats]
    one_vs_many: list[OneVsMany]
    weights: dict[str, WeightFit]  # observer -> fit ("human" included when labels allow)
    z_responses: dict[str, dict[str, list[float]]]  # observer -> attribute -> z per trial
    trials: dict[str, list[str]]  # attribute -> trial keys (a|b), in order

    def to_dict(self) -> dict[str, Any]:
        import json

        return json.loads(json.dumps(asdict(self), default=str, allow_nan=True))


def _trial_key(p: HumanPair) -> str:
    return f"{p.a}|{p.b}"


def answer_codes(raw: RawAnswers, order_type: str, combine_type: str = "sum") -> np.ndarray:
    """(repeats, trials) codes +1/-1/0 of each repeat, as given or symmetrised per repeat."""
    rows = []
    for ab_r, ba_r in zip(raw.ab, raw.ba):
        if order_type == "symmetrize":
            js = [combine_orders(x, y, combine_type) for x, y in zip(ab_r, ba_r)]
        else:
            js = list(ab_r)
        rows.append([_CODE[j.choice] for j in js])
    return np.array(rows, dtype=np.int64)


def psychophysics(
    answers: Mapping[str, Mapping[str, np.ndarray]],
    pairs: Mapping[str, Sequence[HumanPair]],
    n_boot: int = 1000,
    seed: int = 0,
    source: str = "",
) -> PsychophysicsReport:
    """Every statistic of the study from answer codes.

    Args:
        answers: model -> attribute -> (repeats, trials) codes (+1 A, -1 B, 0 abstain), trials in
            the order of ``pairs[attribute]``.
        pairs: attribute -> the human-labelled trials of that attribute.
        n_boot: bootstrap resamples (scenes).
        seed: seed of the resampling.
        source: where the labels came from (for the report).
    """
    rng = np.random.default_rng(seed)
    attributes = list(pairs)
    stats: list[AttributeStats] = []
    ovm: list[OneVsMany] = []
    z: dict[str, dict[str, list[float]]] = {"human": {}}
    resp: dict[str, dict[str, np.ndarray]] = {"human": {}}
    repeats = 0
    for attribute in attributes:
        ps = list(pairs[attribute])
        scenes = [p.scene for p in ps]
        human = np.array([1.0 - 2.0 * p.human_b for p in ps])
        resp["human"][attribute] = human
        z["human"][attribute] = zscore(human).tolist()
        stats.append(AttributeStats("human", attribute, len(ps), 0, None, 0.0, None))
        zs: dict[str, np.ndarray] = {}
        for model, by_attr in answers.items():
            if attribute not in by_attr:
                continue
            codes = np.asarray(by_attr[attribute])
            if codes.shape[1] != len(ps):
                raise ConfigError(
                    f"{model}/{attribute}: {codes.shape[1]} answers for {len(ps)} trials"
                )
            repeats = max(repeats, codes.shape[0])
            r = responses(codes)
            resp.setdefault(model, {})[attribute] = r
            zs[model] = zscore(r)
            z.setdefault(model, {})[attribute] = zs[model].tolist()
            judgments = [Judgment(float(v), choice_from_score(float(v))) for v in r]
            stats.append(
                AttributeStats(
                    model,
                    attribute,
                    len(ps),
                    int(codes.shape[0]),
                    vr_percent(codes),
                    float(np.mean(codes == 0)),
                    spearman_scene_bootstrap(r, human, scenes, n_boot, rng),
                    binned_accuracy(
                        np.abs(np.array([p.human_b for p in ps]) - 0.5),
                        SEPARABILITY_EDGES,
                        judgments,
                        ps,
                        n_boot,
                        rng,
                    ),
                )
            )
        ovm.extend(one_vs_many(zs, attribute))
    weights: dict[str, WeightFit] = {}
    if all(a in pairs for a in (*WEIGHTED_ATTRIBUTES, OVERALL)):
        keys = [{_trial_key(p): i for i, p in enumerate(pairs[a])} for a in ATTRS_ORDER]
        common = [k for k in keys[2] if k in keys[0] and k in keys[1]]
        if len(common) >= 3:
            scenes = [pairs[OVERALL][keys[2][k]].scene for k in common]
            for observer, by_attr in resp.items():
                if not all(a in by_attr for a in ATTRS_ORDER):
                    continue
                c, f, o = (
                    by_attr[a][[keys[j][k] for k in common]] for j, a in enumerate(ATTRS_ORDER)
                )
                weights[observer] = attribute_weights(c, f, o, scenes, n_boot, rng)
    trials = {a: [_trial_key(p) for p in pairs[a]] for a in attributes}
    return PsychophysicsReport(source, attributes, repeats, n_boot, stats, ovm, weights, z, trials)


def run_psychophysics(
    judges: Mapping[str, Callable[[str], Judge]],
    pairs: Mapping[str, Sequence[HumanPair]],
    repeats: int = 3,
    order_type: str = "as-given",
    combine_type: str = "sum",
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    source: str = "",
) -> PsychophysicsReport:
    """Ask every judge every attribute's trials ``repeats`` times (both orders), then analyse.

    Args:
        judges: observer name -> ``make(attribute)`` building that observer's judge for one
            attribute (a VLM with that ``attribute`` prompt, or an attribute judge).
        pairs: attribute -> trials (reference-free or not).
        repeats: independent answers per trial and order (VR % needs >= 2).
        order_type: "as-given", or "symmetrize" (each repeat combines both orders).
        combine_type: how two orders combine ("sum" or "agree").
        n_boot: scene-bootstrap resamples.
        seed: seed of the resampling.
        batch_size: pairs per judge call.
        progress: show progress bars.
        source: where the labels came from.
    """
    answers: dict[str, dict[str, np.ndarray]] = {}
    for name, make in judges.items():
        for attribute, ps in pairs.items():
            raw = collect(make(attribute), list(ps), repeats, batch_size, progress)
            answers.setdefault(name, {})[attribute] = answer_codes(raw, order_type, combine_type)
    return psychophysics(answers, pairs, n_boot, seed, source)


def format_psychophysics(report: PsychophysicsReport) -> str:
    """The report as plain-text tables."""
    lines = [
        f"psychophysics of {report.source}: attributes {', '.join(report.attributes)}; "
        f"{report.repeats} repeat(s); {report.bootstrap} scene-bootstrap resamples",
        "",
        f"{'observer':<24} {'attribute':<13} {'trials':>6} {'VR %':>7} {'abstain':>8} "
        f"{'Spearman vs human [95% CI]':>30}",
    ]
    for s in report.stats:
        if s.observer == "human":
            continue
        vr = "n/a" if s.vr_percent is None else f"{s.vr_percent:.1f}"
        rho = s.spearman_vs_human.fmt(pct=False) if s.spearman_vs_human else "n/a"
        lines.append(
            f"{s.observer:<24} {s.attribute:<13} {s.n_trials:>6} {vr:>7} "
            f"{100 * s.abstain_rate:>7.1f}% {rho:>30}"
        )
    if report.one_vs_many:
        lines += ["", "one-vs-many (each model vs the mean of the others, z-scored responses)"]
        for o in report.one_vs_many:
            lines.append(
                f"  {o.model:<24} {o.attribute:<13} Spearman {o.spearman:6.3f}   "
                f"mean |z diff| {o.mean_abs_z_diff:.3f}"
            )
    if report.weights:
        lines += ["", "attribute weighting: z_overall ~ w_c z_contrast + w_f z_colorfulness"]
        for observer, w in report.weights.items():
            lines.append(
                f"  {observer:<24} w_c {w.w_contrast.fmt(pct=False):>22}  "
                f"w_f {w.w_colorfulness.fmt(pct=False):>22}  "
                f"w_c/(|w_c|+|w_f|) {w.relative_contrast.fmt(pct=False):>22}  R^2 {w.r2:.3f}"
                + ("" if w.identifiable else "  (contrast and colourfulness answers collinear)")
            )
    for s in report.stats:
        if s.separability:
            lines.append("")
            lines.append(f"{s.observer} / {s.attribute}: accuracy by separability |h-0.5|")
            for b in s.separability:
                lines.append(f"  {b.label:<14} n={b.n_pairs:<5} acc {b.accuracy.fmt():>24}")
    return "\n".join(lines)
