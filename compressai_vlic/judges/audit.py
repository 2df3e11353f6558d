"""Judge audit: how well does a judge agree with human 2AFC labels, and how noisy is it?

Inputs: the BAPPS 2AFC layout (``ref/``, ``p0/``, ``p1/``, ``judge/*.npy`` holding the fraction of
humans who preferred ``p1``; optionally one sub-folder per distortion category) or a plain CSV
with columns ``reference,a,b`` and ``human_b`` (fraction preferring b) or ``human_a``, plus
optional ``n_humans``, ``scene`` and ``category``.

Every judge is asked each pair in both orders, ``repeats`` times. From those raw answers the audit
derives, with the same combination rules the dataset builder uses (:mod:`.compose`):
accuracy against the human majority (abstentions get half credit, as a coin flip would) and the
BAPPS score ``p*h + (1-p)*(1-h)``, both with bootstrap intervals, for a single vote, the
symmetrised vote and majorities of k votes; the human ceiling; the position-bias rate;
self-consistency across repeats; Cohen's kappa between judges; accuracy by perceptual
separability (``|h - 0.5|``, or a metric gap); and, where a scene has three or more stimuli,
per-stimulus scale values (Bradley-Terry or Thurstone Case V) compared with the human scale by
Spearman correlation with scene-bootstrap intervals. Prompt variants for other attributes
(contrast, colorfulness, overall preference) are judges built with another ``attribute`` and use
the same machinery.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressai_vlic.errors import ConfigError, DatasetError
from compressai_vlic.image_io import IMAGE_SUFFIXES, load_image
from compressai_vlic.judges.compose import (
    combine_orders,
    describe_judge,
    majority,
    mapped_back,
    sample_members,
    unanimous,
)
from compressai_vlic.judges.types import Choice, Judge, JudgeRequest, Judgment

SCALE_TYPES = ("bradley-terry", "thurstone")
SEPARABILITY_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


# --------------------------------------------------------------------------- human-labelled pairs


@dataclass(frozen=True)
class HumanPair:
    """A reference, two stimuli, and the fraction of humans who preferred B."""

    pair_id: str
    reference: Path
    a: Path
    b: Path
    human_b: float
    n_humans: int | None = None
    scene: str = ""
    category: str = ""

    @property
    def human_majority(self) -> Choice | None:
        if self.human_b > 0.5:
            return Choice.B
        if self.human_b < 0.5:
            return Choice.A
        return None


def _find_with_stem(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _bapps_category(root: Path, category: str) -> list[HumanPair]:
    ref_dir, p0_dir, p1_dir, judge_dir = (root / n for n in ("ref", "p0", "p1", "judge"))
    for d in (p0_dir, p1_dir, judge_dir):
        if not d.is_dir():
            raise DatasetError(
                f"{root}: BAPPS 2AFC layout needs ref/, p0/, p1/ and judge/ (missing {d.name}/)"
            )
    pairs = []
    refs = sorted(p for p in ref_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for ref in refs:
        p0, p1 = _find_with_stem(p0_dir, ref.stem), _find_with_stem(p1_dir, ref.stem)
        npy = judge_dir / f"{ref.stem}.npy"
        if p0 is None or p1 is None or not npy.is_file():
            raise DatasetError(
                f"{root}: {ref.name} has no matching p0/, p1/ image or judge/{ref.stem}.npy"
            )
        try:
            h = float(
                np.asarray(np.load(npy, allow_pickle=False), dtype=np.float64).reshape(-1).mean()
            )
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{npy}: not a numeric .npy file ({exc})") from exc
        if not 0.0 <= h <= 1.0:
            raise DatasetError(f"{npy}: human fraction {h} outside [0, 1]")
        pid = f"{category}/{ref.stem}" if category else ref.stem
        pairs.append(HumanPair(pid, ref, p0, p1, h, None, scene=pid, category=category))
    return pairs


def load_bapps(root: str | Path) -> list[HumanPair]:
    """A BAPPS 2AFC folder (``ref/ p0/ p1/ judge/``) or a folder of such category folders."""
    root = Path(root)
    if (root / "ref").is_dir():
        pairs = _bapps_category(root, "")
    else:
        cats = sorted(d for d in root.iterdir() if (d / "ref").is_dir()) if root.is_dir() else []
        if not cats:
            raise DatasetError(
                f"{root}: not a BAPPS 2AFC folder (expected ref/, p0/, p1/, judge/ or category sub-folders)"
            )
        pairs = [p for d in cats for p in _bapps_category(d, d.name)]
    if not pairs:
        raise DatasetError(f"{root}: no pairs found")
    return pairs


def load_csv(path: str | Path) -> list[HumanPair]:
    """CSV of ``reference,a,b,human_b`` (or ``human_a``); paths relative to the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such CSV file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        need = {"reference", "a", "b"}
        if not need <= cols or len(cols & {"human_a", "human_b"}) != 1:
            raise DatasetError(
                f"{path}: needs columns reference,a,b and exactly one of human_b (fraction preferring b) "
                f"or human_a; found {sorted(cols)}"
            )
        pairs = []
        for lineno, row in enumerate(reader, start=2):
            try:
                h = float(row["human_b"]) if "human_b" in cols else 1.0 - float(row["human_a"])
                n = int(row["n_humans"]) if row.get("n_humans") else None
            except ValueError as exc:
                raise DatasetError(f"{path}:{lineno}: {exc}") from exc
            if not 0.0 <= h <= 1.0:
                raise DatasetError(f"{path}:{lineno}: human preference {h} outside [0, 1]")
            ref, a, b = ((path.parent / row[k]).resolve() for k in ("reference", "a", "b"))
            for p in (ref, a, b):
                if not p.is_file():
                    raise DatasetError(f"{path}:{lineno}: {p} does not exist")
            scene = row.get("scene") or str(ref)
            pairs.append(
                HumanPair(f"{lineno - 1}", ref, a, b, h, n, scene, row.get("category") or "")
            )
    if not pairs:
        raise DatasetError(f"{path}: no rows")
    return pairs


