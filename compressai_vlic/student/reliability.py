"""How much a teacher decision can be trusted, from what the teacher itself gave.

Four signals, each in [0, 1]:

- vote agreement: (winning votes - losing votes) / all votes (abstained votes count against);
- order consistency: with votes in both display orders, the smaller share of winning votes of
  the two orders (a label that flips with the order is position bias, not preference);
- score size: ``s^2 / (s^2 + m^2)`` with ``s = |score|`` and ``m`` the median ``|score|`` of the
  dataset (0.5 at the median, near 0 for near-ties, near 1 for clear calls; scale-free, so VLM
  scores in [-10, 10] and metric scores in (-1, 1) mean the same);
- P(A): ``|2 P(A) - 1|`` where the teacher returned one.

The reliability is agreement x consistency x the mean of the confidence signals present; an
abstention is 0 (no label). It weights the student's pair-wise loss.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from compressai_vlic.judges.types import Choice
from compressai_vlic.options import check_option
from compressai_vlic.student.options import ReliabilityType
from compressai_vlic.student.teacher import TeacherPair


def vote_agreement(pair: TeacherPair) -> float:
    if not pair.votes:
        return 1.0
    win = sum(v.choice is pair.label for v in pair.votes)
    lose = sum(v.choice is pair.label.flipped() for v in pair.votes)
    return max(0.0, (win - lose) / len(pair.votes))


def order_consistency(pair: TeacherPair) -> float:
    shares = []
    for order in ("AB", "BA"):
        votes = [v for v in pair.votes if v.order == order]
        if votes:
            shares.append(sum(v.choice is pair.label for v in votes) / len(votes))
    return min(shares) if len(shares) == 2 else 1.0


def score_confidence(pair: TeacherPair, median_abs_score: float) -> float:
    s = abs(pair.score)
    if median_abs_score <= 0:
        return 1.0 if s > 0 else 0.0
    return s * s / (s * s + median_abs_score * median_abs_score)


def prob_confidence(pair: TeacherPair) -> float | None:
    return None if pair.prob_a is None else abs(2.0 * float(pair.prob_a) - 1.0)


def median_abs_score(pairs: Sequence[TeacherPair]) -> float:
    values = [abs(p.score) for p in pairs if p.label is not Choice.ABSTAIN]
    return statistics.median(values) if values else 0.0


def reliability(
    pairs: Sequence[TeacherPair], reliability_type: ReliabilityType = "all"
) -> list[float]:
    """One weight in [0, 1] per pair (see module doc); also stored on each pair.

    Args:
        pairs: teacher decisions of one teacher (the score median is taken over them).
        reliability_type: "all" (default) combines every signal; "uniform" gives every labelled
            pair 1; "votes", "order", "score", "prob" use that signal alone (ablations).
    """
    check_option("reliability_type", reliability_type, ReliabilityType)
    med = median_abs_score(pairs)
    out = []
    for p in pairs:
        if p.label is Choice.ABSTAIN:
            r = 0.0
        elif reliability_type == "uniform":
            r = 1.0
        elif reliability_type == "votes":
            r = vote_agreement(p)
        elif reliability_type == "order":
            r = order_consistency(p)
        elif reliability_type == "score":
            r = score_confidence(p, med)
        elif reliability_type == "prob":
            c = prob_confidence(p)
            r = 1.0 if c is None else c
        else:
            conf = [score_confidence(p, med)]
            c = prob_confidence(p)
            if c is not None:
                conf.append(c)
            r = vote_agreement(p) * order_consistency(p) * sum(conf) / len(conf)
        p.reliability = float(r)
        out.append(float(r))
    return out
