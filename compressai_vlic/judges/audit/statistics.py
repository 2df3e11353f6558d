"""Agreement statistics with bootstrap intervals: accuracy, ceilings, bias, consistency, kappa."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compressai_vlic.extras import require
from compressai_vlic.judges.audit.collect import RawAnswers
from compressai_vlic.judges.audit.readers import HumanPair
from compressai_vlic.judges.compose import (
    mapped_back,
)
from compressai_vlic.judges.types import Choice, Judgment

SEPARABILITY_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class Estimate:
    """A point estimate with a bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def fmt(self, pct: bool = True) -> str:
        k = 100.0 if pct else 1.0
        if math.isnan(self.value):
            return "n/a"
        return f"{k * self.value:.2f} [{k * self.low:.2f}, {k * self.high:.2f}]"


def bootstrap_mean(
    values: np.ndarray, n_boot: int, rng: np.random.Generator, alpha: float = 0.05
) -> Estimate:
    """Mean with a percentile bootstrap interval (resampling items with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    point = float(values.mean())
    if n_boot <= 0 or values.size == 1:
        return Estimate(point, point, point)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Estimate(point, float(lo), float(hi))


def bootstrap_ratio(
    num: np.ndarray, den: np.ndarray, n_boot: int, rng: np.random.Generator, alpha: float = 0.05
) -> Estimate:
    """sum(num)/sum(den) with a bootstrap interval over items (e.g. accuracy on decided pairs)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if den.sum() == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    point = float(num.sum() / den.sum())
    if n_boot <= 0 or num.size == 1:
        return Estimate(point, point, point)
    idx = rng.integers(0, num.size, size=(n_boot, num.size))
    d = den[idx].sum(axis=1)
    ok = d > 0
    ratios = num[idx].sum(axis=1)[ok] / d[ok]
    lo, hi = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return Estimate(point, float(lo), float(hi))


def prob_b(choices: Sequence[Choice]) -> np.ndarray:
    """Judge's probability of B as a hard 2AFC answer: B -> 1, A -> 0, abstain -> 0.5."""
    return np.array([{Choice.B: 1.0, Choice.A: 0.0}.get(c, 0.5) for c in choices])