# --------------------------------------------------------------------------- collecting raw answers


@dataclass
class RawAnswers:
    """Every answer of one judge: ``ab[r][i]`` on (A, B), ``ba[r][i]`` on (B, A) as returned."""

    judge: str
    config: dict[str, Any]
    ab: list[list[Judgment]]
    ba: list[list[Judgment]]
    seconds: float


def _load(pair: HumanPair) -> JudgeRequest:
    ref, a, b = (load_image(p).tensor for p in (pair.reference, pair.a, pair.b))
    if not (ref.shape == a.shape == b.shape):
        raise DatasetError(
            f"pair {pair.pair_id}: reference, A and B differ in size ({tuple(ref.shape)}, {tuple(a.shape)}, {tuple(b.shape)})"
        )
    return JudgeRequest(ref, a, b, pair.pair_id)


def collect(
    judge: Judge,
    pairs: Sequence[HumanPair],
    repeats: int = 1,
    batch_size: int = 16,
    progress: bool = True,
) -> RawAnswers:
    """Ask ``judge`` every pair in both orders, ``repeats`` independent times."""
    from tqdm.auto import tqdm

    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    members = sample_members(judge, repeats)
    ab: list[list[Judgment]] = [[] for _ in range(repeats)]
    ba: list[list[Judgment]] = [[] for _ in range(repeats)]
    t0 = time.perf_counter()
    with tqdm(
        total=len(pairs),
        unit="pair",
        desc=f"audit {judge.name}",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(pairs), batch_size):
            reqs = [_load(p) for p in pairs[start : start + batch_size]]
            for r, member in enumerate(members):
                out = member.compare_batch(reqs + [q.swapped() for q in reqs])
                ab[r].extend(out[: len(reqs)])
                ba[r].extend(out[len(reqs) :])
            bar.update(len(reqs))
    return RawAnswers(judge.name, describe_judge(judge), ab, ba, time.perf_counter() - t0)


def derive(
    raw: RawAnswers,
    order_type: str,
    votes: int,
    combine_type: str = "sum",
    majority_type: str = "plurality",
) -> list[Judgment]:
    """The judgments a composite judge (order_type, votes) would give, from the raw answers."""
    if votes > len(raw.ab):
        raise ConfigError(f"{votes} votes need --repeats >= {votes} (have {len(raw.ab)})")
    n = len(raw.ab[0])
    if order_type == "symmetrize":
        per_vote = [
            [combine_orders(raw.ab[r][i], raw.ba[r][i], combine_type) for i in range(n)]
            for r in range(votes)
        ]
    else:
        per_vote = [raw.ab[r] for r in range(votes)]
    if votes == 1:
        return list(per_vote[0])
    return [majority([per_vote[r][i] for r in range(votes)], majority_type) for i in range(n)]


