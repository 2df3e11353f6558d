"""Best-of-N: rank N images (e.g. N decodes of one code) by a judge's soft reward.

Every ordered pair of candidates is asked (both orders, so a judge's position bias cancels).
Each answer is turned into a soft preference in [-1, 1] for the image shown first:
``2 * prob_a - 1`` when the judge read P(A) at its answer token (after reasoning with
``prompt_type="reason-choice"``), else ``expected_score / 5`` (score prompts with logprobs), else
the hard choice (+1, -1, 0 for an abstention). A candidate's reward is its mean preference over
all opponents and both orders; a failed call counts for neither side. With or without a
reference: ``reference=None`` ranks by a reference-free question (e.g. overall preference).

:func:`best_worst_pair` gives the pair a preference dataset (or stage 2) would train on: the best
and the worst of N, the pair with the largest reward gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.prompts import SCORE_MAX
from compressai_vlic.judges.types import Choice, Judge, JudgeRequest, Judgment


def soft_preference(judgment: Judgment) -> float | None:
    """Soft preference for the first-shown image in [-1, 1]; None when the call failed."""
    if judgment.failed:
        return None
    if judgment.prob_a is not None:
        return 2.0 * float(judgment.prob_a) - 1.0
    if judgment.expected_score is not None:
        return max(-1.0, min(1.0, float(judgment.expected_score) / SCORE_MAX))
    return {Choice.A: 1.0, Choice.B: -1.0}.get(judgment.choice, 0.0)


@dataclass
class Ranking:
    """Candidates ranked by soft reward (``order[0]`` is the best)."""

    names: list[str]
    rewards: list[float]  # mean soft preference over opponents and orders, in [-1, 1]
    order: list[int]  # candidate indices, best first
    preference: list[list[float | None]]  # [i][j]: soft preference for i shown first against j
    n_failed: int
    judgments: list[Judgment] = field(
        default_factory=list
    )  # every call, (i, j) for i != j in order

    @property
    def best(self) -> int:
        return self.order[0]

    @property
    def worst(self) -> int:
        return self.order[-1]

    def rows(self) -> list[dict[str, object]]:
        """One row per candidate, best first (rank 1 is the best)."""
        return [
            {"rank": r + 1, "name": self.names[i], "reward": self.rewards[i]}
            for r, i in enumerate(self.order)
        ]


def rank_images(
    judge: Judge,
    candidates: Sequence[torch.Tensor],
    reference: torch.Tensor | None = None,
    names: Sequence[str] | None = None,
) -> Ranking:
    """Rank ``candidates`` by the judge's soft reward (see module docstring).

    Args:
        judge: any judge; a soft one (``prob_a`` or ``expected_score``) breaks hard-vote ties.
        candidates: N >= 2 images, (3, H, W) in [0, 1], the same size.
        reference: the original they all decode, or None for a reference-free ranking.
        names: a label per candidate (default "0", "1", ...).
    """
    n = len(candidates)
    if n < 2:
        raise ConfigError(f"ranking needs at least 2 candidates, got {n}")
    names = [str(i) for i in range(n)] if names is None else [str(x) for x in names]
    if len(names) != n:
        raise ConfigError(f"{len(names)} names for {n} candidates")
    index = [(i, j) for i in range(n) for j in range(n) if i != j]
    requests = [JudgeRequest(reference, candidates[i], candidates[j]) for i, j in index]
    judgments = judge.compare_batch(requests)
    pref: list[list[float | None]] = [[None] * n for _ in range(n)]
    failed = 0
    for (i, j), judgment in zip(index, judgments):
        pref[i][j] = soft_preference(judgment)
        failed += pref[i][j] is None
    rewards = []
    for i in range(n):
        votes = [pref[i][j] for j in range(n) if j != i and pref[i][j] is not None]
        votes += [-pref[j][i] for j in range(n) if j != i and pref[j][i] is not None]  # type: ignore[operator]
        rewards.append(sum(votes) / len(votes) if votes else 0.0)
    order = sorted(range(n), key=lambda i: (-rewards[i], i))
    return Ranking(names, rewards, order, pref, failed, list(judgments))


def best_worst_pair(ranking: Ranking) -> tuple[int, int]:
    """(best, worst) candidate indices: the preferred and the rejected image of a DPO pair."""
    return ranking.best, ranking.worst
