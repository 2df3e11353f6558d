"""The point-wise rating prompt: strict parsing, a real HTTP server, a real transformers VLM."""

from __future__ import annotations

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.errors import ConfigError
from compressai_vlic.image_io import save_png
from compressai_vlic.student.raters import HFRater, MetricRater, OpenAIRater, rate_pairs
from compressai_vlic.student.rating import parse_rating, rating_template
from compressai_vlic.student.teacher import read_teacher_points, write_teacher_points
from compressai_vlic.testing.loopback_server import ServerScript, run_server


def test_parse_rating_is_strict():
    assert parse_rating("The image is blurry.\nRating: 6").value == 6.0
    assert parse_rating("**Rating:** 3/9").value == 3.0
    assert parse_rating("Rating: 4\nRating: 4").value == 4.0  # repeated, not ambiguous
    cases = {
        "Rating: 3\nRating: 7": "ambiguous",
        "Rating: 12": "out of range",
        "Rating: 0": "out of range",
        "Rating: 6.5": "not an integer",
        "It looks fine to me.": "wrong format",
        "I'm sorry, I can't rate images.": "refused",
        "": "empty",
    }
    for text, reason in cases.items():
        parsed = parse_rating(text)
        assert parsed.value is None and reason in parsed.error, (text, parsed.error)
    assert "truncated" in parse_rating("The Original shows", finish_reason="length").error
    assert "refused" in parse_rating(None, refusal="no").error


def test_templates_are_versioned():
    long, short = rating_template("rating"), rating_template("rating-short")
    assert long.version != short.version and long.version.startswith("rating.fidelity.v1-")
    assert [p.image_index for p in long.parts() if p.kind == "image"] == [0, 1]
    assert "Rating: <integer from 1 to 9>" in long.instructions
    with pytest.raises(ConfigError):
        rating_template("score")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def items(photos):
    """(reference, clean reconstruction, noisy reconstruction) of two photos."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for name in ("astronaut", "coffee"):
        ref = photo_tensor(photos[name], crop=(48, 48))[0]
        clean = (ref + 0.01 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        noisy = (ref + 0.2 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        out.append((ref, clean, noisy))
    return out


def test_openai_rater_over_a_loopback_server(items, tmp_path):
    with run_server(ServerScript(), start_timeout_s=300) as server:
        rater = OpenAIRater("toy", base_url=server.base_url, api_key_env="", max_attempts=2)
        for ref, clean, noisy in items:
            good, bad = rater.rate(ref, clean), rater.rate(ref, noisy)
            assert good.status == bad.status == "rated"
            assert good.value > bad.value  # the toy rater grades by PSNR
        server.set_script(ServerScript(default=["out_of_range"]))
        r = rater.rate(*items[0][:2])
        assert r.value is None and r.status == "abstained" and "out of range" in r.error
        server.set_script(ServerScript(default=["ambiguous"]))
        assert "ambiguous" in rater.rate(*items[0][:2]).error
        server.set_script(ServerScript(default=["500"]))
        failed = rater.rate(*items[0][:2])
        assert failed.status == "failed" and "2 attempts" in failed.error
        server.set_script(ServerScript())
        paths = []
        for i, (ref, clean, noisy) in enumerate(items):
            rp, cp, np_ = (tmp_path / f"{i}-{k}.png" for k in ("ref", "clean", "noisy"))
            for x, p in ((ref, rp), (clean, cp), (noisy, np_)):
                save_png(x, p)
            paths += [(str(rp), str(cp)), (str(rp), str(np_))]
        points = rate_pairs(rater, paths)
    out = write_teacher_points(points, tmp_path / "ratings.jsonl")
    with pytest.raises(Exception, match="exists"):
        write_teacher_points(points, out)
    back = read_teacher_points(out)
    assert [p.value for p in back] == [p.value for p in points] and back[0].teacher.startswith(
        "openai:toy"
    )
    assert back[0].value > back[1].value


def test_hf_rater_on_a_tiny_transformers_vlm(items, tmp_path):
    from compressai_vlic.testing.tiny_vlm import build_tiny_vlm

    folder = build_tiny_vlm(tmp_path / "vlm", seed=0)
    rater = HFRater(str(folder))
    ref, clean, _ = items[0]
    r = rater.rate(ref, clean)
    if r.value is None:  # random weights may not put mass on the digits: a reasoned abstention
        assert r.status == "abstained" and "rating mass" in r.error
    else:
        assert 1.0 <= r.value <= 9.0 and r.raw.startswith("P(rating)=")
    strict = HFRater(str(folder), min_answer_mass=1.01)  # no model can satisfy this
    assert "rating mass" in strict.rate(ref, clean).error


def test_metric_rater(items):
    rater = MetricRater("psnr")
    ref, clean, noisy = items[0]
    assert rater.rate(ref, clean).value > rater.rate(ref, noisy).value
