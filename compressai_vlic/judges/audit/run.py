"""Run an audit: every judge on every human-labelled pair, then every statistic of the report."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.audit.collect import collect, derive
from compressai_vlic.judges.audit.readers import HumanPair, _load
from compressai_vlic.judges.audit.report import AuditReport, JudgeReport
from compressai_vlic.judges.audit.scaling import ScaleType, scaling_stats
from compressai_vlic.judges.audit.statistics import (
    SEPARABILITY_EDGES,
    AccuracyStats,
    Agreement,
    BinStats,
    HumanCeiling,
    accuracy_stats,
    binned_accuracy,
    bootstrap_mean,
    cohen_kappa,
    position_bias,
    self_consistency,
)
from compressai_vlic.judges.compose import (
    unanimous,
)
from compressai_vlic.judges.types import Judge, Judgment


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
    scale_type: ScaleType = "bradley-terry"
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
        if q.reference is None:
            raise ConfigError(
                f"--gap-metric {metric_name}: pair {p.pair_id} has no reference; a full-reference "
                "metric gap needs one (use a reference-free judge's values instead)"
            )
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
