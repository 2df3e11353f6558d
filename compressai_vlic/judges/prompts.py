"""Versioned prompt templates for VLM judges.

A template fixes everything the VLM reads: the system text, where each image goes, the question
for one attribute (fidelity, contrast, colorfulness, overall preference) and the answer format the
strict parsers in :mod:`compressai_vlic.judges.parsing` accept. The attribute questions also come
without an original (``reference=False``): two images only, as in psychophysical 2AFC studies of
contrast, colourfulness and preference, and as in preference judgments without a reference. Its ``version`` string goes into
the cache key and into every :class:`~compressai_vlic.judges.types.Judgment`, so changing a word
of a prompt can never silently reuse answers given to the old wording: the version carries a
digest of the rendered text as well as a human-readable revision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from compressai_vlic.errors import ConfigError
from compressai_vlic.options import check_option

SCORE_MIN = -5
SCORE_MAX = 5

# attribute -> (question about A vs B, what "better" means for the score's sign)
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "fidelity": (
        "Which of Image A and Image B is closer to the Original, as a human observer would judge "
        "it (structure, texture, colour, sharpness, and any compression artifacts such as blur, "
        "blocking, ringing, banding, noise, hallucinated or missing detail)?",
        "closer to the Original",
    ),
    "contrast": (
        "Which of Image A and Image B has higher contrast? The Original is shown for context.",
        "higher in contrast",
    ),
    "colorfulness": (
        "Which of Image A and Image B is more colorful (more saturated, vivid colours)? "
        "The Original is shown for context.",
        "more colorful",
    ),
    "overall": (
        "Which of Image A and Image B do you prefer overall as a photograph? "
        "The Original is shown for context.",
        "preferred overall",
    ),
}

_CONTEXT = " The Original is shown for context."

# attribute -> question without an original (reference-free 2AFC); fidelity needs one
NO_REFERENCE_QUESTIONS: dict[str, str] = {
    name: question.removesuffix(_CONTEXT)
    for name, (question, _) in ATTRIBUTES.items()
    if question.endswith(_CONTEXT)
}

SYSTEM_TEXT = (
    "You are a careful expert in image quality assessment. You compare images exactly as shown, "
    "at full resolution, and you always answer in the requested format."
)

_SCORE_INSTRUCTIONS = (
    "{question}\n\n"
    "First describe the Original briefly. Then describe Image A and Image B and list their "
    "artifacts or differences relative to the Original. Then decide.\n"
    "End your answer with one final line of exactly this form:\n"
    "Score: <integer from {lo} to {hi}>\n"
    "A positive score means Image A is {better}; a negative score means Image B is {better}; "
    "the magnitude says how strongly (5 = very clear, 1 = barely); 0 means no difference."
)

_SCORE_INSTRUCTIONS_NR = (
    "{question}\n\n"
    "First describe Image A and Image B briefly and how they differ in this respect. Then decide.\n"
    "End your answer with one final line of exactly this form:\n"
    "Score: <integer from {lo} to {hi}>\n"
    "A positive score means Image A is {better}; a negative score means Image B is {better}; "
    "the magnitude says how strongly (5 = very clear, 1 = barely); 0 means no difference."
)

# reason first, then one final answer line whose token carries P(A) vs P(B)
_REASON_INSTRUCTIONS = (
    "{question}\n\n"
    "Reason step by step first: {describe} Then decide.\n"
    "End your answer with one final line of exactly this form:\n"
    "Answer: A\nor\nAnswer: B"
)
_DESCRIBE_REF = (
    "describe the Original briefly, then Image A and Image B and their artifacts or differences "
    "relative to the Original."
)
_DESCRIBE_NR = "describe Image A and Image B and how they differ in this respect."

_CHOICE_INSTRUCTIONS = (
    "{question}\n\nReply with exactly one line, nothing else:\nAnswer: A\nor\nAnswer: B"
)

ANSWER_PREFIX = "Answer:"


@dataclass(frozen=True)
class PromptPart:
    """One piece of a user message: text, or the index of an image (0=Original, 1=A, 2=B).

    A reference-free template has no part with index 0."""

    kind: str  # "text" | "image"
    text: str = ""
    image_index: int = -1


@dataclass(frozen=True)
class PromptTemplate:
    """A fully specified prompt. ``answer_type`` is "score" (-5..5) or "choice" (A/B);
    ``reasons`` says the model writes its reasoning before the final answer line;
    ``reference=False`` shows only Image A and Image B (no original)."""

    name: str
    attribute: str
    answer_type: str
    revision: str
    system: str
    instructions: str
    image_labels: tuple[str, str, str] = ("Original:", "Image A:", "Image B:")
    reasons: bool = False
    reference: bool = True

    def parts(self) -> list[PromptPart]:
        """The user message as text and image slots, in display order."""
        out: list[PromptPart] = []
        for index, label in enumerate(self.image_labels):
            if index == 0 and not self.reference:
                continue
            out.append(PromptPart("text", text=label))
            out.append(PromptPart("image", image_index=index))
        out.append(PromptPart("text", text=self.instructions))
        return out

    @property
    def digest(self) -> str:
        """Hash of everything the model reads, so an edited prompt gets a new cache key."""
        payload = "\x1f".join(
            [
                self.name,
                self.attribute,
                self.answer_type,
                self.system,
                self.instructions,
                *list(self.image_labels),
                *([] if self.reference else ["no-reference"]),
            ]
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:10]

    @property
    def version(self) -> str:
        nr = "" if self.reference else ".noref"
        return f"{self.name}.{self.attribute}{nr}.{self.revision}-{self.digest}"


def _question(attribute: str, reference: bool = True) -> tuple[str, str]:
    if attribute not in ATTRIBUTES:
        raise ConfigError(
            f"unknown judge attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}"
        )
    question, better = ATTRIBUTES[attribute]
    if reference:
        return question, better
    if attribute not in NO_REFERENCE_QUESTIONS:
        raise ConfigError(
            f"attribute {attribute!r} asks which image is closer to the Original and needs one; "
            f"without a reference choose one of {', '.join(NO_REFERENCE_QUESTIONS)}"
        )
    return NO_REFERENCE_QUESTIONS[attribute], better


def vlic_score_template(attribute: str = "fidelity", reference: bool = True) -> PromptTemplate:
    """The VLIC protocol: describe original, A, B and their artifacts, then a score in [-5, 5]."""
    question, better = _question(attribute, reference)
    form = _SCORE_INSTRUCTIONS if reference else _SCORE_INSTRUCTIONS_NR
    text = form.format(question=question, lo=SCORE_MIN, hi=SCORE_MAX, better=better)
    return PromptTemplate(
        "vlic-score", attribute, "score", "v1", SYSTEM_TEXT, text, reasons=True, reference=reference
    )


def ab_choice_template(attribute: str = "fidelity", reference: bool = True) -> PromptTemplate:
    """A short two-alternative forced choice whose answer token carries P(A) vs P(B)."""
    question, _ = _question(attribute, reference)
    text = _CHOICE_INSTRUCTIONS.format(question=question)
    return PromptTemplate(
        "ab-choice", attribute, "choice", "v1", SYSTEM_TEXT, text, reference=reference
    )


def reason_choice_template(attribute: str = "fidelity", reference: bool = True) -> PromptTemplate:
    """Reason first, then "Answer: A|B": P(A) is read at the final answer token, after the
    reasoning (soft rewards after reasoning), not from a one-line reply."""
    question, _ = _question(attribute, reference)
    describe = _DESCRIBE_REF if reference else _DESCRIBE_NR
    text = _REASON_INSTRUCTIONS.format(question=question, describe=describe)
    return PromptTemplate(
        "reason-choice",
        attribute,
        "choice",
        "v1",
        SYSTEM_TEXT,
        text,
        reasons=True,
        reference=reference,
    )


PromptType = Literal["vlic-score", "ab-choice", "reason-choice"]
_TEMPLATES = {
    "vlic-score": vlic_score_template,
    "ab-choice": ab_choice_template,
    "reason-choice": reason_choice_template,
}


def get_template(
    prompt_type: PromptType = "vlic-score", attribute: str = "fidelity", reference: bool = True
) -> PromptTemplate:
    """Look a template up by its ``prompt_type`` name, attribute and whether an original is shown."""
    check_option("prompt_type", prompt_type, PromptType)
    return _TEMPLATES[prompt_type](attribute, reference)
