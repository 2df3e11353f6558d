"""Prompt templates, strict answer parsing, lossless image encoding and the judge factory."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest
import torch
from conftest import photo_tensor
from hypothesis import given
from hypothesis import strategies as st

from compressai_vlic.errors import ConfigError, JudgeError
from compressai_vlic.judges import factory
from compressai_vlic.judges.encoding import (
    check_triplet,
    decode_data_url,
    image_digest,
    png_data_url,
    to_uint8_array,
)
from compressai_vlic.judges.parsing import (
    TokenLogprob,
    parse_choice,
    parse_score,
    prob_a_from_logprobs,
)
from compressai_vlic.judges.prompts import ATTRIBUTES, PromptType, get_template
from compressai_vlic.judges.types import Choice

# ---------------------------------------------------------------- prompts


def test_templates_are_versioned_and_distinct():
    versions = set()
    for prompt_type in get_args(PromptType):
        for attribute in ATTRIBUTES:
            t = get_template(prompt_type, attribute)
            assert t.version.startswith(f"{prompt_type}.{attribute}.v1-")
            assert [p.image_index for p in t.parts() if p.kind == "image"] == [0, 1, 2]
            versions.add(t.version)
    assert len(versions) == len(get_args(PromptType)) * len(ATTRIBUTES)
    score = get_template("vlic-score")
    assert "Score: <integer from -5 to 5>" in score.instructions
    assert "describe" in score.instructions.lower()
    assert "Answer: A" in get_template("ab-choice").instructions
    # any edit of the wording changes the version (and so the cache key)
    from dataclasses import replace

    assert replace(score, instructions=score.instructions + " ").version != score.version


def test_unknown_template_names_are_config_errors():
    with pytest.raises(ConfigError, match="prompt_type"):
        get_template("likert")
    with pytest.raises(ConfigError, match="attribute"):
        get_template("ab-choice", "sharpness")


# ---------------------------------------------------------------- parsing


@given(st.integers(min_value=-5, max_value=5), st.sampled_from(["", "**", "  "]))
def test_score_in_range_is_parsed(score, decor):
    text = (
        f"Original: a cat.\nImage A: slight blur.\nImage B: blocking.\n{decor}Score:{decor} {score}"
    )
    got = parse_score(text)
    assert got.error is None and got.score == score
    assert got.choice is {1: Choice.A, -1: Choice.B, 0: Choice.ABSTAIN}[int(np.sign(score))]


@given(st.integers().filter(lambda s: not -5 <= s <= 5))
def test_score_out_of_range_abstains(score):
    got = parse_score(f"Score: {score}")
    assert got.choice is Choice.ABSTAIN and "out of range" in got.error


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty answer"),
        (None, "empty answer"),
        ("Image A looks better.", "wrong format"),
        ("I'm sorry, I can't compare these images.", "refused"),
        ("Score: 2\nScore: -1", "ambiguous"),
        ("Score: 2.5", "not an integer"),
        ("The score: maybe 3", "wrong format"),
        ("Score: +7", "out of range"),
    ],
)
def test_bad_score_answers_abstain(text, reason):
    got = parse_score(text)
    assert got.choice is Choice.ABSTAIN and got.score == 0.0
    assert reason in got.error


def test_score_refusal_channels():
    assert "refused" in parse_score("Score: 3", refusal="No.").error
    assert "content filter" in parse_score("", finish_reason="content_filter").error
    assert "truncated" in parse_score("Image A is", finish_reason="length").error
    assert parse_score("Score: 2\nScore: 2").score == 2.0  # repeated, same value: fine
    assert parse_score("Score: \u22123").score == -3.0  # unicode minus


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("Answer: A", Choice.A),
        ("answer: b", Choice.B),
        ("**Answer:** B", Choice.B),
        ("Answer: (A)", Choice.A),
        ("Answer: Image B", Choice.B),
        ("B", Choice.B),
        (" A.", Choice.A),
    ],
)
def test_choice_answers(text, choice):
    got = parse_choice(text)
    assert got.error is None and got.choice is choice
    assert got.score == (1.0 if choice is Choice.A else -1.0)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Answer: C", "wrong format"),
        ("Answer: A\nAnswer: B", "ambiguous"),
        ("Both are fine.", "wrong format"),
        ("I cannot help with that.", "refused"),
        ("AB", "wrong format"),
        ("The answer is A", "wrong format"),
    ],
)
def test_bad_choice_answers_abstain(text, reason):
    got = parse_choice(text)
    assert got.choice is Choice.ABSTAIN and reason in got.error


def test_prob_a_from_logprobs():
    top = {" A": math.log(0.6), " B": math.log(0.3), "A": math.log(0.05), " C": math.log(0.05)}
    tokens = [
        TokenLogprob("Answer", -0.1),
        TokenLogprob(":", -0.1),
        TokenLogprob(" A", math.log(0.6), top),
    ]
    assert prob_a_from_logprobs(tokens) == pytest.approx(0.65 / 0.95)
    assert prob_a_from_logprobs(tokens[:2]) is None  # no answer token
    only_b = [TokenLogprob("B", math.log(0.9), {})]
    assert prob_a_from_logprobs(only_b) == 0.0


# ---------------------------------------------------------------- encoding


def test_png_data_url_is_lossless_and_full_resolution(photos):
    img = photo_tensor(photos["coffee"], crop=(123, 157))[0]
    url = png_data_url(img)
    assert url.startswith("data:image/png;base64,")
    back = decode_data_url(url)
    assert back.shape == (123, 157, 3)
    np.testing.assert_array_equal(back, to_uint8_array(img))
    # the digest depends on pixels, and only on the 8-bit pixels the judge sees
    assert image_digest(img) == image_digest(img + 0.1 / 255)
    assert image_digest(img) != image_digest(img.flip(-1))


def test_bad_images_are_rejected():
    good = torch.rand(3, 8, 8)
    with pytest.raises(JudgeError, match="shape"):
        check_triplet(torch.rand(4, 8, 8), good, good)
    with pytest.raises(JudgeError, match="NaN"):
        check_triplet(good, torch.full((3, 8, 8), float("nan")), good)
    with pytest.raises(JudgeError, match="same size"):
        check_triplet(good, good, torch.rand(3, 8, 9))
    with pytest.raises(JudgeError, match="Tensor"):
        check_triplet(good, good, np.zeros((3, 8, 8)))  # type: ignore[arg-type]
    ref, _, _ = check_triplet(good[None], good, good)  # (1, 3, H, W) is accepted
    assert ref.shape == (3, 8, 8)


# ---------------------------------------------------------------- factory


def test_factory_registry_and_lazy_types():
    assert {"openai", "hf"} <= set(factory.available_judges())

    @factory.register_judge("test-constant")
    class Constant:
        def __init__(self, value: float = 1.0) -> None:
            self.name = "constant"
            self.value = value

    try:
        judge = factory.make_judge("test-constant", value=2.0)
        assert isinstance(judge, Constant) and judge.value == 2.0
        with pytest.raises(ConfigError, match="bad options"):
            factory.make_judge("test-constant", nope=1)
    finally:
        factory._REGISTRY.pop("test-constant")
    with pytest.raises(ConfigError, match="unknown judge type 'nope'"):
        factory.make_judge("nope")
    with pytest.raises(ConfigError, match="has no"):
        factory.make_judge("compressai_vlic.judges.prompts:nothing_here")
    # "module:attr" works for user code without registration
    t = factory.make_judge("compressai_vlic.judges.prompts:get_template", prompt_type="ab-choice")
    assert t.name == "ab-choice"
    assert factory.resolve_judge_type("openai").__name__ == "OpenAIJudge"


def test_package_import_is_lazy():
    import subprocess
    import sys

    code = (
        "import sys, compressai_vlic.judges as j, compressai_vlic.judges.factory\n"
        "assert 'openai' not in sys.modules and 'transformers' not in sys.modules\n"
        "assert callable(j.make_judge)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_an_image_with_nan_or_infinity_is_refused_before_any_request(bad, dtype):
    from compressai_vlic.judges.encoding import check_image

    image = torch.rand(3, 16, 16, dtype=torch.float32).to(dtype)
    assert check_image(image) is image
    huge = torch.full((3, 16, 16), 3e38).to(dtype)  # a sum that overflows is not an error
    check_image(huge)
    image[1, 7, 3] = bad
    with pytest.raises(JudgeError, match="NaN or infinite"):
        check_image(image, "image A")
