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

Three benchmarks have their own score, computed as VLMEvalKit computes it (``vlmeval`` 0.2rc1:
``dataset/utils/yorn.py`` ``POPE_rating`` and ``MME_rating``, ``dataset/image_vqa.py``
``OCRBench.evaluate``; exact matching, no LLM fallback), on the benchmark's own scale:

- ``pope_f1``: POPE's "Overall", the F1 (x 100) with "yes" as the positive class, over the items
  counted once per category they belong to (``category`` "random,popular" counts twice);
- ``mme``: MME's perception score, per subtask accuracy x 100 plus accuracy+ x 100 (both
  questions about an image right), summed over the ten perception subtasks (0..2000); the
  reasoning score (0..800) is in ``extra``;
- ``ocrbench``: OCRBench's final score, the number of answers that contain a reference answer
  (lowercased; spaces removed and case kept for handwritten mathematical expressions), out of
  the 1000 questions of the full benchmark.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from compressai_vlic.errors import ConfigError, MissingDependencyError

MetricType = Literal[
    "accuracy", "exact_match", "vqa_accuracy", "anls", "cider", "pope_f1", "mme", "ocrbench"
]
DEFAULT_METRIC = {
    "yes_no": "accuracy",
    "multiple_choice": "accuracy",
    "short_answer": "vqa_accuracy",
    "ocr": "anls",
    "caption": "cider",
}
ALLOWED_METRICS = {
    "yes_no": ("accuracy", "pope_f1", "mme"),
    "multiple_choice": ("accuracy",),
    "short_answer": ("vqa_accuracy", "exact_match", "ocrbench"),
    "ocr": ("anls", "exact_match", "ocrbench"),
    "caption": ("cider",),
}
# VLMEvalKit picks these scores by the dataset's name; so does a task named like the benchmark
BENCHMARK_METRICS = (("POPE", "yes_no", "pope_f1"), ("MME", "yes_no", "mme"),
                     ("OCRBench", "ocr", "ocrbench"), ("OCRBench", "short_answer", "ocrbench"))  # fmt: skip
MME_PERCEPTION = ("OCR", "artwork", "celebrity", "color", "count", "existence", "landmark",
                  "position", "posters", "scene")  # fmt: skip
MME_REASONING = (
    "code_reasoning", "commonsense_reasoning", "numerical_calculation", "text_translation"
)  # fmt: skip
OCRBENCH_HMER = "Handwritten Mathematical Expression Recognition"
CIDER_EXTRA = "pycocoevalcap"


def metric_for(task_type: str, metric: str | None = None, task_name: str | None = None) -> str:
    """The metric a task is scored with: ``metric`` if it is allowed for the type, else the
    benchmark's own score when ``task_name`` starts with POPE, MME or OCRBench (as VLMEvalKit
    chooses by dataset name), else the type's default."""
    if task_type not in DEFAULT_METRIC:
        raise ConfigError(f"unknown task type {task_type!r}; choose {sorted(DEFAULT_METRIC)}")
    if metric is None:
        for prefix, kind, name in BENCHMARK_METRICS:
            if task_name and task_name.startswith(prefix) and kind == task_type:
                return name
        return DEFAULT_METRIC[task_type]
    if metric not in ALLOWED_METRICS[task_type]:
        raise ConfigError(
            f"a {task_type} task is scored with {' or '.join(ALLOWED_METRICS[task_type])}, "
            f"not {metric!r}"
        )
    return metric


# ----------------------------------------------------------------------------- yes / no
_YN_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_YN_COMMA = re.compile(r"(\d)(,)(\d)")
_YN_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


def _process_punctuation(text: str) -> str:
    """VLMEvalKit's ``process_punctuation`` (``vlmeval/smp/misc.py``)."""
    out = text
    for p in _YN_PUNCT:
        if (p + " " in text or " " + p in text) or _YN_COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _YN_PERIOD.sub("", out)


def extract_yes_no(answer: str) -> str | None:
    """ "yes", "no" or None when the answer says neither or both (VLMEvalKit's
    ``YOrN_Extraction``: lowercase, its punctuation rule, whitespace-split words)."""
    words = set(_process_punctuation(answer.lower()).split())
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
    categories: Sequence[str | None] | None = None,
    groups: Sequence[str] | None = None,
) -> TaskScore:
    """Score answers of one task under one condition.

    Args:
        task_type, metric: see :func:`metric_for`.
        answers, references, options: per answered item.
        categories: per item (POPE's splits, MME's subtasks, OCRBench's categories).
        groups: per item, the image it asks about (MME's accuracy+ pairs questions by image).
    """
    n = len(answers)
    if metric == "cider":
        return TaskScore(metric, cider(answers, references) if n else 0.0, n)
    if metric in ("pope_f1", "mme", "ocrbench"):
        cats = list(categories) if categories is not None else [None] * n
        if metric == "ocrbench":
            return ocrbench_score(answers, references, cats)
        truths = [r[0] for r in references]
        if metric == "pope_f1":
            return pope_score(answers, truths, cats)
        return mme_score(answers, truths, cats, list(groups) if groups is not None else None)
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


