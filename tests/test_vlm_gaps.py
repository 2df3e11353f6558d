"""BD of task scores on synthetic curves against a hand computation; the two gaps."""

from __future__ import annotations

import json
import math

import pytest

from compressai_vlic.errors import ConfigError
from compressai_vlic.evaluation.bd import bd_metric
from compressai_vlic.vlm.bench import ScoreRow, bd_drop_rows, bd_task_scores, quality_correlations
from compressai_vlic.vlm.gaps import bd_gaps, compute_gaps, write_gaps


def _row(codec: str, point: str, bpp: float | None, score: float, task: str = "pope",
         metric: str = "accuracy") -> ScoreRow:  # fmt: skip
    return ScoreRow(task, "yes_no", metric, codec, point, 0, bpp, score, 100, 100, 0, 0.0)


def _line(codec: str, a: float, b: float, xs=(-2.0, -1.0, 0.0), **kw) -> list[ScoreRow]:
    """score = a + b ln(bpp) at ln(bpp) in ``xs``: PCHIP through collinear points is the line."""
    return [_row(codec, f"r{i}", math.exp(x), a + b * x, **kw) for i, x in enumerate(xs)]


def test_bd_drop_against_uncompressed_equals_a_hand_computation():
    # the paper's BD-metric (Tables 2, 16): mean of (ceiling - score) over the codec's log-bpp
    # range. jpeg: 0.5 + 0.1 x on [-2, 0] has mean 0.5 - 0.1 = 0.4: drop 0.9 - 0.4 = 0.5.
    # webp: 0.7 + 0.05 x on [-1.5, 0.5] has mean 0.7 - 0.025 = 0.675: drop 0.225.
    rows = [_row("uncompressed", "original", None, 0.9), *_line("jpeg", 0.5, 0.1),
            *_line("webp", 0.7, 0.05, xs=(-1.5, -0.5, 0.5)), _row("one", "a", 0.3, 0.2)]  # fmt: skip
    drops = {d.codec: d for d in bd_drop_rows(rows)}
    assert drops["jpeg"].bd_drop == pytest.approx(0.5, abs=1e-12)
    assert drops["jpeg"].log_rate_interval == pytest.approx((-2.0, 0.0))
    assert drops["webp"].bd_drop == pytest.approx(0.225, abs=1e-12)
    assert drops["one"].bd_drop is None and drops["one"].note == "needs 2+ rate points"
    # positive when compression costs score; a codec above the ceiling gets a negative drop
    above = bd_drop_rows([_row("uncompressed", "original", None, 0.3), *_line("jpeg", 0.5, 0.1)])
    assert above[0].bd_drop == pytest.approx(-0.1, abs=1e-12)


def test_bd_gaps_equal_hand_computations_and_the_paper_signs():
    # base 0.5 + 0.1 x, adapted 0.6 + 0.05 x on x = ln(bpp) in [-2, 0], ceiling 0.9:
    # means 0.4 and 0.55; performance 0.9 - 0.4 = 0.5, information 0.9 - 0.55 = 0.35,
    # generalisation (adapted vs base, Tables 4/5) 0.55 - 0.4 = 0.15.
    base = [_row("uncompressed", "original", None, 0.9), *_line("jpeg", 0.5, 0.1)]
    adapted = [_row("uncompressed", "original", None, 0.88), *_line("jpeg", 0.6, 0.05)]
    (row,) = bd_gaps(base, adapted)
    assert row.bd_performance_gap == pytest.approx(0.5, abs=1e-12)
    assert row.bd_information_gap == pytest.approx(0.35, abs=1e-12)
    assert row.bd_generalisation_gap == pytest.approx(0.15, abs=1e-12)
    # the generalisation gap is the BD-metric of the adapted curve against the base curve
    bpps = [r.bpp for r in base[1:]]
    ref = bd_metric(bpps, [r.score for r in base[1:]], bpps, [r.score for r in adapted[1:]])
    assert row.bd_generalisation_gap == pytest.approx(ref.value, abs=1e-12)
    # L = 1 - score flips every sign
    (err,) = bd_gaps(base, adapted, "error")
    assert err.bd_performance_gap == pytest.approx(-0.5, abs=1e-12)
    assert err.bd_generalisation_gap == pytest.approx(-0.15, abs=1e-12)
    # curved data (PCHIP): the three still sum exactly
    bent = [_row("uncompressed", "original", None, 0.9), _row("jpeg", "a", 0.1, 0.2),
            _row("jpeg", "b", 0.2, 0.6), _row("jpeg", "c", 0.8, 0.7)]  # fmt: skip
    (curved,) = bd_gaps(bent, [*bent[:2], _row("jpeg", "b", 0.2, 0.65), bent[3]])
    assert curved.bd_information_gap + curved.bd_generalisation_gap == pytest.approx(
        curved.bd_performance_gap, abs=1e-12
    )


