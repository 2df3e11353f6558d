"""The audit report: its dataclasses, a plain-text table, JSON and a plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressai_vlic.extras import require
from compressai_vlic.judges.audit.scaling import ScalingStats
from compressai_vlic.judges.audit.statistics import (
    AccuracyStats,
    Agreement,
    BinStats,
    HumanCeiling,
    PositionBias,
    SelfConsistency,
)


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
    matplotlib = require("matplotlib", "eval", "The audit plot")
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
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def write_report(report: AuditReport, output_dir: Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.png`` into ``output_dir``; returns both paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    out_json = output_dir / "audit.json"
    from compressai_vlic.atomic import atomic_write_text

    atomic_write_text(out_json, json.dumps(report.to_dict(), indent=1))
    return out_json, plot_report(report, output_dir / "audit.png")