def majority_credit(
    choices: Sequence[Choice], pairs: Sequence[HumanPair]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair with a human majority: credit (1 right, 0 wrong, 0.5 abstain), decided flag,
    correct-and-decided flag. Pairs with a 50/50 human split are left out."""
    credit, decided, correct = [], [], []
    for c, p in zip(choices, pairs):
        m = p.human_majority
        if m is None:
            continue
        credit.append(0.5 if c is Choice.ABSTAIN else float(c is m))
        decided.append(float(c is not Choice.ABSTAIN))
        correct.append(float(c is m))
    return np.array(credit), np.array(decided), np.array(correct)


@dataclass
class AccuracyStats:
    """Agreement of one set of judgments with the human labels."""

    name: str
    n_pairs: int
    n_majority: int  # pairs where humans were not split 50/50
    accuracy: Estimate  # vs human majority; abstentions count 0.5
    accuracy_decided: Estimate  # vs human majority, decided pairs only
    abstain_rate: float
    bapps_score: Estimate  # mean of p*h + (1-p)*(1-h), p = hard answer (B 1, A 0, abstain 0.5)
    soft_score: Estimate | None = None  # same with p = 1 - prob_a, when every answer has prob_a


def accuracy_stats(
    name: str,
    judgments: Sequence[Judgment],
    pairs: Sequence[HumanPair],
    n_boot: int,
    rng: np.random.Generator,
) -> AccuracyStats:
    choices = [j.choice for j in judgments]
    credit, decided, correct = majority_credit(choices, pairs)
    h = np.array([p.human_b for p in pairs])
    pb = prob_b(choices)
    score = pb * h + (1 - pb) * (1 - h)
    soft = None
    if judgments and all(j.prob_a is not None for j in judgments):
        pb_soft = 1.0 - np.array([j.prob_a for j in judgments], dtype=np.float64)
        soft = bootstrap_mean(pb_soft * h + (1 - pb_soft) * (1 - h), n_boot, rng)
    return AccuracyStats(
        name=name,
        n_pairs=len(pairs),
        n_majority=int(credit.size),
        accuracy=bootstrap_mean(credit, n_boot, rng),
        accuracy_decided=bootstrap_ratio(correct, decided, n_boot, rng),
        abstain_rate=float(np.mean([c is Choice.ABSTAIN for c in choices]))
        if choices
        else float("nan"),
        bapps_score=bootstrap_mean(score, n_boot, rng),
        soft_score=soft,
    )


@dataclass
class HumanCeiling:
    """How well humans agree with each other: the best a judge can be expected to do."""

    human: Estimate  # mean h^2 + (1-h)^2: chance a random human agrees with another (BAPPS "human")
    oracle: Estimate  # mean max(h, 1-h): BAPPS score of always picking the majority


@dataclass
class PositionBias:
    """Order effects of the raw judge (before symmetrisation)."""

    flip_rate: float  # among pairs decided in both orders: the choice changes with the order
    first_shown_rate: float  # among decided answers: picked the image shown first (0.5 = unbiased)
    n_decided_both: int


def position_bias(raw: RawAnswers) -> PositionBias:
    flips, both, first, decided = 0, 0, 0, 0
    for ab_r, ba_r in zip(raw.ab, raw.ba):
        for ab, ba in zip(ab_r, ba_r):
            c1, c2 = ab.choice, mapped_back(ba).choice
            for shown_first in (ab.choice, ba.choice):
                if shown_first is not Choice.ABSTAIN:
                    decided += 1
                    first += shown_first is Choice.A
            if c1 is not Choice.ABSTAIN and c2 is not Choice.ABSTAIN:
                both += 1
                flips += c1 is not c2
    return PositionBias(
        flip_rate=flips / both if both else float("nan"),
        first_shown_rate=first / decided if decided else float("nan"),
        n_decided_both=both,
    )


@dataclass
class SelfConsistency:
    """Intra-judge variability over repeated votes on the same pair and order."""

    repeats: int
    pairwise_agreement: float  # mean over pairs of the share of repeat pairs giving the same choice
    all_agree_rate: float  # share of pairs where every repeat gave the same choice


def self_consistency(raw: RawAnswers) -> SelfConsistency | None:
    r = len(raw.ab)
    if r < 2:
        return None
    agree, unanimous_n, total = [], 0, 0
    for answers in (raw.ab, raw.ba):
        for i in range(len(answers[0])):
            cs = [answers[k][i].choice for k in range(r)]
            agree.append(np.mean([a is b for a, b in itertools.combinations(cs, 2)]))
            unanimous_n += all(c is cs[0] for c in cs)
            total += 1
    return SelfConsistency(r, float(np.mean(agree)), unanimous_n / total)


@dataclass
class BinStats:
    """Accuracy inside one bin of perceptual separability."""

    label: str
    low: float
    high: float
    n_pairs: int
    accuracy: Estimate
    bapps_score: Estimate


def binned_accuracy(
    keys: np.ndarray,
    edges: Sequence[float],
    judgments: Sequence[Judgment],
    pairs: Sequence[HumanPair],
    n_boot: int,
    rng: np.random.Generator,
    fmt: str = "{:.2f}",
) -> list[BinStats]:
    """Accuracy per bin ``[lo, hi)`` of ``keys`` (the last bin includes its upper edge)."""
    out = []
    last = len(edges) - 2
    for b, (lo, hi) in enumerate(itertools.pairwise(edges)):
        idx = [i for i, k in enumerate(keys) if lo <= k < hi or (b == last and k == hi)]
        st = accuracy_stats("", [judgments[i] for i in idx], [pairs[i] for i in idx], n_boot, rng)
        label = f"[{fmt.format(lo)}, {fmt.format(hi)}{']' if b == last else ')'}"
        out.append(BinStats(label, float(lo), float(hi), len(idx), st.accuracy, st.bapps_score))
    return out


@dataclass
class Agreement:
    """Inter-judge agreement on the same pairs (configured composition of each)."""

    first: str
    second: str
    agreement: float
    kappa: float


def cohen_kappa(x: Sequence[Choice], y: Sequence[Choice]) -> float:
    cohen_kappa_score = require("sklearn.metrics", "judges", "Cohen's kappa").cohen_kappa_score

    a, b = [c.value for c in x], [c.value for c in y]
    if len(set(a) | set(b)) < 2:
        return float("nan")  # one label only: kappa is undefined
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(cohen_kappa_score(a, b, labels=[c.value for c in Choice]))