def test_theta_star_is_the_best_adapted_run_per_point():
    base = [_row("uncompressed", "original", None, 0.9), *_line("jpeg", 0.5, 0.1)]
    one = [_row("uncompressed", "original", None, 0.9), *_line("jpeg", 0.7, 0.2)]  # better low
    two = [_row("uncompressed", "original", None, 0.9), *_line("jpeg", 0.55, 0.0)]  # better high
    rows = {r.rate_point: r for r in compute_gaps(base, [one, two])}
    # x = -2: one 0.3, two 0.55 -> two; x = 0: one 0.7, two 0.55 -> one
    assert rows["r0"].adapted_run == 1 and rows["r0"].loss_adapted == pytest.approx(0.55)
    assert rows["r2"].adapted_run == 0 and rows["r2"].loss_adapted == pytest.approx(0.7)
    assert rows["r0"].generalisation_gap == pytest.approx(0.55 - 0.3)
    with pytest.raises(ConfigError, match="not in \\[0, 1\\]"):
        mme = [_row("uncompressed", "original", None, 1500.0, metric="mme"),
               _row("jpeg", "a", 0.1, 900.0, metric="mme")]  # fmt: skip
        compute_gaps(mme, mme, "error")


def test_bd_of_task_scores_equals_a_hand_computation():
    # anchor: score = 0.2 + 0.2 ln(bpp) at ln(bpp) = 0, 1; test: 0.45 + 0.1 ln(bpp) at 0.25, 1.25.
    # Two points per curve: PCHIP is the straight line. Shared ln-range [0.25, 1]; the mean of
    # (0.45 + 0.1x) - (0.2 + 0.2x) = 0.25 - 0.1x over it is 0.25 - 0.1 * 0.625 = 0.1875.
    rows = [
        _row("uncompressed", "original", None, 0.9),
        _row("jpeg", "a", math.exp(0.0), 0.2),
        _row("jpeg", "b", math.exp(1.0), 0.4),
        _row("vlic", "1", math.exp(0.25), 0.45 + 0.025),
        _row("vlic", "2", math.exp(1.25), 0.45 + 0.125),
    ]
    (bd,) = bd_task_scores(rows, reference="jpeg")
    assert (bd.anchor, bd.test, bd.task) == ("jpeg", "vlic", "pope")
    assert bd.bd_score == pytest.approx(0.1875, abs=1e-12)
    assert bd.log_rate_interval == pytest.approx((0.25, 1.0))
    assert bd.overlap == pytest.approx(0.75) and bd.note == ""
    # the reverse direction is the negative
    (rev,) = bd_task_scores(rows, reference="vlic")
    assert rev.bd_score == pytest.approx(-0.1875, abs=1e-12)
    # a small overlap ([0.8, 1] of ranges of length 1) still gives the delta, flagged:
    # 0.25 - 0.1 * 0.9 = 0.16
    rows[3:] = [_row("vlic", "1", math.exp(0.8), 0.53), _row("vlic", "2", math.exp(1.8), 0.63)]
    (small,) = bd_task_scores(rows, reference="jpeg")
    assert small.bd_score == pytest.approx(0.16, abs=1e-12) and small.note == "small overlap"


