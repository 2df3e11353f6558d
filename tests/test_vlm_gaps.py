"""BD of task scores on synthetic curves against a hand computation; the two gaps."""

from __future__ import annotations

import json
import math

import pytest

from compressai_vlic.errors import ConfigError
from compressai_vlic.vlm.bench import ScoreRow, bd_task_scores
from compressai_vlic.vlm.gaps import compute_gaps, write_gaps


def _row(codec: str, point: str, bpp: float | None, score: float, task: str = "pope") -> ScoreRow:
    return ScoreRow(task, "yes_no", "accuracy", codec, point, 0, bpp, score, 100, 100, 0, 0.0)


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
    rows = compute_gaps(base, adapted)  # L = 1 - accuracy
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
    # L = score flips every sign; the identity and the recovered share stay
    flipped = {(r.codec, r.rate_point): r for r in compute_gaps(base, adapted, "score")}
    assert flipped[("jpeg", "0.1")].performance_gap == pytest.approx(0.24)
    assert flipped[("jpeg", "0.1")].recovered == pytest.approx(low.recovered)

    paths = write_gaps(rows, tmp_path, "error", {"base": {"model": "m"}})
    data = json.loads(paths["json"].read_text())
    assert data["loss_type"] == "error" and len(data["rows"]) == 3
    assert "| pope | jpeg | 0.1 |" in paths["table"].read_text()

    with pytest.raises(ConfigError, match="lacks 1 point"):
        compute_gaps(base, adapted[:-1])
    with pytest.raises(ConfigError, match="loss_type"):
        compute_gaps(base, adapted, "accuracy")  # type: ignore[arg-type]
