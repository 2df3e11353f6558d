"""Scores of VLM answers: extraction of yes/no and option letters, VQA normalisation, ANLS, F1."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest

from compressai_vlic.errors import ConfigError, MissingDependencyError
from compressai_vlic.vlm import scoring
from compressai_vlic.vlm.scoring import (
    anls,
    extract_choice,
    extract_yes_no,
    metric_for,
    normalize_answer,
    pope_metrics,
    score_task,
    vqa_accuracy,
)

OPTIONS = {"A": "a red car", "B": "a car", "C": "two dogs", "D": "nothing"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "B"),
        ("(C) two dogs", "C"),
        ("D. nothing at all", "D"),
        ("Answer: A", "A"),
        ("The answer is (B).", "B"),
        ("**C**", "C"),
        ("I think it shows two dogs.", "C"),
        ("It is a red car.", "A"),  # longest option text wins over "a car" inside it
        ("A cat sits there", None),  # "A" is an article here and no option text matches
        ("A red car", "A"),
        ("A. a car", "A"),
        ("Both look similar to me.", None),
        ("", None),
        ("E", None),  # not an option
    ],
)
def test_extract_choice(answer, expected):
    assert extract_choice(answer, OPTIONS) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("Yes", "yes"), ("no.", "no"), ("Yes, there is a cat.", "yes"), ("Answer: A", None),
     ("yes and no", None), ("Noted", None)],
)  # fmt: skip
def test_extract_yes_no(answer, expected):
    assert extract_yes_no(answer) == expected


def test_vqa_normalisation_and_accuracy_by_hand():
    assert normalize_answer("Two dogs!") == "2 dogs"
    assert normalize_answer("The cat's toy") == "cat's toy"
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("1,000") == "1000"
    refs = ["answer"] * 3 + ["other"] * 7
    # leave-one-out: 3 subsets keep 2 matches (2/3), 7 keep 3 matches (1): (3 * 2/3 + 7) / 10
    assert vqa_accuracy("Answer!", refs) == pytest.approx(0.9)
    assert vqa_accuracy("two", ["2"]) == 1.0  # one reference: exact match after normalisation
    assert vqa_accuracy("three", ["2"]) == 0.0


def test_anls_by_hand():
    assert anls("hello", ["hello"]) == 1.0
    assert anls("helo", ["Hello"]) == pytest.approx(1 - 1 / 5)  # one deletion of five
    assert anls("abc", ["xyz"]) == 0.0  # similarity 0 < 0.5
    assert anls("abcdef", ["abcxyz", "abcdeg"]) == pytest.approx(1 - 1 / 6)  # best reference


def test_pope_metrics_by_hand():
    answers = ["yes", "yes", "no", "no", "maybe", "yes"]
    truths = ["yes", "no", "no", "yes", "yes", "yes"]
    got = pope_metrics(answers, truths)
    # tp = 2 (0, 5), fp = 1 (1), fn = 2 (3, 4: "maybe" counts as no)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(2 / 4)
    assert got["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert got["yes_ratio"] == pytest.approx(3 / 6)
    task = score_task("yes_no", "accuracy", answers, [[t] for t in truths])
    assert task.score == pytest.approx(3 / 6) and task.unparsed == 1 and task.n == 6
    assert task.extra == got


def test_metric_choice_is_checked():
    assert metric_for("ocr") == "anls"
    assert metric_for("short_answer", "exact_match") == "exact_match"
    with pytest.raises(ConfigError, match="scored with accuracy"):
        metric_for("yes_no", "anls")


def test_cider_names_the_package_when_missing(monkeypatch):
    real_import = builtins.__import__

    def no_coco(name, *args, **kwargs):
        if name.startswith("pycocoevalcap"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_coco)
    with pytest.raises(MissingDependencyError, match="pip install pycocoevalcap"):
        scoring.cider(["a dog"], [["a dog runs"]])
    # a caption task fails before any question is asked
    from compressai_vlic.vlm.bench import VLMBench
    from compressai_vlic.vlm.tasks import Task, TaskItem

    item = TaskItem(index="0", question="", answers=("a dog",))
    task = Task("coco", "caption", [item], source=Path("coco.jsonl"))
    with pytest.raises(MissingDependencyError, match="pycocoevalcap"):
        VLMBench([task], [], answerer=None, output_dir="unused")  # type: ignore[arg-type]


def test_cider_with_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    refs = [["a dog runs on grass", "a brown dog running"], ["a red car on a road", "a car"]]
    good = scoring.cider(["a dog runs on grass", "a red car on a road"], refs)
    bad = scoring.cider(["a plate of food", "two people talking"], refs)
    assert good > bad >= 0.0


# ----------------------------------------------------------------------------- benchmark scores
# Expected values below were computed by running VLMEvalKit's own scoring functions on these
# fixtures: `POPE_rating` and `MME_rating` (vlmeval/dataset/utils/yorn.py, with
# `YOrN_Extraction` and `process_punctuation` from vlmeval/smp/misc.py) and `OCRBench.evaluate`
# (vlmeval/dataset/image_vqa.py), VLMEvalKit 0.2rc1 as vendored in
# github.com/bblgbr/CompressVLMBench (commit 6fdc002), the paper's benchmark code.
POPE_FIXTURE = [  # (prediction, answer, category)
    ("Yes", "yes", "random,popular"),
    ("Yes, there is a dog.", "no", "adversarial"),
    ("No.", "no", "random,popular,adversarial"),
    ("no", "yes", "popular"),
    ("I cannot tell.", "yes", "random"),
    ("yes-no", "no", "adversarial"),
    ("There is no cat; yes?", "yes", "random"),
    ("YES!", "yes", "adversarial,popular"),
    ("Nope, there is no person.", "no", "random"),
    ("Yes,1,000 people", "yes", "popular"),
]
_MME_CATS = ["OCR", "artwork", "celebrity", "color", "count", "existence", "landmark", "position",
             "posters", "scene", "code_reasoning", "commonsense_reasoning",
             "numerical_calculation", "text_translation"]  # fmt: skip
_MME_PRED = ["Yes", "No", "yes.", "No, it is not.", "Maybe", "YES", "no", "Yes!"]
MME_FIXTURE = [  # (prediction, answer, category, image): a yes and a no question per image
    (_MME_PRED[(3 * c + 2 * k + q) % len(_MME_PRED)], ("yes", "no")[q], cat, f"{cat}/{k}")
    for c, cat in enumerate(_MME_CATS)
    for k in range(1 + c % 2)
    for q in range(2)
]
OCRBENCH_FIXTURE = [  # (prediction, answers, category)
    ("The word is HELLO", ["hello"], "Regular Text Recognition"),
    ("helo", ["hello"], "Regular Text Recognition"),
    ("It says 42.", ["42", "forty two"], "Digit String Recognition"),
    ("x ^ { 2 } + 1", ["x^{2}+1"], "Handwritten Mathematical Expression Recognition"),
    ("X^{2}+1", ["x^{2}+1"], "Handwritten Mathematical Expression Recognition"),
    ("Total: $12.50\nthanks", ["$12.50"], "Key Information Extraction"),
    ("Stop", ["stop sign"], "Scene Text-centric VQA"),
    ("the invoice date", ["Invoice Date"], "Doc-oriented VQA"),
]


def test_pope_overall_equals_vlmevalkit():
    preds, truths, cats = zip(*POPE_FIXTURE)
    got = score_task("yes_no", "pope_f1", preds, [[t] for t in truths], categories=cats)
    # VLMEvalKit POPE_rating: Overall 61.538462, acc 57.142857, precision 80.0, recall 50.0
    assert got.score == pytest.approx(61.538462, abs=1e-6)
    assert got.extra["accuracy"] == pytest.approx(57.142857, abs=1e-6)
    assert got.extra["precision"] == pytest.approx(80.0)
    assert got.extra["recall"] == pytest.approx(50.0)
    # per split: adversarial 66.666667, popular 66.666667, random 50.0
    assert got.extra["f1/adversarial"] == pytest.approx(200 / 3)
    assert got.extra["f1/popular"] == pytest.approx(200 / 3)
    assert got.extra["f1/random"] == pytest.approx(50.0)
    # neither or both: "I cannot tell.", "yes-no", "There is no cat; yes?", and "Yes,1,000 people"
    # (a digit comma makes VLMEvalKit's rule drop every comma: "yes1000")
    assert got.n == 10 and got.unparsed == 4


def test_mme_perception_equals_vlmevalkit():
    preds, truths, cats, images = zip(*MME_FIXTURE)
    got = score_task("yes_no", "mme", preds, [[t] for t in truths], categories=cats,
                     groups=images)  # fmt: skip
    # VLMEvalKit MME_rating: perception 950.0, reasoning 25.0, OCR 200, artwork 100, existence
    # 25, position 125, text_translation 25, celebrity 0
    assert got.score == pytest.approx(950.0)
    assert got.extra["reasoning"] == pytest.approx(25.0)
    expected = {"OCR": 200, "artwork": 100, "celebrity": 0, "color": 0, "count": 0,
                "existence": 25, "landmark": 200, "position": 125, "posters": 200, "scene": 100,
                "code_reasoning": 0, "commonsense_reasoning": 0, "numerical_calculation": 0,
                "text_translation": 25}  # fmt: skip
    for cat, value in expected.items():
        assert got.extra[f"mme/{cat}"] == pytest.approx(value), cat
    # a perfect model scores the full 2000 (10 subtasks x (100 + 100))
    perfect = score_task("yes_no", "mme", truths, [[t] for t in truths], categories=cats,
                         groups=images)  # fmt: skip
    assert perfect.score == pytest.approx(2000.0) and perfect.extra["reasoning"] == 800.0
    with pytest.raises(ConfigError, match="not MME's"):
        score_task("yes_no", "mme", ["yes"], [["yes"]], categories=["cats"], groups=["a"])


def test_ocrbench_final_score_equals_vlmevalkit():
    preds, refs, cats = zip(*OCRBENCH_FIXTURE)
    got = score_task("ocr", "ocrbench", preds, refs, categories=cats)
    # VLMEvalKit OCRBench.evaluate: Final Score 5 (Text Recognition 2, Doc-oriented VQA 1, Key
    # Information Extraction 1, Handwritten Mathematical Expression Recognition 1, Scene 0)
    assert got.score == 5.0 and got.extra["final_score_norm"] == 0.5
    assert got.extra["ocrbench/Handwritten Mathematical Expression Recognition"] == 1.0
    assert got.extra["ocrbench/Scene Text-centric VQA"] == 0.0


def test_benchmark_metric_chosen_by_task_name():
    assert metric_for("yes_no", task_name="POPE") == "pope_f1"
    assert metric_for("yes_no", task_name="MME") == "mme"
    assert metric_for("ocr", task_name="OCRBench") == "ocrbench"
    assert metric_for("yes_no", task_name="my_pope") == "accuracy"
    assert metric_for("yes_no", "accuracy", task_name="POPE") == "accuracy"


def test_ocrbench_tsv_answer_lists(tmp_path, photos):
    """VLMEvalKit's OCRBench file stores each row's answers as a Python list literal."""
    import base64
    import csv
    import io

    from PIL import Image

    from compressai_vlic.vlm.tasks import load_task

    buf = io.BytesIO()
    Image.fromarray(photos["rocket"][:48, :64]).save(buf, format="PNG")
    img = base64.b64encode(buf.getvalue()).decode()
    with open(tmp_path / "OCRBench.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["index", "question", "answer", "category", "image"])
        writer.writerow(
            [0, "What is written?", "['SALE', 'sale']", "Regular Text Recognition", img]
        )
        writer.writerow([1, "What is written?", "[not a list", "Regular Text Recognition", img])
    task = load_task(tmp_path / "OCRBench.tsv", "ocr")
    assert task.items[0].answers == ("SALE", "sale")
    assert task.items[1].answers == ("[not a list",)