# --------------------------------------------------------------------------- statistics


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
    from sklearn.metrics import cohen_kappa_score

    a, b = [c.value for c in x], [c.value for c in y]
    if len(set(a) | set(b)) < 2:
        return float("nan")  # one label only: kappa is undefined
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(cohen_kappa_score(a, b, labels=[c.value for c in Choice]))


# --------------------------------------------------------------------------- psychometric scaling


def fit_scale(
    wins: np.ndarray, scale_type: str = "bradley-terry", ridge: float = 0.01
) -> np.ndarray:
    """Per-stimulus scale values from a win matrix (``wins[i, j]`` = times i was preferred to j).

    Maximum likelihood with ``P(i > j) = sigmoid(s_i - s_j)`` (Bradley-Terry) or
    ``Phi(s_i - s_j)`` (Thurstone Case V). A small ridge keeps the values finite when one
    stimulus always wins; values are centred to mean 0.
    """
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit
    from scipy.stats import norm

    if scale_type not in SCALE_TYPES:
        raise ConfigError(f"scale_type must be one of {SCALE_TYPES}, got {scale_type!r}")
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

    scale_type: str
    n_scenes: int
    spearman: Estimate  # mean per-scene Spearman, scene-bootstrap interval
    scenes: list[SceneScale]


def scaling_stats(
    judgments: Sequence[Judgment],
    pairs: Sequence[HumanPair],
    scale_type: str,
    n_boot: int,
    rng: np.random.Generator,
) -> ScalingStats | None:
    from scipy.stats import spearmanr

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


# --------------------------------------------------------------------------- the report


@dataclass
class JudgeReport:
    judge: str
    config: dict[str, Any]
    seconds: float
    answers_per_pair: int
    configured: str
    variants: list[AccuracyStats]
    votes_curve: list[AccuracyStats]
    position_bias: PositionBias
    self_consistency: SelfConsistency | None
    kappa_vs_human: float
    separability: list[BinStats]
    metric_gap: list[BinStats] = field(default_factory=list)
    categories: list[AccuracyStats] = field(default_factory=list)
    scaling: ScalingStats | None = None


@dataclass
class AuditReport:
    source: str
    n_pairs: int
    repeats: int
    bootstrap: int
    human: HumanCeiling
    judges: list[JudgeReport]
    agreement: list[Agreement]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str, allow_nan=True))


@dataclass
class AuditSettings:
    """What to ask and how to combine it (mirrors the dataset builder's composition flags)."""

    repeats: int = 1
    order_type: str = "as-given"
    votes: int = 1
    combine_type: str = "sum"
    majority_type: str = "plurality"
    unanimous_with: list[str] = field(default_factory=list)
    gap_metric: str | None = None
    scale_type: str = "bradley-terry"
    bootstrap: int = 1000
    seed: int = 0
    batch_size: int = 16
    progress: bool = True


def _variant_name(order_type: str, votes: int) -> str:
    base = "symmetrized" if order_type == "symmetrize" else "single order"
    return base if votes == 1 else f"{base}, majority of {votes}"


def _metric_gaps(metric_name: str, pairs: Sequence[HumanPair]) -> np.ndarray:
    from compressai_vlic.metrics import get_metric

    metric = get_metric(metric_name, "cpu")
    gaps = []
    for p in pairs:
        q = _load(p)
        ref = q.reference[None]
        va, vb = float(metric(ref, q.a[None])[0]), float(metric(ref, q.b[None])[0])
        gaps.append(abs(va - vb))
    return np.array(gaps)


