"""Strict parsers for VLM answers.

An answer is accepted only when it contains the requested final line ("Score: <int>" in
[-5, 5], or "Answer: A|B") unambiguously. Anything else (empty, refused, filtered, out of range,
several different answers, a prose answer in the wrong format) becomes an abstention with the
reason in ``error``: a judge that guesses would put noise into the reward.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from compressai_vlic.judges.prompts import SCORE_MAX, SCORE_MIN, PromptTemplate
from compressai_vlic.judges.types import Choice, choice_from_score

_DECOR = r"[\s*_#>`]*"
_SCORE_LINE = re.compile(
    rf"^{_DECOR}score{_DECOR}:{_DECOR}([+\-\u2212]?\d+(?:[.,]\d+)?)(?:\s*/\s*\d+)?[\s*_`.]*$",
    re.IGNORECASE | re.MULTILINE,
)
_ANSWER_LINE = re.compile(
    rf"^{_DECOR}answer{_DECOR}:{_DECOR}\(?(?:image\s+)?([AB])\)?[\s*_`.]*$",
    re.IGNORECASE | re.MULTILINE,
)
_BARE_LETTER = re.compile(r"^[\s*_`(]*([AB])[\s*_`).]*$")
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i can(?:no|')t|i cannot|i am unable|i'm unable|unable to (?:help|"
    r"assist|comply|compare|evaluate)|as an ai)\b",
    re.IGNORECASE,
)


@dataclass
class ParsedAnswer:
    """What a VLM answer means, or why it means nothing (``error``)."""

    score: float
    choice: Choice
    error: str | None = None
    prob_a: float | None = None


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the top alternatives at that position."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


def abstain(reason: str) -> ParsedAnswer:
    return ParsedAnswer(score=0.0, choice=Choice.ABSTAIN, error=reason)


def _preview(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _check_refusal(
    text: str | None, refusal: str | None, finish_reason: str | None
) -> ParsedAnswer | None:
    if refusal:
        return abstain(f"refused: {_preview(refusal)}")
    if finish_reason == "content_filter":
        return abstain("refused: content filter")
    if text is None or not text.strip():
        return abstain(f"empty answer (finish_reason={finish_reason})")
    return None


def _no_match(text: str, expected: str, finish_reason: str | None) -> ParsedAnswer:
    if _REFUSAL.search(text):
        return abstain(f"refused: {_preview(text)}")
    if finish_reason == "length":
        return abstain(f"answer truncated before the {expected} line")
    return abstain(f"wrong format: no {expected} line in {_preview(text)!r}")


def parse_score(
    text: str | None, refusal: str | None = None, finish_reason: str | None = None
) -> ParsedAnswer:
    """Parse the VLIC protocol's final "Score: <int>" line; positive prefers A."""
    bad = _check_refusal(text, refusal, finish_reason)
    if bad is not None:
        return bad
    assert text is not None
    values = [m.group(1).replace("\u2212", "-") for m in _SCORE_LINE.finditer(text)]
    if not values:
        return _no_match(text, "'Score: <int>'", finish_reason)
    if len(set(values)) > 1:
        return abstain(f"ambiguous: several different scores {values}")
    raw = values[-1]
    if "." in raw or "," in raw:
        return abstain(f"score {raw} is not an integer")
    score = int(raw)
    if not SCORE_MIN <= score <= SCORE_MAX:
        return abstain(f"score {score} out of range [{SCORE_MIN}, {SCORE_MAX}]")
    return ParsedAnswer(score=float(score), choice=choice_from_score(score))


def parse_choice(
    text: str | None, refusal: str | None = None, finish_reason: str | None = None
) -> ParsedAnswer:
    """Parse "Answer: A" / "Answer: B" (or a bare "A" / "B" reply); +1 prefers A, -1 prefers B."""
    bad = _check_refusal(text, refusal, finish_reason)
    if bad is not None:
        return bad
    assert text is not None
    letters = [m.group(1).upper() for m in _ANSWER_LINE.finditer(text)]
    if not letters:
        bare = _BARE_LETTER.match(text)
        if bare:
            letters = [bare.group(1).upper()]
    if not letters:
        return _no_match(text, "'Answer: A|B'", finish_reason)
    if len(set(letters)) > 1:
        return abstain(f"ambiguous: answered both {sorted(set(letters))}")
    choice = Choice(letters[-1])
    return ParsedAnswer(score=1.0 if choice is Choice.A else -1.0, choice=choice)


def parse_answer(
    template: PromptTemplate,
    text: str | None,
    refusal: str | None = None,
    finish_reason: str | None = None,
) -> ParsedAnswer:
    """Dispatch on the template's answer type."""
    if template.answer_type == "score":
        return parse_score(text, refusal, finish_reason)
    return parse_choice(text, refusal, finish_reason)


def _letter(token: str) -> str | None:
    stripped = token.strip().strip("*_`().:").strip()
    return stripped.upper() if stripped.upper() in ("A", "B") else None


def prob_a_from_logprobs(tokens: list[TokenLogprob]) -> float | None:
    """P(A) / (P(A) + P(B)) at the answer token, from the server's top log-probabilities.

    The answer token is the last generated token that is the letter A or B; every spelling of a
    letter among its alternatives (" A", "A", "**A") counts towards that letter. Returns None when
    no such token or no alternatives were returned.
    """
    for entry in reversed(tokens):
        if _letter(entry.token) is None:
            continue
        alternatives = dict(entry.top)
        alternatives.setdefault(entry.token, entry.logprob)
        mass = {"A": 0.0, "B": 0.0}
        for token, logprob in alternatives.items():
            letter = _letter(token)
            if letter is not None and logprob is not None and math.isfinite(logprob):
                mass[letter] += math.exp(logprob)
        total = mass["A"] + mass["B"]
        if total <= 0.0:
            return None
        return mass["A"] / total
    return None
