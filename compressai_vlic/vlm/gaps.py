"""The two gaps of a VLM on compressed images, from a base run and one or more adapted runs.

With L the task performance (the paper's convention), the original images X, their
reconstructions X^ (one codec at one rate point), the original VLM theta and the adapted one
theta*::

    performance gap      L(X, theta) - L(X^, theta)
      = information gap  L(X, theta) - L(X^, theta*)     what adaptation cannot win back
      + generalisation gap L(X^, theta*) - L(X^, theta)  what the adapted model wins back

``loss_type="score"`` (default) takes L = score: a codec that costs score has a positive
performance gap, and an adaptor that helps a positive generalisation gap. ``loss_type="error"``
takes L = 1 - score (only for scores in [0, 1]) and flips every sign. Either way the two gaps sum
to the performance gap, and ``recovered`` = generalisation / performance gap is the share of the
drop the adaptation wins back.

theta* is the best adapted model supplied: with several adapted runs (adaptors, fine-tuned
models), each (task, codec, rate point) takes the run with the highest score there, so the
information gap is the part that none of them wins back. L(X, theta) comes from the base run's
"uncompressed" rows; every run must cover the base run's tasks, codecs and rate points.

The BD forms (:func:`bd_gaps`) average each gap over a codec's log-bpp range, as the BD-metric
does: the BD performance gap is the BD drop of the base curve against the uncompressed level
(the paper's Tables 2 and 16), the BD generalisation gap is the BD-metric between the adapted
(theta*) and the base curve of the codec (Tables 4 and 5), and the BD information gap is their
difference, the BD drop of the theta* curve.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compressai_vlic.atomic import atomic_path, atomic_write_text
from compressai_vlic.errors import ConfigError
from compressai_vlic.options import check_option
from compressai_vlic.vlm.bench import UNCOMPRESSED, ScoreRow, load_summary
from compressai_vlic.vlm.options import LossType

_BOUNDED = ("accuracy", "exact_match", "vqa_accuracy", "anls")


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
    adapted_run: int = 0  # which adapted run is theta* here (index in the order given)


def _loss(score: float, loss_type: str) -> float:
    return 1.0 - score if loss_type == "error" else score


def _runs(adapted: Sequence[ScoreRow] | Sequence[Sequence[ScoreRow]]) -> list[list[ScoreRow]]:
    if adapted and isinstance(adapted[0], ScoreRow):
        return [list(adapted)]  # type: ignore[arg-type]
    return [list(run) for run in adapted]  # type: ignore[union-attr]


def _theta_star(
    base: Sequence[ScoreRow], runs: list[list[ScoreRow]]
) -> dict[tuple[str, str, str], tuple[ScoreRow, int]]:
    """(task, codec, rate point) -> the best adapted row there and its run index."""
    if not runs:
        raise ConfigError("give at least one adapted run")
    wanted = {(r.task, r.codec, r.rate_point) for r in base if r.codec != UNCOMPRESSED}
    best: dict[tuple[str, str, str], tuple[ScoreRow, int]] = {}
    for i, run in enumerate(runs):
        have = {(r.task, r.codec, r.rate_point): r for r in run if r.codec != UNCOMPRESSED}
        missing = sorted(wanted - set(have))
        if missing:
            shown = ", ".join(f"{t}/{c}@{p}" for t, c, p in missing[:3])
            raise ConfigError(
                f"adapted run {i} lacks {len(missing)} point(s) of the base run (e.g. {shown}): "
                "run every model with the same --task and --codec options"
            )
        for key in wanted:
            row = have[key]
            if key not in best or row.score > best[key][0].score:
                best[key] = (row, i)
    return best


def compute_gaps(
    base: Sequence[ScoreRow],
    adapted: Sequence[ScoreRow] | Sequence[Sequence[ScoreRow]],
    loss_type: LossType = "score",
) -> list[GapRow]:
    """Gap rows per (task, codec, rate point) of ``base`` (theta) and ``adapted`` (theta*) runs.

    Args:
        base: score rows of the run with the original VLM (must include "uncompressed").
        adapted: score rows of one adapted run, or a list of runs (theta* = the best per point).
        loss_type: "score" (default, L = score, the paper's signs) or "error" (L = 1 - score).
    """
    check_option("loss_type", loss_type, LossType)
    originals = {r.task: r for r in base if r.codec == UNCOMPRESSED}
    theta_star = _theta_star(base, _runs(adapted))
    out: list[GapRow] = []
    for r in base:
        if r.codec == UNCOMPRESSED:
            continue
        if r.task not in originals:
            raise ConfigError(f"the base run has no uncompressed row for task {r.task!r}")
        if loss_type == "error" and r.metric not in _BOUNDED:
            raise ConfigError(
                f"{r.task} is scored with {r.metric}, not in [0, 1]: use loss_type 'score'"
            )
        star, run_index = theta_star[(r.task, r.codec, r.rate_point)]
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
                adapted_run=run_index,
            )
        )
    if not out:
        raise ConfigError("no codec points in common between the two runs")
    return out


@dataclass(frozen=True)
class GapBDRow:
    """The gaps of one (task, codec) averaged over its log-bpp range (BD-metric form)."""

    task: str
    metric: str
    codec: str
    bd_performance_gap: float | None  # BD drop of the base curve vs uncompressed (Tables 2, 16)
    bd_information_gap: float | None  # BD drop of the theta* curve vs uncompressed
    bd_generalisation_gap: float | None  # BD-metric theta* vs base curve (Tables 4, 5)
    log_rate_interval: tuple[float, float] | None
    note: str = ""


def bd_gaps(
    base: Sequence[ScoreRow],
    adapted: Sequence[ScoreRow] | Sequence[Sequence[ScoreRow]],
    loss_type: LossType = "score",
    method: str = "pchip",
) -> list[GapBDRow]:
    """The three gaps per (task, codec) in BD form. The base and the theta* score curves are
    each fitted against log-bpp (as the BD-metric fits them) and averaged over the codec's
    log-bpp range: with C the uncompressed score and B, S those means (L = score),
    performance = C - B, information = C - S, generalisation = S - B, the BD-metric of the
    theta* curve against the base curve (both have the codec's rate points). They sum exactly.
    """
    from compressai_vlic.vlm.bench import curve_mean

    rows = compute_gaps(base, adapted, loss_type)
    sign = 1.0 if loss_type == "score" else -1.0
    out: list[GapBDRow] = []
    for task in dict.fromkeys(r.task for r in rows):
        for codec in dict.fromkeys(r.codec for r in rows if r.task == task):
            curve = sorted(
                (r for r in rows if r.task == task and r.codec == codec and r.bpp is not None),
                key=lambda r: r.bpp or 0.0,
            )
            metric = curve[0].metric if curve else ""
            if len(curve) < 2:
                out.append(GapBDRow(task, metric, codec, None, None, None, None,
                                    "needs 2+ rate points"))  # fmt: skip
                continue
            bpps = [float(r.bpp) for r in curve]  # type: ignore[arg-type]
            # scores back from the losses: score = L (score) or 1 - L (error)
            to_score = (lambda v: v) if loss_type == "score" else (lambda v: 1.0 - v)
            ceiling = to_score(curve[0].loss_original)
            try:
                mean_base = curve_mean(bpps, [to_score(r.loss_compressed) for r in curve], method)
                mean_star = curve_mean(bpps, [to_score(r.loss_adapted) for r in curve], method)
            except ConfigError as exc:
                out.append(GapBDRow(task, metric, codec, None, None, None, None, str(exc)))
                continue
            out.append(
                GapBDRow(
                    task,
                    metric,
                    codec,
                    sign * (ceiling - mean_base),
                    sign * (ceiling - mean_star),
                    sign * (mean_star - mean_base),
                    (math.log(min(bpps)), math.log(max(bpps))),
                )
            )
    return out


def gaps_from_runs(
    base_dir: str | Path,
    adapted_dirs: str | Path | Sequence[str | Path],
    loss_type: LossType = "score",
) -> tuple[list[GapRow], dict[str, Any], list[list[ScoreRow]], list[ScoreRow]]:
    """Gap rows from ``vlm-bench run`` output folders (a base run and one or more adapted runs),
    the answerers' identities, and the runs' score rows (adapted, base)."""
    if isinstance(adapted_dirs, (str, Path)):
        adapted_dirs = [adapted_dirs]
    base, base_id = load_summary(base_dir)
    runs, ids = [], []
    for folder in adapted_dirs:
        rows, identity = load_summary(folder)
        runs.append(rows)
        ids.append(identity)
    identities = {"base": base_id, "adapted": ids}
    return compute_gaps(base, runs, loss_type), identities, runs, base


def bd_gaps_table(rows: Sequence[GapBDRow]) -> str:
    lines = [
        "| task | codec | BD performance gap | BD information gap | BD generalisation gap | note |",
        "|---|---|---|---|---|---|",
    ]

    def cell(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.4f}"

    for r in rows:
        lines.append(
            f"| {r.task} | {r.codec} | {cell(r.bd_performance_gap)} | "
            f"{cell(r.bd_information_gap)} | {cell(r.bd_generalisation_gap)} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


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
    loss_type: str = "score",
    identities: dict[str, Any] | None = None,
    bd_rows: Sequence[GapBDRow] = (),
) -> dict[str, Path]:
    """gaps.json, gaps.csv and gaps.md in ``output_dir`` (atomically)."""
    out = Path(output_dir)
    payload = {
        "loss_type": loss_type,
        "answerers": identities or {},
        "rows": [asdict(r) for r in rows],
        "bd": [asdict(r) for r in bd_rows],
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
    table = gaps_table(rows)
    if bd_rows:
        table += "\n" + bd_gaps_table(bd_rows)
    paths["table"] = atomic_write_text(out / "gaps.md", table)
    return paths
