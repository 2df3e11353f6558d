"""Reliability of teacher decisions, and that weighting by it recovers from corrupted labels."""

from __future__ import annotations

import math
import random

import pytest
import torch

from compressai_vlic.judges.types import Choice, Vote
from compressai_vlic.student.config import StudentConfig
from compressai_vlic.student.evaluate import evaluate_pairs
from compressai_vlic.student.model import StudentModel
from compressai_vlic.student.reliability import (
    order_consistency,
    reliability,
    vote_agreement,
)
from compressai_vlic.student.teacher import TeacherData, TeacherPair
from compressai_vlic.student.train import train_student

REF = torch.full((3, 8, 8), 0.5)


def _pair(label: Choice, score: float = 1.0, votes=(), prob_a=None) -> TeacherPair:
    return TeacherPair(REF, REF, REF, label, score=score, votes=list(votes), prob_a=prob_a)


def test_signals_from_votes_order_score_and_prob():
    a, b, x = Choice.A, Choice.B, Choice.ABSTAIN
    unanimous = _pair(a, votes=[Vote(1, a), Vote(1, a), Vote(1, a)])
    split = _pair(a, votes=[Vote(1, a), Vote(1, a), Vote(-1, b)])
    with_abstain = _pair(a, votes=[Vote(1, a), Vote(0, x)])
    assert vote_agreement(unanimous) == 1.0
    assert vote_agreement(split) == pytest.approx(1 / 3)
    assert vote_agreement(with_abstain) == 0.5
    # position bias: "A" in both display orders means the label flips with the order
    biased = _pair(a, votes=[Vote(1, a, order="AB"), Vote(-1, b, order="BA")])
    consistent = _pair(a, votes=[Vote(1, a, order="AB"), Vote(1, a, order="BA")])
    assert order_consistency(biased) == 0.0 and order_consistency(consistent) == 1.0
    pairs = [_pair(a, 0.1), _pair(a, 0.4), _pair(b, -0.4), _pair(a, 0.9), _pair(x, 0.0)]
    r = reliability(pairs)
    assert r[-1] == 0.0  # an abstention carries no label
    assert r[0] < r[1] < r[3] and r[1] == pytest.approx(r[2])  # larger |score|, more reliable
    assert r[1] == pytest.approx(0.5)  # the median |score| maps to 0.5
    sure, unsure = _pair(a, 0.4, prob_a=0.95), _pair(a, 0.4, prob_a=0.55)
    r2 = reliability([sure, unsure, _pair(b, -0.4)])
    assert r2[0] > r2[1]
    assert reliability([biased, consistent, _pair(a, 1.0)])[0] == 0.0
    assert reliability(pairs, "uniform") == [1.0, 1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="reliability_type"):
        reliability(pairs, "bogus")  # type: ignore[arg-type]


def _noisy_pairs(n: int, seed: int) -> list[TeacherPair]:
    """Pairs of noisy copies of a flat image; the teacher only minds red-channel noise and is
    unsure (small |score|) when the two red errors are close."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        sa, sb = torch.rand(3, generator=g) * 0.2, torch.rand(3, generator=g) * 0.2
        a = REF + sa.view(3, 1, 1) * torch.randn(3, 8, 8, generator=g)
        b = REF + sb.view(3, 1, 1) * torch.randn(3, 8, 8, generator=g)
        gap = float(((b - REF)[0] ** 2).mean() - ((a - REF)[0] ** 2).mean())
        score = math.tanh(gap / 0.01)
        out.append(TeacherPair(REF, a, b, Choice.A if score > 0 else Choice.B, score=score))
    return out


def test_reliability_weighting_recovers_agreement_lost_to_corrupted_labels():
    """The least reliable half of the training labels is corrupted at a known rate (80%: the
    unsure teacher follows a wrong cue, green-channel noise). Weighted training must agree with
    the clean teacher on fresh pairs clearly more often than uniform training."""
    gains = []
    for seed in range(2):
        train, test = _noisy_pairs(200, seed), _noisy_pairs(200, 100 + seed)
        rng = random.Random(seed)
        low = sorted(range(len(train)), key=lambda i: abs(train[i].score))[: len(train) // 2]
        for i in low:
            if rng.random() < 0.8:
                p = train[i]
                ga, gb = (float(((x - REF)[1] ** 2).mean()) for x in (p.a, p.b))
                p.label = Choice.A if ga < gb else Choice.B
        rates = {}
        for rtype in ("all", "uniform"):
            model = StudentModel(StudentConfig(layers=["pixel"], init_type="random"))
            train_student(TeacherData(train), model, rtype, point_weight=0.0, steps=200)
            rates[rtype] = evaluate_pairs(model, test, baselines=()).results[0].rate
        gains.append(rates["all"] - rates["uniform"])
        assert rates["all"] >= 0.9, rates
    assert min(gains) > 0.02 and sum(gains) / len(gains) > 0.04, gains