def audit(
    judges: Sequence[Judge],
    pairs: Sequence[HumanPair],
    settings: AuditSettings,
    source: str = "",
    make: Callable[[str], Judge] | None = None,
) -> AuditReport:
    """Run every judge on every pair and compute the report."""
    s = settings
    repeats = max(s.repeats, s.votes)
    rng = np.random.default_rng(s.seed)
    h = np.array([p.human_b for p in pairs])
    human = HumanCeiling(
        bootstrap_mean(h**2 + (1 - h) ** 2, s.bootstrap, rng),
        bootstrap_mean(np.maximum(h, 1 - h), s.bootstrap, rng),
    )
    sep_keys = np.abs(h - 0.5)
    gaps = _metric_gaps(s.gap_metric, pairs) if s.gap_metric else None
    partners: dict[str, list[Judgment]] = {}
    if s.unanimous_with:
        if make is None:
            raise ConfigError("unanimous_with needs a judge factory")
        for t in s.unanimous_with:
            raw_u = collect(make(t), pairs, 1, s.batch_size, s.progress)
            partners[t] = derive(raw_u, s.order_type, 1, s.combine_type)
    reports, configured_choices = [], {}
    categories = sorted({p.category for p in pairs})
    for judge in judges:
        raw = collect(judge, pairs, repeats, s.batch_size, s.progress)
        variants: list[AccuracyStats] = []
        for order_type in ("as-given", "symmetrize"):
            for v in sorted({1, s.votes, repeats}):
                variants.append(
                    accuracy_stats(
                        _variant_name(order_type, v),
                        derive(raw, order_type, v, s.combine_type, s.majority_type),
                        pairs,
                        s.bootstrap,
                        rng,
                    )
                )
        configured_name = _variant_name(s.order_type, s.votes)
        configured = derive(raw, s.order_type, s.votes, s.combine_type, s.majority_type)
        for t, other in partners.items():
            configured = [unanimous([c, o], [judge.name, t]) for c, o in zip(configured, other)]
            configured_name += f" + unanimous with {t}"
            variants.append(accuracy_stats(configured_name, configured, pairs, s.bootstrap, rng))
        curve = [
            accuracy_stats(
                f"k={k}",
                derive(raw, s.order_type, k, s.combine_type, s.majority_type),
                pairs,
                s.bootstrap,
                rng,
            )
            for k in range(1, repeats + 1)
        ]
        maj_idx = [i for i, p in enumerate(pairs) if p.human_majority is not None]
        kappa_h = cohen_kappa(
            [configured[i].choice for i in maj_idx], [pairs[i].human_majority for i in maj_idx]
        )  # type: ignore[misc]
        cats = []
        if len(categories) > 1:
            for cat in categories:
                idx = [i for i, p in enumerate(pairs) if p.category == cat]
                cats.append(
                    accuracy_stats(
                        cat, [configured[i] for i in idx], [pairs[i] for i in idx], s.bootstrap, rng
                    )
                )
        gap_bins: list[BinStats] = []
        if gaps is not None:
            edges = np.unique(np.quantile(gaps, [0, 0.25, 0.5, 0.75, 1.0]))
            gap_bins = binned_accuracy(
                gaps, edges.tolist(), configured, pairs, s.bootstrap, rng, "{:.3g}"
            )
        reports.append(
            JudgeReport(
                judge=judge.name,
                config=raw.config,
                seconds=raw.seconds,
                answers_per_pair=2 * repeats,
                configured=configured_name,
                variants=variants,
                votes_curve=curve,
                position_bias=position_bias(raw),
                self_consistency=self_consistency(raw),
                kappa_vs_human=kappa_h,
                separability=binned_accuracy(
                    sep_keys, SEPARABILITY_EDGES, configured, pairs, s.bootstrap, rng
                ),
                metric_gap=gap_bins,
                categories=cats,
                scaling=scaling_stats(configured, pairs, s.scale_type, s.bootstrap, rng),
            )
        )
        configured_choices[judge.name] = [j.choice for j in configured]
    agreement = []
    for x, y in itertools.combinations(configured_choices, 2):
        cx, cy = configured_choices[x], configured_choices[y]
        agreement.append(
            Agreement(x, y, float(np.mean([a is b for a, b in zip(cx, cy)])), cohen_kappa(cx, cy))
        )
    return AuditReport(source, len(pairs), repeats, s.bootstrap, human, reports, agreement)


# --------------------------------------------------------------------------- output


