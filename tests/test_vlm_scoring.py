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
