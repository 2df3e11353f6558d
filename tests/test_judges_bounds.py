"""Bounded judge calls and secrets, against a real loopback server process.

Every OpenAI-compatible caller (judge, VLM answerer, student rater) goes through one transport:
a whole-request deadline (a trickling server cannot hold an attempt), a cap on each response
body (an endless one is cut off while it is read), a cap on the answer text kept, and error
texts scrubbed of the key and of the URL's credentials before they are cut to length.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.cli.main import main
from compressai_vlic.judges.compose import describe_judge, public_kwargs
from compressai_vlic.judges.dataset import read_preference_dataset
from compressai_vlic.judges.openai_judge import OpenAIJudge
from compressai_vlic.judges.secrets import public_url, scrub
from compressai_vlic.judges.types import Choice
from compressai_vlic.student.raters import OpenAIRater
from compressai_vlic.testing.loopback_server import ServerScript, run_server
from compressai_vlic.vlm.answerers import AnswerRequest, OpenAIAnswerer

SECRET = "sk-bounds-0123456789abcdefghijklmnop-XYZ"
KEY_ENV = "VLIC_TEST_BOUNDS_KEY"


@pytest.fixture(scope="module")
def triplet(photos):
    ref = photo_tensor(photos["astronaut"], crop=(32, 40))[0]
    gen = torch.Generator().manual_seed(0)
    a = (ref + 0.02 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    b = (ref + 0.2 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    return ref, a, b


def _judge(server, **kw) -> OpenAIJudge:
    kw = {"timeout_s": 2.0, "max_attempts": 1, "backoff_base_s": 0.01, **kw}
    return OpenAIJudge("loopback-vlm", base_url=server.base_url, api_key_env=KEY_ENV, **kw)


def test_a_trickling_server_is_cut_off_at_the_deadline(server, triplet):
    # one byte every 0.2 s: no read ever waits 2 s, so only a whole-request deadline ends it
    server.set_script(ServerScript(default=["trickle"], trickle_interval_s=0.2))
    judge = _judge(server, deadline_s=1.5, max_attempts=2)
    start = time.perf_counter()
    got = judge.compare(*triplet)
    elapsed = time.perf_counter() - start
    judge.close()
    assert got.failed and "1.5s deadline" in got.error and "2 attempts" in got.error
    assert elapsed < 12.0  # two 1.5 s attempts (and start-up), not the ~70 s the body takes
    assert server.stats()["requests"] == 2


def test_an_endless_response_is_refused_while_read(server, triplet):
    server.set_script(ServerScript(default=["endless"]))
    judge = _judge(server, max_response_bytes=1 << 20, timeout_s=10, max_attempts=3)
    start = time.perf_counter()
    got = judge.compare(*triplet)
    judge.close()
    assert got.failed and "response too large" in got.error and "1048576 bytes" in got.error
    assert time.perf_counter() - start < 5.0
    assert server.stats()["requests"] == 1  # not retried: the server would send it again


def test_a_huge_answer_is_kept_only_up_to_the_cap(server, triplet):
    server.set_script(ServerScript(default=["huge_answer"], huge_chars=1_000_000))
    judge = _judge(server, prompt_type="ab-choice", max_answer_chars=2000)
    got = judge.compare(*triplet)
    judge.close()
    assert got.choice is Choice.A  # parsed from the whole answer
    assert len(got.rationale) < 2100 and len(got.votes[0].raw) < 2100
    assert "more characters not kept" in got.rationale
    assert len(json.dumps(got.to_dict())) < 10_000  # what a dataset row stores


def test_every_openai_caller_shares_the_bounds(server, triplet):
    server.set_script(ServerScript(default=["endless"]))
    rater = OpenAIRater("toy", base_url=server.base_url, api_key_env=KEY_ENV, max_attempts=1)
    rating = rater.rate(*triplet[:2])
    rater.close()
    assert rating.status == "failed" and "response too large" in rating.error
    answerer = OpenAIAnswerer(
        "toy", base_url=server.base_url, api_key_env=KEY_ENV, max_attempts=1, deadline_s=1.0
    )
    server.set_script(ServerScript(default=["trickle"], trickle_interval_s=0.2))
    answer = answerer.answer_batch([AnswerRequest(image=triplet[0], prompt="What is it?")])[0]
    answerer.close()
    assert answer.failed and "deadline" in answer.error


@pytest.mark.parametrize("pad", [150, 175, 190])
def test_a_key_in_an_error_message_is_scrubbed_before_it_is_cut(server, triplet, pad):
    # the key starts just before the 200-character cut: cutting first left a prefix of it
    server.set_script(ServerScript(default=["error_echo_key"], echo_pad=pad))
    judge = _judge(server)
    got = judge.compare(*triplet)
    judge.close()
    assert got.failed and "HTTP 400" in got.error
    for i in range(len(SECRET) - 7):
        assert SECRET[i : i + 8] not in got.error, got.error


def test_scrub_removes_fragments_of_a_secret():
    assert scrub(f"a {SECRET} b", [SECRET]) == "a *** b"
    assert scrub(f"cut: {SECRET[:12]}", [SECRET]) == "cut: ***"
    assert scrub(f"{SECRET[-9:]} tail", [SECRET]) == "*** tail"
    assert scrub("sk-bou and more", [SECRET]) == "sk-bou and more"  # 6 chars: not a secret


def test_endpoint_credentials_are_never_stored(server, photos, tmp_path):
    url = "https://alice:hunter2-pass@example.test:8443/v1?key=AIzaSyQuerySecret0#frag"
    assert public_url(url) == "https://example.test:8443/v1"
    assert public_kwargs({"base_url": url, "model": "m"}) == {
        "base_url": "https://example.test:8443/v1",
        "model": "m",
    }
    judge = OpenAIJudge("m", base_url=url, api_key_env="")
    text = repr(judge) + json.dumps(describe_judge(judge))
    assert "hunter2" not in text and "AIzaSy" not in text and "alice" not in text
    assert judge.client.scrub("echo hunter2-pass and AIzaSyQuerySecret0") == "echo *** and ***"
    # a real run with credentials in the URL: no row holds them
    root = tmp_path / "pairs"
    for d in ("orig", "a", "b"):
        (root / d).mkdir(parents=True)
    from PIL import Image

    crop = photos["chelsea"][:32, :40]
    for d in ("orig", "a", "b"):
        Image.fromarray(crop).save(root / d / "cat.png")
    with run_server(ServerScript(default=["ok"])) as open_server:
        secret_url = open_server.base_url.replace("http://", "http://bob:pa55-w0rd-secret@")
        out = tmp_path / "prefs.jsonl"
        argv = [
            "judge", "--originals", str(root / "orig"), "--recon-a", str(root / "a"),
            "--recon-b", str(root / "b"), "--output", str(out), "--no-progress",
            "--judge-type", "openai", "--judge-arg", "model=loopback-vlm",
            "--judge-arg", f"base_url={secret_url}", "--judge-arg", "api_key_env=",
            "--judge-arg", "prompt_type=ab-choice",
        ]  # fmt: skip
        assert main(argv) == 0
    rows = read_preference_dataset(out)
    assert len(rows) == 1
    assert rows[0].judge_config["judge_args"]["base_url"] == open_server.base_url
    assert b"pa55-w0rd-secret" not in out.read_bytes() and b"bob" not in out.read_bytes()