def format_report(report: AuditReport) -> str:
    """The report as plain-text tables (accuracies in %, 95% bootstrap intervals)."""
    lines = [
        f"audit of {report.source}: {report.n_pairs} pairs, {report.repeats} repeat(s) x 2 orders, {report.bootstrap} bootstrap resamples",
        f"human ceiling (h^2+(1-h)^2): {report.human.human.fmt()}   majority oracle (max(h,1-h)): {report.human.oracle.fmt()}",
        "",
        f"{'judge':<22} {'variant':<44} {'acc vs majority':>24} {'acc (decided)':>24} {'abstain':>8} {'2AFC score':>24}",
    ]
    for jr in report.judges:
        for v in jr.variants:
            mark = "*" if v.name == jr.configured else " "
            lines.append(
                f"{jr.judge:<22} {mark}{v.name:<43} {v.accuracy.fmt():>24} {v.accuracy_decided.fmt():>24} {100 * v.abstain_rate:>7.1f}% {v.bapps_score.fmt():>24}"
            )
    lines.append("(* = configured composition; abstentions count as half right)")
    for jr in report.judges:
        for v in jr.variants:
            if v.soft_score is not None:
                lines.append(
                    f"{jr.judge} / {v.name}: soft 2AFC score from P(A) {v.soft_score.fmt()}"
                )
    lines.append("")
    lines.append(
        f"{'judge':<22} {'pos. flip':>10} {'first-shown':>12} {'self-agree':>11} {'kappa vs human':>15} {'s/pair':>8}"
    )
    for jr in report.judges:
        sc = (
            f"{100 * jr.self_consistency.pairwise_agreement:.1f}%" if jr.self_consistency else "n/a"
        )
        pb = jr.position_bias
        lines.append(
            f"{jr.judge:<22} {100 * pb.flip_rate:>9.1f}% {100 * pb.first_shown_rate:>11.1f}% {sc:>11} {jr.kappa_vs_human:>15.3f} {jr.seconds / max(report.n_pairs, 1):>8.4f}"
        )
    for jr in report.judges:
        lines.append("")
        lines.append(f"{jr.judge}: accuracy by separability |h-0.5| ({jr.configured})")
        for b in jr.separability:
            lines.append(
                f"  {b.label:<14} n={b.n_pairs:<6} acc {b.accuracy.fmt():>24}   2AFC {b.bapps_score.fmt():>24}"
            )
        if jr.metric_gap:
            lines.append(f"{jr.judge}: accuracy by metric gap")
            for b in jr.metric_gap:
                lines.append(f"  {b.label:<22} n={b.n_pairs:<6} acc {b.accuracy.fmt():>24}")
        if len(jr.votes_curve) > 1:
            curve = "  ".join(f"{c.name}: {100 * c.accuracy.value:.2f}" for c in jr.votes_curve)
            lines.append(f"{jr.judge}: accuracy vs votes  {curve}")
        for c in jr.categories:
            lines.append(
                f"  category {c.name:<16} n={c.n_pairs:<6} acc {c.accuracy.fmt():>24}   2AFC {c.bapps_score.fmt():>24}"
            )
        if jr.scaling is not None:
            lines.append(
                f"{jr.judge}: {jr.scaling.scale_type} scale vs human scale, Spearman over {jr.scaling.n_scenes} scenes: {jr.scaling.spearman.fmt(pct=False)}"
            )
    if report.agreement:
        lines.append("")
        lines.append("agreement between judges (configured compositions)")
        for a in report.agreement:
            lines.append(
                f"  {a.first} vs {a.second}: agreement {100 * a.agreement:.1f}%, Cohen's kappa {a.kappa:.3f}"
            )
    return "\n".join(lines)