# ----------------------------------------------------------------------------- benchmark scores
def pope_score(
    answers: Sequence[str], truths: Sequence[str], categories: Sequence[str | None]
) -> TaskScore:
    """POPE's "Overall" as VLMEvalKit's ``POPE_rating``: F1 x 100 over the items repeated once
    per comma-separated category; accuracy, precision, recall (x 100) and per split F1 in
    ``extra``."""
    rows: list[tuple[str, str, str | None]] = []
    for answer, truth, cats in zip(answers, truths, categories, strict=True):
        for cat in cats.split(",") if cats else [None]:
            rows.append((answer, truth, cat.strip() if cat else None))
    got = pope_metrics([a for a, _, _ in rows], [t for _, t, _ in rows])
    parsed = sum(extract_yes_no(a) is not None for a in answers)
    correct = [float(extract_yes_no(a) == t) for a, t, _ in rows]
    extra = {
        "accuracy": 100 * sum(correct) / len(rows) if rows else 0.0,
        "precision": 100 * got["precision"],
        "recall": 100 * got["recall"],
        "f1": 100 * got["f1"],
        "yes_ratio": got["yes_ratio"],
    }
    for split in sorted({c for _, _, c in rows if c}):
        sub = [(a, t) for a, t, c in rows if c == split]
        extra[f"f1/{split}"] = 100 * pope_metrics([a for a, _ in sub], [t for _, t in sub])["f1"]
    return TaskScore("pope_f1", extra["f1"], len(answers), len(answers) - parsed, extra)


def mme_score(
    answers: Sequence[str],
    truths: Sequence[str],
    categories: Sequence[str | None],
    groups: Sequence[str] | None,
) -> TaskScore:
    """MME's perception score as VLMEvalKit's ``MME_rating``: per subtask, accuracy x 100 over
    its questions plus accuracy+ x 100 over its images (both questions right), summed over the
    perception subtasks present; the reasoning sum and each subtask in ``extra``."""
    if groups is None:
        raise ConfigError("the MME score needs the image of every question (groups)")
    if any(c is None for c in categories):
        raise ConfigError("the MME score needs every question's subtask (a 'category' column)")
    by_cat: dict[str, dict[str, list[float]]] = {}
    parsed = 0
    for answer, truth, cat, group in zip(answers, truths, categories, groups, strict=True):
        got = extract_yes_no(answer)
        parsed += got is not None
        by_cat.setdefault(str(cat), {}).setdefault(group, []).append(float(got == truth))
    scores = {}
    for cat, images in by_cat.items():
        flat = [v for values in images.values() for v in values]
        # accuracy+: VLMEvalKit multiplies the first two scores of each image
        plus = [values[0] * values[1] if len(values) > 1 else 0.0 for values in images.values()]
        scores[cat] = 100 * sum(flat) / len(flat) + 100 * sum(plus) / len(plus)
    unknown = sorted(set(scores) - set(MME_PERCEPTION) - set(MME_REASONING))
    if unknown:
        raise ConfigError(f"MME subtasks {unknown} are not MME's; the categories must be MME's")
    perception = sum(v for k, v in scores.items() if k in MME_PERCEPTION)
    extra = {
        "reasoning": sum(v for k, v in scores.items() if k in MME_REASONING),
        "perception_subtasks": float(sum(k in MME_PERCEPTION for k in scores)),
        **{f"mme/{k}": v for k, v in sorted(scores.items())},
    }
    return TaskScore("mme", perception, len(answers), len(answers) - parsed, extra)


def ocrbench_score(
    answers: Sequence[str], references: Sequence[Sequence[str]], categories: Sequence[str | None]
) -> TaskScore:
    """OCRBench's final score as VLMEvalKit's ``OCRBench.evaluate``: the number of answers that
    contain one of their references (lowercased and stripped; for handwritten mathematical
    expressions with every space removed and case kept); per category counts in ``extra``."""
    total = 0
    extra: dict[str, float] = {}
    for answer, refs, cat in zip(answers, references, categories, strict=True):
        if cat == OCRBENCH_HMER:
            pred = answer.strip().replace("\n", " ").replace(" ", "")
            hit = any(r.strip().replace("\n", " ").replace(" ", "") in pred for r in refs)
        else:
            pred = answer.lower().strip().replace("\n", " ")
            hit = any(r.lower().strip().replace("\n", " ") in pred for r in refs)
        total += hit
        key = f"ocrbench/{cat or 'all'}"
        extra[key] = extra.get(key, 0.0) + hit
    extra["final_score_norm"] = total / 10
    return TaskScore("ocrbench", float(total), len(answers), 0, extra)
