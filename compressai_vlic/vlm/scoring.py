"""Scores of VLM answers against reference answers, per task type.

- yes/no: accuracy, plus POPE's precision, recall, F1 (positive class "yes") and yes-ratio;
- multiple choice: accuracy, with the option letter found in free-form answers
  ("B", "(B)", "B. cat", "Answer: B", "The answer is B", or the text of exactly one option);
- short answer: exact match or VQA accuracy (official VQA answer normalisation: lowercase,
  punctuation, articles, number words, contractions);
- OCR: ANLS (average normalised Levenshtein similarity, threshold 0.5) or exact match;
- captions: CIDEr-D from ``pycocoevalcap`` when it is installed (its scorer is pure Python; the
  captions are tokenised here, lowercase words without punctuation, instead of by the Stanford
  PTB tokenizer, which needs Java), else :class:`~compressai_vlic.errors.MissingDependencyError`.

An answer from which no decision can be read (a yes/no answer saying neither, a multiple-choice
answer naming no option) scores 0 and is counted as ``unparsed``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from compressai_vlic.errors import ConfigError, MissingDependencyError

MetricType = Literal["accuracy", "exact_match", "vqa_accuracy", "anls", "cider"]
DEFAULT_METRIC = {
    "yes_no": "accuracy",
    "multiple_choice": "accuracy",
    "short_answer": "vqa_accuracy",
    "ocr": "anls",
    "caption": "cider",
}
ALLOWED_METRICS = {
    "yes_no": ("accuracy",),
    "multiple_choice": ("accuracy",),
    "short_answer": ("vqa_accuracy", "exact_match"),
    "ocr": ("anls", "exact_match"),
    "caption": ("cider",),
}
CIDER_EXTRA = "pycocoevalcap"


def metric_for(task_type: str, metric: str | None = None) -> str:
    """The metric a task type is scored with (its default, or ``metric`` if it is allowed)."""
    if task_type not in DEFAULT_METRIC:
        raise ConfigError(f"unknown task type {task_type!r}; choose {sorted(DEFAULT_METRIC)}")
    if metric is None:
        return DEFAULT_METRIC[task_type]
    if metric not in ALLOWED_METRICS[task_type]:
        raise ConfigError(
            f"a {task_type} task is scored with {' or '.join(ALLOWED_METRICS[task_type])}, "
            f"not {metric!r}"
        )
    return metric


# ----------------------------------------------------------------------------- yes / no
_WORDS = re.compile(r"[a-z]+")


def extract_yes_no(answer: str) -> str | None:
    """ "yes", "no" or None when the answer says neither or both (VLMEvalKit's rule)."""
    words = set(_WORDS.findall(answer.lower()))
    yes, no = "yes" in words, "no" in words
    if yes and not no:
        return "yes"
    if no and not yes:
        return "no"
    return None


# ----------------------------------------------------------------------------- multiple choice
_LEADING = re.compile(r"^[\s*_`\"'(\[]*([A-Z])(?:[\s*_`\"')\].:,]|$)")
_STATED = re.compile(
    r"\b(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*[*_`\"'(\[]*([A-Z])\b", re.IGNORECASE
)
_WORD_LETTERS = {"A", "I"}
_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def _squash(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def extract_choice(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an answer names, or None.

    In order: a leading letter ("B", "(B) cat", "B. cat"); a stated one ("Answer: B", "The
    answer is (B)"); the text of exactly one option (longest match, so "red car" beats "car");
    a single option letter standing alone anywhere in the answer.
    """
    text = answer.strip()
    if not text:
        return None
    m = _LEADING.match(text)
    if m and m.group(1) in options:
        rest = text[m.end() :]
        # "A" and "I" are also words: "A cat sits" names no option unless option A's text follows
        word = m.group(1) in _WORD_LETTERS and text[m.end() - 1 : m.end()].isspace()
        if not word or _squash(rest).startswith(_squash(options[m.group(1)])):
            return m.group(1)
    m = _STATED.search(text)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    squashed = f" {_squash(text)} "
    hits = [k for k, v in options.items() if _squash(v) and f" {_squash(v)} " in squashed]
    if len(hits) > 1:  # keep only options whose text is not inside another hit's text
        hits = [
            k
            for k in hits
            if not any(k != o and _squash(options[k]) in _squash(options[o]) for o in hits)
        ]
    if len(hits) == 1:
        return hits[0]
    letters = {
        m.group(1)
        for m in _LETTER.finditer(text)
        if m.group(1) in options
        and not (m.group(1) in _WORD_LETTERS and re.match(r"\s+[a-z]", text[m.end() :]))
    }
    if len(letters) == 1:
        return letters.pop()
    return None


# ----------------------------------------------------------------------------- VQA normalisation
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "im": "i'm", "ive": "i've",
    "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's", "mightnt": "mightn't",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "shant": "shan't", "shed": "she'd", "shes": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "thats": "that's", "thered": "there'd", "theres": "there's",
    "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "wasnt": "wasn't", "wed": "we'd", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_answer(text: str) -> str:
    """The VQA evaluation's answer normalisation (punctuation, digits, articles, contractions)."""
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = []
    for word in out.split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def exact_match(answer: str, references: Sequence[str]) -> float:
    """1.0 when the normalised answer equals any normalised reference."""
    pred = normalize_answer(answer)
    return float(any(pred == normalize_answer(r) for r in references))


def vqa_accuracy(answer: str, references: Sequence[str]) -> float:
    """VQA accuracy: min(1, matches / 3) averaged over the leave-one-out subsets of the
    references (the official formula for ten answers); one reference = exact match."""
    if len(references) < 2:
        return exact_match(answer, references)
    pred = normalize_answer(answer)
    refs = [normalize_answer(r) for r in references]
    scores = []
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1 :]
        scores.append(min(1.0, sum(r == pred for r in others) / 3.0))
    return sum(scores) / len(scores)


# ----------------------------------------------------------------------------- ANLS
def _levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(answer: str, references: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity (ST-VQA / DocVQA): the best over references of
    1 - distance / max length (case-insensitive, whitespace collapsed), 0 below ``threshold``."""
    pred = " ".join(answer.lower().split())
    best = 0.0
    for ref in references:
        gt = " ".join(ref.lower().split())
        length = max(len(pred), len(gt))
        similarity = 1.0 if length == 0 else 1.0 - _levenshtein(pred, gt) / length
        best = max(best, similarity if similarity >= threshold else 0.0)
    return best


# ----------------------------------------------------------------------------- CIDEr
def caption_tokens(text: str) -> str:
    """Lowercase words without punctuation, space-joined (what the CIDEr scorer splits)."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def cider_scorer() -> type:
    """pycocoevalcap's CIDEr-D scorer class, or :class:`MissingDependencyError` naming it
    (called before a run starts, so a caption task never asks its questions in vain)."""
    try:
        from pycocoevalcap.cider.cider import Cider
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("pycocoevalcap"):
            raise
        raise MissingDependencyError(
            "CIDEr for caption tasks needs the 'pycocoevalcap' package, which is not installed: "
            f"pip install {CIDER_EXTRA}"
        ) from exc
    return Cider


def cider(answers: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D of ``answers`` against their reference caption lists."""
    Cider = cider_scorer()
    if len(answers) != len(references):
        raise ConfigError("cider needs one reference list per answer")
    if not answers:
        return 0.0
    gts = {i: [caption_tokens(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [caption_tokens(a)] for i, a in enumerate(answers)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


# ----------------------------------------------------------------------------- task scores
@dataclass
class TaskScore:
    """A task's score over answered items, with what it is made of."""

    metric: str
    score: float
    n: int
    unparsed: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # POPE: precision, recall, f1, ...


def item_score(task_type: str, metric: str, answer: str, item_answers: Sequence[str],
               options: dict[str, str] | None = None) -> tuple[float, bool]:  # fmt: skip
    """(score of one answer, whether a decision could be read from it) for per-item metrics."""
    if task_type == "yes_no":
        got = extract_yes_no(answer)
        return float(got is not None and got == item_answers[0]), got is not None
    if task_type == "multiple_choice":
        got = extract_choice(answer, options or {})
        return float(got is not None and got in item_answers), got is not None
    if metric == "exact_match":
        return exact_match(answer, item_answers), True
    if metric == "vqa_accuracy":
        return vqa_accuracy(answer, item_answers), True
    if metric == "anls":
        return anls(answer, item_answers), True
    raise ConfigError(f"{metric!r} is not a per-item metric")


def score_task(
    task_type: str,
    metric: str,
    answers: Sequence[str],
    references: Sequence[Sequence[str]],
    options: Sequence[dict[str, str]] | None = None,
) -> TaskScore:
    """Score answers of one task under one condition (every answered item counts once)."""
    n = len(answers)
    if metric == "cider":
        return TaskScore(metric, cider(answers, references) if n else 0.0, n)
    opts = options or [{} for _ in answers]
    scores, parsed = [], 0
    for answer, refs, option in zip(answers, references, opts, strict=True):
        s, ok = item_score(task_type, metric, answer, refs, option)
        scores.append(s)
        parsed += ok
    result = TaskScore(metric, sum(scores) / n if n else 0.0, n, unparsed=n - parsed)
    if task_type == "yes_no":
        result.extra = pope_metrics(answers, [r[0] for r in references])
    return result


def pope_metrics(answers: Sequence[str], truths: Sequence[str]) -> dict[str, float]:
    """POPE's precision, recall and F1 with "yes" as the positive class, and the yes-ratio
    (an answer that says neither counts as "no", as in POPE's evaluation)."""
    preds = [extract_yes_no(a) == "yes" for a in answers]
    gts = [t == "yes" for t in truths]
    tp = sum(p and g for p, g in zip(preds, gts))
    fp = sum(p and not g for p, g in zip(preds, gts))
    fn = sum(not p and g for p, g in zip(preds, gts))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    yes_ratio = sum(preds) / len(preds) if preds else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "yes_ratio": yes_ratio}