def test_bd_says_why_there_is_no_delta():
    rows = [
        _row("jpeg", "a", 0.1, 0.2),
        _row("jpeg", "b", 0.2, 0.4),
        _row("webp", "a", 0.5, 0.5),
        _row("webp", "b", 1.0, 0.6),
        _row("avif", "a", 0.15, 0.5),
        _row("vlic", "1", 0.12, 0.3),
    ]
    notes = {b.test: (b.bd_score, b.note) for b in bd_task_scores(rows)}  # anchor: first codec
    assert notes["webp"] == (None, "no overlap")
    assert notes["avif"] == (None, "needs 2+ rate points")
    with pytest.raises(ConfigError, match="reference codec 'x'"):
        bd_task_scores(rows, reference="x")


def test_gaps_sum_to_the_performance_gap(tmp_path):
    base = [
        _row("uncompressed", "original", None, 0.86),
        _row("jpeg", "0.1", 0.11, 0.62),
        _row("jpeg", "0.3", 0.29, 0.80),
        _row("vlic", "1", 0.05, 0.74),
    ]
    adapted = [
        _row("uncompressed", "original", None, 0.85),
        _row("jpeg", "0.1", 0.11, 0.71),
        _row("jpeg", "0.3", 0.29, 0.83),
        _row("vlic", "1", 0.05, 0.74),
    ]
    rows = compute_gaps(base, adapted, "error")  # L = 1 - accuracy
    by = {(r.codec, r.rate_point): r for r in rows}
    low = by[("jpeg", "0.1")]
    # L(X, theta) = 0.14, L(X^, theta) = 0.38, L(X^, theta*) = 0.29
    assert low.performance_gap == pytest.approx(0.14 - 0.38)
    assert low.information_gap == pytest.approx(0.14 - 0.29)
    assert low.generalisation_gap == pytest.approx(0.29 - 0.38)
    assert low.recovered == pytest.approx(0.09 / 0.24)
    for r in rows:
        assert r.information_gap + r.generalisation_gap == pytest.approx(r.performance_gap)
    assert by[("vlic", "1")].generalisation_gap == pytest.approx(0.0)
    # L = score (the default, the paper's) flips every sign; the identity and the share stay
    flipped = {(r.codec, r.rate_point): r for r in compute_gaps(base, adapted)}
    assert flipped[("jpeg", "0.1")].performance_gap == pytest.approx(0.24)
    assert flipped[("jpeg", "0.1")].recovered == pytest.approx(low.recovered)

    paths = write_gaps(rows, tmp_path, "error", {"base": {"model": "m"}})
    data = json.loads(paths["json"].read_text())
    assert data["loss_type"] == "error" and len(data["rows"]) == 3
    assert "| pope | jpeg | 0.1 |" in paths["table"].read_text()

    with pytest.raises(ConfigError, match="adapted run 0 lacks 1 point"):
        compute_gaps(base, adapted[:-1])
    with pytest.raises(ConfigError, match="loss_type"):
        compute_gaps(base, adapted, "accuracy")  # type: ignore[arg-type]


def test_spearman_of_scores_and_quality_equals_a_hand_computation():
    # ranks of the scores 1, 2, 3, 4; PSNR 20, 25, 24, 30 -> 1, 3, 2, 4: sum d^2 = 2,
    # rho = 1 - 6 * 2 / (4 * 15) = 0.8; LPIPS 0.5, 0.3, 0.35, 0.1 -> 4, 2, 3, 1: sum d^2 = 18,
    # rho = 1 - 6 * 18 / 60 = -0.8 (lower is better: tracking the score makes rho negative)
    rows = [_row("uncompressed", "original", None, 0.9)]
    for i, (score, psnr, lp) in enumerate(
        [(0.2, 20, 0.5), (0.4, 25, 0.3), (0.6, 24, 0.35), (0.8, 30, 0.1)]
    ):
        row = _row("jpeg" if i < 2 else "webp", f"r{i}", 0.1 * (i + 1), score)
        rows.append(ScoreRow(**{**row.__dict__, "quality": {"psnr": psnr, "lpips": lp}}))
    got = {c.quality_metric: c for c in quality_correlations(rows, {"psnr": True, "lpips": False})}
    assert got["psnr"].spearman == pytest.approx(0.8) and got["psnr"].n == 4
    assert got["lpips"].spearman == pytest.approx(-0.8) and not got["lpips"].higher_is_better
    few = quality_correlations(rows[:3], {"psnr": True})
    assert few[0].spearman is None and few[0].note == "needs 3+ codec points"
