"""Typed request/response of every judge: what was compared, what was decided, and by whom.

Convention used everywhere: a positive ``score`` prefers image A, a negative one prefers B,
0 is a tie. ``choice`` is ABSTAIN whenever the judge gave no usable decision; an abstention is
never turned into a win.

``status`` tells the two kinds of "no decision" apart:

- ``"judged"``: a decision (A or B).
- ``"abstained"``: the judge answered but without a usable decision (a refused, unparseable or
  out-of-range answer, a tie, or members of a composite judge that disagree). This is a label.
- ``"failed"``: the judge could not be asked (dead endpoint, HTTP errors, timeouts, malformed
  replies after every retry, a model call that raised). This is not a label: failed judgments
  are never cached or written to a preference dataset, and a resumed run asks again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import torch

JudgmentStatus = Literal["judged", "abstained", "failed"]
JUDGMENT_STATUSES: tuple[str, ...] = get_args(JudgmentStatus)


def _status(status: str | None, choice: Choice) -> JudgmentStatus:
    if status is None:
        return "abstained" if choice is Choice.ABSTAIN else "judged"
    if status not in JUDGMENT_STATUSES:
        raise ValueError(f"status must be one of {JUDGMENT_STATUSES}, got {status!r}")
    if status == "judged" and choice is Choice.ABSTAIN:
        return "abstained"
    return status  # type: ignore[return-value]


def add_usage(total: dict[str, int], usage: dict[str, int] | None) -> dict[str, int]:
    """Add token counts (``prompt_tokens``, ``completion_tokens``, ``total_tokens``) into ``total``."""
    for key, value in (usage or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + int(value)
    return total


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

    Images are (3, H, W) float tensors in [0, 1] of the same size. ``reference=None`` asks a
    reference-free question (which has more contrast / is more colourful / is preferred), which
    only judges with a reference-free prompt or metric answer.
    """

    reference: torch.Tensor | None
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
    error: str | None = None  # why this vote abstained or failed, when it did
    source: str = ""  # which member of a composite judge cast it, e.g. "vote2/BA/ssimulacra2"
    status: JudgmentStatus | None = None  # derived from choice when not given (see module doc)
    usage: dict[str, int] | None = None  # tokens of this call, as the backend reported them
    # E[score] over the -5..5 score tokens at the answer position (score prompts, soft reward)
    expected_score: float | None = None

    def __post_init__(self) -> None:
        self.status = _status(self.status, self.choice)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

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
    status: JudgmentStatus | None = None  # derived from choice when not given (see module doc)
    usage: dict[str, int] | None = None  # tokens of every call behind this judgment, summed
    # E[score] over the -5..5 score tokens at the answer position (score prompts, soft reward)
    expected_score: float | None = None

    def __post_init__(self) -> None:
        if self.status is None and any(v.failed for v in self.votes):
            self.status = "failed"
        if self.status == "failed":  # a failure is never a label, whatever members decided
            self.choice, self.score, self.prob_a = Choice.ABSTAIN, 0.0, None
            self.expected_score = None
            if self.error is None:
                reasons = [f"{v.source or v.order}: {v.error}" for v in self.votes if v.failed]
                self.error = "; ".join(reasons) or "failed"
        self.status = _status(self.status, self.choice)
        if self.usage is None and any(v.usage for v in self.votes):
            self.usage = {}
            for v in self.votes:
                add_usage(self.usage, v.usage)

    @property
    def abstained(self) -> bool:
        return self.choice is Choice.ABSTAIN

    @property
    def failed(self) -> bool:
        """No answer could be obtained: not a label, to be asked again."""
        return self.status == "failed"

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

    def compare(
        self, reference: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor
    ) -> Judgment: ...

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]: ...

    async def acompare(
        self, reference: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor
    ) -> Judgment: ...
