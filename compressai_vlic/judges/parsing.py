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
    expected_score: float | None = None  # E[score] at the answer position (score prompts)


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the top alternatives at that position."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


def soft_answer(parsed: ParsedAnswer, answer_type: str, tokens: list[TokenLogprob]) -> None:
    """Fill ``prob_a`` (and, for scores, ``expected_score``) of a parsed answer from the
    log-probabilities at its final answer token; leaves them None when none were returned."""
    if parsed.error is not None or not tokens:
        return
    if answer_type == "choice":
        parsed.prob_a = prob_a_from_logprobs(tokens)
        return
    dist = score_distribution_from_logprobs(tokens)
    if dist is not None:
        parsed.prob_a, parsed.expected_score = dist.prob_a, dist.expected


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


def answer_token_index(tokens: list[TokenLogprob], answer_type: str = "choice") -> int | None:
    """Index of the generated token where the final answer's value starts.

    The token texts are joined into the reply and the strict answer-line pattern ("Answer: A|B"
    or "Score: <int>") is searched in it; the last match is the final answer, and its value
    (the letter, or the first character of the score) falls inside exactly one token. A reply
    that reasons first has many letters and numbers before (and sometimes after) that line; only
    this position carries the probability of the final answer. None when there is no such line.
    """
    text = "".join(t.token for t in tokens)
    pattern = _SCORE_LINE if answer_type == "score" else _ANSWER_LINE
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    start = matches[-1].start(1)
    offset = 0
    for index, entry in enumerate(tokens):
        end = offset + len(entry.token)
        if offset <= start < end:
            return index
        offset = end
    return None


def _letter_prob(entry: TokenLogprob) -> float | None:
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


def prob_a_from_logprobs(tokens: list[TokenLogprob]) -> float | None:
    """P(A) / (P(A) + P(B)) at the final answer token, from the server's top log-probabilities.

    The answer token is the one holding the letter of the last "Answer: A|B" line (see
    :func:`answer_token_index`), so letters in a reasoning text before it ("Image A looks ...")
    or after it do not count; a bare one-letter reply falls back to the last generated token that
    is the letter A or B. Every spelling of a letter among the alternatives (" A", "A", "**A")
    counts towards that letter. Returns None when no such token or no alternatives were returned.
    """
    index = answer_token_index(tokens, "choice")
    if index is not None and _letter(tokens[index].token) is not None:
        return _letter_prob(tokens[index])
    for entry in reversed(tokens):
        if _letter(entry.token) is not None:
            return _letter_prob(entry)
    return None


_INT_TOKEN = re.compile(r"^[+\-\u2212]?\d+$")
_SIGN_TOKEN = re.compile(r"^[\-\u2212]$")


@dataclass
class ScoreDistribution:
    """The distribution over the integer scores SCORE_MIN..SCORE_MAX read at the answer position.

    ``probs`` maps each score whose probability could be read to it, renormalised over those
    scores; ``mass`` is the share of the answer position's score-like probability they cover
    (below 1 when a branch was not generated and cannot be read, e.g. the magnitudes of negative
    scores when the model wrote a positive one and the tokenizer splits "-" from the digit).
    """

    probs: dict[int, float]
    mass: float

    @property
    def expected(self) -> float:
        """E[score] under the distribution."""
        return sum(v * p for v, p in self.probs.items())

    @property
    def prob_a(self) -> float | None:
        """P(score > 0) / (P(score > 0) + P(score < 0)); None when neither side has mass."""
        pos = sum(p for v, p in self.probs.items() if v > 0)
        neg = sum(p for v, p in self.probs.items() if v < 0)
        return pos / (pos + neg) if pos + neg > 0 else None


def _int_value(token: str) -> int | None:
    stripped = token.strip().strip("*_`").replace("\u2212", "-")
    if _INT_TOKEN.match(stripped):
        value = int(stripped)
        return value if SCORE_MIN <= value <= SCORE_MAX else None
    return None


def _alternatives(entry: TokenLogprob) -> dict[str, float]:
    alternatives = {k: v for k, v in entry.top.items() if v is not None and math.isfinite(v)}
    if entry.logprob is not None and math.isfinite(entry.logprob):
        alternatives.setdefault(entry.token, entry.logprob)
    return alternatives


def score_distribution_from_logprobs(tokens: list[TokenLogprob]) -> ScoreDistribution | None:
    """The score distribution at the final "Score:" line's value, from top log-probabilities.

    At the value's first token every alternative that spells a whole score (" 3", "-2") counts
    with its probability. A lone minus sign is the negative branch: when it is the generated
    token, the next token's digit alternatives give the magnitudes (P(-) * P(d | -)); when it was
    not generated, its magnitudes cannot be read and it is left out of ``probs`` (see ``mass``).
    """
    index = answer_token_index(tokens, "score")
    if index is None:
        return None
    entry = tokens[index]
    first = _alternatives(entry)
    weights: dict[int, float] = {}
    covered = total = 0.0
    for token, logprob in first.items():
        p = math.exp(logprob)
        value = _int_value(token)
        if value is not None:
            weights[value] = weights.get(value, 0.0) + p
            covered += p
            total += p
        elif _SIGN_TOKEN.match(token.strip()):
            total += p
            generated_sign = _SIGN_TOKEN.match(entry.token.strip()) is not None
            if generated_sign and index + 1 < len(tokens):
                digits = {}
                for t, lp in _alternatives(tokens[index + 1]).items():
                    d = _int_value(t)
                    if d is not None and d >= 0 and t.strip().isdigit():
                        digits[-d] = digits.get(-d, 0.0) + math.exp(lp)
                norm = sum(digits.values())
                if norm > 0:
                    for v, q in digits.items():
                        weights[v] = weights.get(v, 0.0) + p * q / norm
                    covered += p
    if covered <= 0.0 or total <= 0.0:
        return None
    return ScoreDistribution({v: w / covered for v, w in sorted(weights.items())}, covered / total)
