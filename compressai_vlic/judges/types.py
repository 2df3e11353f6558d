"""Typed request/response of every judge: what was compared, what was decided, and by whom.

Convention used everywhere: a positive ``score`` prefers image A, a negative one prefers B,
0 is a tie. ``choice`` is ABSTAIN whenever the judge gave no usable decision (unparseable or
refused answer, failed call, tie, or disagreement inside a composite judge); an abstention is
never turned into a win.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import torch


class Choice(str, Enum):
    A = "A"
    B = "B"
    ABSTAIN = "abstain"

    def flipped(self) -> Choice:
        """The same decision seen with A and B swapped."""
        return {Choice.A: Choice.B, Choice.B: Choice.A}.get(self, Choice.ABSTAIN)


@dataclass(frozen=True)
class JudgeRequest:
    """One 2AFC question: which of ``a`` and ``b`` is closer to ``reference``?

    Images are (3, H, W) float tensors in [0, 1] of the same size.
    """

    reference: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    pair_id: str | None = None

    def swapped(self) -> JudgeRequest:
        return JudgeRequest(self.reference, self.b, self.a, self.pair_id)


@dataclass
class Vote:
    """One elementary decision (one VLM call, one metric evaluation, one order)."""

    score: float
    choice: Choice
    prob_a: float | None = None
    order: str = (
        "AB"  # "AB" = images shown as given, "BA" = shown swapped (score already mapped back)
    )
    raw: str = ""  # raw answer text (VLM) or metric values; never contains secrets
    error: str | None = None  # why this vote abstained, when it did
    source: str = ""  # which member of a composite judge cast it, e.g. "vote2/BA/ssimulacra2"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["choice"] = self.choice.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vote:
        return cls(**{**d, "choice": Choice(d["choice"])})


@dataclass
class Judgment:
    """The final decision on one pair, with every vote that led to it."""

    score: float
    choice: Choice
    prob_a: float | None = None
    votes: list[Vote] = field(default_factory=list)
    rationale: str = ""
    latency_s: float = 0.0
    backend: str = ""
    model: str = ""
    prompt_version: str = ""
    error: str | None = None
    cached: bool = False

    @property
    def abstained(self) -> bool:
        return self.choice is Choice.ABSTAIN

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["choice"] = self.choice.value
        d["votes"] = [v.to_dict() for v in self.votes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Judgment:
        d = dict(d)
        d["choice"] = Choice(d["choice"])
        d["votes"] = [Vote.from_dict(v) for v in d.get("votes", [])]
        return cls(**d)


def choice_from_score(score: float, margin: float = 0.0) -> Choice:
    """Sign of a score as a choice; |score| <= margin is an abstention."""
    if score > margin:
        return Choice.A
    if score < -margin:
        return Choice.B
    return Choice.ABSTAIN


@runtime_checkable
class Judge(Protocol):
    """Anything that answers 2AFC questions. Backends and composite judges all implement this."""

    name: str

    def compare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment: ...

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]: ...

    async def acompare(
        self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> Judgment: ...
