"""The two gaps of a VLM on compressed images, from a base run and an adapted run.

With the task loss L, the original images X, their reconstructions X^ (one codec at one rate
point), the original VLM theta and the adapted one theta* (the base model with a
codec-conditioned adaptor, or any model tuned for compressed images)::

    performance gap      L(X, theta) - L(X^, theta)
      = information gap  L(X, theta) - L(X^, theta*)     what adaptation cannot win back
      + generalisation gap L(X^, theta*) - L(X^, theta)  what the adapted model wins back

``loss_type="error"`` (default) takes L = 1 - score (1 - accuracy): a codec that costs accuracy
then has a negative performance gap, and an adaptor that helps a negative generalisation gap.
``loss_type="score"`` takes L = score, which flips every sign (drops are positive). Either way the
two gaps sum to the performance gap, and ``recovered`` = generalisation / performance gap is the
share of the drop the adaptation wins back. L(X, theta) comes from the base run's
"uncompressed" rows; both runs must cover the same tasks, codecs and rate points.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from compressai_vlic.atomic import atomic_path, atomic_write_text
from compressai_vlic.errors import ConfigError
from compressai_vlic.options import check_option
from compressai_vlic.vlm.bench import UNCOMPRESSED, ScoreRow, load_summary

LossType = Literal["error", "score"]


@dataclass(frozen=True)
class GapRow:
    """The gaps of one (task, codec, rate point)."""

    task: str
    metric: str
    codec: str
    rate_point: str
    bpp: float | None
    loss_original: float  # L(X, theta)
    loss_compressed: float  # L(X^, theta)
    loss_adapted: float  # L(X^, theta*)
    performance_gap: float
    information_gap: float
    generalisation_gap: float
    recovered: float | None  # generalisation / performance gap (None when no gap)


def _loss(score: float, loss_type: str) -> float:
    return 1.0 - score if loss_type == "error" else score


def compute_gaps(
    base: Sequence[ScoreRow], adapted: Sequence[ScoreRow], loss_type: LossType = "error"
) -> list[GapRow]:
    """Gap rows per (task, codec, rate point) of ``base`` (theta) and ``adapted`` (theta*) runs.

    Args:
        base: score rows of the run with the original VLM (must include "uncompressed").
        adapted: score rows of the run with the adapted VLM on the same codecs and rates.
        loss_type: "error" (default, L = 1 - score) or "score" (L = score).
    """
    check_option("loss_type", loss_type, LossType)
    originals = {r.task: r for r in base if r.codec == UNCOMPRESSED}
    theta_star = {(r.task, r.codec, r.rate_point): r for r in adapted if r.codec != UNCOMPRESSED}
    out: list[GapRow] = []
    missing: list[str] = []
    for r in base:
        if r.codec == UNCOMPRESSED:
            continue
        if r.task not in originals:
            raise ConfigError(f"the base run has no uncompressed row for task {r.task!r}")
        star = theta_star.get((r.task, r.codec, r.rate_point))
        if star is None:
            missing.append(f"{r.task}/{r.codec}@{r.rate_point}")
            continue
        if star.metric != r.metric:
            raise ConfigError(
                f"{r.task}: the base run scores {r.metric}, the adapted run {star.metric}"
            )
        l_x = _loss(originals[r.task].score, loss_type)
        l_xhat = _loss(r.score, loss_type)
        l_star = _loss(star.score, loss_type)
        performance = l_x - l_xhat
        information = l_x - l_star
        generalisation = l_star - l_xhat
        out.append(
            GapRow(
                task=r.task,
                metric=r.metric,
                codec=r.codec,
                rate_point=r.rate_point,
                bpp=r.bpp,
                loss_original=l_x,
                loss_compressed=l_xhat,
                loss_adapted=l_star,
                performance_gap=performance,
                information_gap=information,
                generalisation_gap=generalisation,
                recovered=generalisation / performance if performance != 0 else None,
            )
        )
    if missing:
        raise ConfigError(
            f"the adapted run lacks {len(missing)} point(s) of the base run (e.g. "
            f"{', '.join(missing[:3])}): run both with the same --task and --codec options"
        )
    if not out:
        raise ConfigError("no codec points in common between the two runs")
    return out


def gaps_from_runs(
    base_dir: str | Path, adapted_dir: str | Path, loss_type: LossType = "error"
) -> tuple[list[GapRow], dict[str, Any]]:
    """Gap rows from two ``vlm-bench run`` output folders, and both answerers' identities."""
    base, base_id = load_summary(base_dir)
    adapted, adapted_id = load_summary(adapted_dir)
    return compute_gaps(base, adapted, loss_type), {"base": base_id, "adapted": adapted_id}


def gaps_table(rows: Sequence[GapRow]) -> str:
    lines = [
        "| task | codec | rate point | bpp | performance gap | information gap | "
        "generalisation gap | recovered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bpp = "–" if r.bpp is None else f"{r.bpp:.4g}"
        rec = "–" if r.recovered is None else f"{r.recovered:.1%}"
        lines.append(
            f"| {r.task} | {r.codec} | {r.rate_point} | {bpp} | {r.performance_gap:+.4f} | "
            f"{r.information_gap:+.4f} | {r.generalisation_gap:+.4f} | {rec} |"
        )
    return "\n".join(lines) + "\n"


def write_gaps(
    rows: Sequence[GapRow],
    output_dir: str | Path,
    loss_type: str = "error",
    identities: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """gaps.json, gaps.csv and gaps.md in ``output_dir`` (atomically)."""
    out = Path(output_dir)
    payload = {
        "loss_type": loss_type,
        "answerers": identities or {},
        "rows": [asdict(r) for r in rows],
    }
    paths = {"json": atomic_write_text(out / "gaps.json", json.dumps(payload, indent=1))}
    with atomic_path(out / "gaps.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        columns = list(GapRow.__dataclass_fields__)
        writer.writerow(columns)
        for r in rows:
            d = asdict(r)
            writer.writerow(["" if d[c] is None else d[c] for c in columns])
    paths["csv"] = out / "gaps.csv"
    paths["table"] = atomic_write_text(out / "gaps.md", gaps_table(rows))
    return paths
