"""The point-wise prompt: a VLM rates one reconstruction against its original, strictly parsed.

Same conventions as the pair-wise templates (:mod:`compressai_vlic.judges.prompts`): a
versioned :class:`~compressai_vlic.judges.prompts.PromptTemplate` whose version carries a digest
of everything the model reads, and a parser that accepts only the requested final line
("Rating: <integer from 1 to 9>") and turns anything else (refusal, empty, out of range, several
different ratings, prose) into an abstention with its reason. A 1-9 scale keeps every rating
one token, so a local model's rating distribution can be read from one position's logits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.parsing import _check_refusal, _no_match
from compressai_vlic.judges.prompts import SYSTEM_TEXT, PromptTemplate
from compressai_vlic.options import check_option

RATING_MIN = 1
RATING_MAX = 9
RATING_PREFIX = "Rating:"
RatingPromptType = Literal["rating", "rating-short"]

_QUESTION = (
    "How close is the Image to the Original, as a human observer would judge it (structure, "
    "texture, colour, sharpness, and any compression artifacts such as blur, blocking, ringing, "
    "banding, noise, hallucinated or missing detail)?"
)
_SCALE = (
    "{hi} means indistinguishable from the Original, {lo} means very poor; use the whole scale."
)
_RATING_INSTRUCTIONS = (
    "{question}\n\n"
    "First describe the Original briefly, then list the Image's artifacts or differences "
    "relative to the Original. Then rate.\n"
    "End your answer with one final line of exactly this form:\n"
    "Rating: <integer from {lo} to {hi}>\n" + _SCALE
)
_SHORT_INSTRUCTIONS = (
    "{question}\n\n" + _SCALE + "\nReply with exactly one line, nothing else:\n"
    "Rating: <integer from {lo} to {hi}>"
)
_DECOR = r"[\s*_#>`]*"
_RATING_LINE = re.compile(
    rf"^{_DECOR}rating{_DECOR}:{_DECOR}([+\-\u2212]?\d+(?:[.,]\d+)?)(?:\s*/\s*\d+)?[\s*_`.]*$",
    re.IGNORECASE | re.MULTILINE,
)


def rating_template(prompt_type: RatingPromptType = "rating") -> PromptTemplate:
    """The point-wise template: "rating" (describe, then rate) or "rating-short" (one line)."""
    check_option("prompt_type", prompt_type, RatingPromptType)
    body = _RATING_INSTRUCTIONS if prompt_type == "rating" else _SHORT_INSTRUCTIONS
    text = body.format(question=_QUESTION, lo=RATING_MIN, hi=RATING_MAX)
    return PromptTemplate(
        prompt_type,
        "fidelity",
        "rating",
        "v1",
        SYSTEM_TEXT,
        text,
        ("Original:", "Image:"),  # type: ignore[arg-type]
    )


@dataclass
class ParsedRating:
    """A rating in [RATING_MIN, RATING_MAX], or None with the reason in ``error``."""

    value: float | None
    error: str | None = None


def parse_rating(
    text: str | None, refusal: str | None = None, finish_reason: str | None = None
) -> ParsedRating:
    """Parse the final "Rating: <int>" line (1..9); anything else abstains with a reason."""
    bad = _check_refusal(text, refusal, finish_reason)
    if bad is not None:
        return ParsedRating(None, bad.error)
    assert text is not None
    values = [m.group(1).replace("\u2212", "-") for m in _RATING_LINE.finditer(text)]
    if not values:
        return ParsedRating(None, _no_match(text, "'Rating: <int>'", finish_reason).error)
    if len(set(values)) > 1:
        return ParsedRating(None, f"ambiguous: several different ratings {values}")
    raw = values[-1]
    if "." in raw or "," in raw:
        return ParsedRating(None, f"rating {raw} is not an integer")
    value = int(raw)
    if not RATING_MIN <= value <= RATING_MAX:
        return ParsedRating(None, f"rating {value} out of range [{RATING_MIN}, {RATING_MAX}]")
    return ParsedRating(float(value))


def check_rating_template(template: PromptTemplate) -> None:
    if template.answer_type != "rating" or len(template.image_labels) != 2:
        raise ConfigError(f"{template.name} is not a point-wise rating template")