def plot_report(report: AuditReport, path: Path) -> Path:
    """2AFC score by separability bin, and vs number of votes (or per variant), per judge (PNG).

    Plotted in BAPPS 2AFC-score units so the human and oracle ceilings are comparable lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k, jr in enumerate(report.judges):
        bins = [b for b in jr.separability if b.n_pairs > 0]
        x = np.array([(b.low + b.high) / 2 for b in bins]) + 0.004 * k
        y = np.array([100 * b.bapps_score.value for b in bins])
        err = np.array(
            [
                [100 * (b.bapps_score.value - b.bapps_score.low) for b in bins],
                [100 * (b.bapps_score.high - b.bapps_score.value) for b in bins],
            ]
        )
        ax1.errorbar(x, y, yerr=err, marker="o", capsize=3, label=jr.judge)
    ax1.set_xlabel("separability |h - 0.5| (h = fraction of humans preferring B)")
    ax1.set_ylabel("2AFC score (%)")
    ax1.set_title("by perceptual separability (configured judge)")
    if report.repeats > 1:
        for jr in report.judges:
            ks = list(range(1, len(jr.votes_curve) + 1))
            ax2.plot(
                ks, [100 * c.bapps_score.value for c in jr.votes_curve], marker="o", label=jr.judge
            )
        ax2.set_xlabel("votes (majority; even counts can tie and abstain)")
        ax2.set_title("self-ensembling")
    else:
        names = [v.name for v in report.judges[0].variants]
        width = 0.8 / max(len(report.judges), 1)
        for k, jr in enumerate(report.judges):
            vals = [100 * v.bapps_score.value for v in jr.variants]
            ax2.bar(np.arange(len(vals)) + k * width, vals, width, label=jr.judge)
        ax2.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, fontsize=7, rotation=15)
        ax2.set_ylim(0, 100)
        ax2.set_title("composition variants")
    for ax in (ax1, ax2):
        ax.axhline(100 * report.human.human.value, color="gray", ls=":", lw=1, label="human")
        ax.axhline(
            100 * report.human.oracle.value, color="gray", ls="--", lw=1, label="majority oracle"
        )
        ax.set_ylabel("2AFC score (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from compressai_vlic.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- CLI


def add_audit_arguments(parser: Any) -> None:
    src = parser.add_argument_group("human labels")
    src.add_argument(
        "--bapps",
        type=Path,
        help="BAPPS 2AFC folder (ref/ p0/ p1/ judge/) or a folder of category folders",
    )
    src.add_argument(
        "--csv",
        type=Path,
        help="CSV with reference,a,b,human_b (or human_a) [,n_humans,scene,category]",
    )
    src.add_argument("--limit", type=int, default=None, help="audit only the first N pairs")
    a = parser.add_argument_group("audit")
    a.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="independent answers per pair and order (default: --votes)",
    )
    a.add_argument(
        "--gap-metric",
        default=None,
        help="also bin accuracy by the gap of this metric between A and B (e.g. ssimulacra2)",
    )
    a.add_argument(
        "--scale-type",
        choices=SCALE_TYPES,
        default="bradley-terry",
        help="psychometric scaling for scenes with >= 3 stimuli",
    )
    a.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals"
    )
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument(
        "--output-dir", type=Path, required=True, help="writes audit.json and audit.png here"
    )
    a.add_argument("--progress-type", choices=("bar", "none"), default="bar")


def run_audit_cli(args: Any) -> int:
    from compressai_vlic.cli.judge import (
        DEFAULT_JUDGE,
        _make_extra,
        check_judge_arg_prefixes,
        make_judge_from_args,
    )
    from compressai_vlic.judges.compose import ComposeSpec, compose

    if (args.bapps is None) == (args.csv is None):
        raise ConfigError("judge audit needs exactly one of --bapps DIR or --csv FILE")
    pairs = load_bapps(args.bapps) if args.bapps is not None else load_csv(args.csv)
    if args.limit is not None:
        pairs = pairs[: args.limit]
    judge_types = args.judge_type or [DEFAULT_JUDGE]
    extra_types = [*args.unanimous_with, *(t for t, _ in args.weighted)]
    check_judge_arg_prefixes(args.judge_arg, [*judge_types, *extra_types])
    make = _make_extra(args)
    judges = []
    for t in judge_types:
        base = make_judge_from_args(t, args)
        if args.weighted:  # a weighted ensemble is audited as one judge
            base = compose(
                base,
                ComposeSpec(
                    weighted=dict(args.weighted),
                    base_weight=args.base_weight,
                    weighted_type=args.weighted_type,
                ),
                make,
            )
        judges.append(base)
    settings = AuditSettings(
        repeats=args.repeats or args.votes,
        order_type=args.order_type,
        votes=args.votes,
        combine_type=args.combine_type,
        majority_type=args.majority_type,
        unanimous_with=list(args.unanimous_with),
        gap_metric=args.gap_metric,
        scale_type=args.scale_type,
        bootstrap=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=args.progress_type == "bar",
    )
    report = audit(judges, pairs, settings, str(args.bapps or args.csv), make)
    print(format_report(report))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    out_json = args.output_dir / "audit.json"
    from compressai_vlic.atomic import atomic_write_text

    atomic_write_text(out_json, json.dumps(report.to_dict(), indent=1))
    out_png = plot_report(report, args.output_dir / "audit.png")
    print(f"\nwrote {out_json} and {out_png}")
    return 0


__all__ = [
    "AuditReport",
    "AuditSettings",
    "HumanPair",
    "audit",
    "collect",
    "derive",
    "fit_scale",
    "format_report",
    "load_bapps",
    "load_csv",
    "plot_report",
    "scaling_stats",
]
