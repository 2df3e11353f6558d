"""OpenAI-compatible judge against a real chat-completions server process on loopback.

The server (compressai_vlic.testing.loopback_server) judges by MSE, so a correct client must get
"A" for pairs whose A is the less noisy reconstruction, and it injects faults by script.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.errors import ConfigError, JudgeError
from compressai_vlic.judges.cache import JudgmentCache
from compressai_vlic.judges.encoding import image_digest
from compressai_vlic.judges.factory import make_judge
from compressai_vlic.judges.openai_judge import OpenAIJudge
from compressai_vlic.judges.types import Choice, JudgeRequest
from compressai_vlic.testing.loopback_server import ServerScript, pair_key

SECRET = "sk-test-9f8e7d6c5b4a-DO-NOT-LEAK"
KEY_ENV = "VLIC_TEST_JUDGE_KEY"


@pytest.fixture(scope="module")
def pairs(photos) -> list[JudgeRequest]:
    """Real photo crops; A is always the less noisy reconstruction."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for i, name in enumerate(["astronaut", "chelsea", "coffee", "rocket"] * 6):
        ref = photo_tensor(photos[name], crop=(40 + 2 * i, 56))[0]
        a = (ref + 0.02 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        b = (ref + 0.15 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        out.append(JudgeRequest(ref, a, b, pair_id=f"{name}-{i}"))
    return out


def key_of(r: JudgeRequest) -> str:
    return pair_key([image_digest(x) for x in (r.reference, r.a, r.b)])


def judge(server, **kw) -> OpenAIJudge:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("max_attempts", 3)
    kw.setdefault("backoff_base_s", 0.02)
    kw.setdefault("backoff_max_s", 0.5)
    return OpenAIJudge("loopback-vlm", base_url=server.base_url, api_key_env=KEY_ENV, **kw)


# fault script for attempt 1, 2, ... -> (expected outcome, expected number of requests)
FAULTS: list[tuple[list[str], str, int]] = [
    ([], "A", 1),
    (["429"], "A", 2),
    (["500", "503"], "A", 3),
    (["slow"], "A", 2),
    (["malformed"], "A", 2),
    (["no_choices", "429"], "A", 3),
    (["500", "500", "500"], "gave up after 3 attempts", 3),
    (["slow", "slow", "slow"], "gave up after 3 attempts: timeout", 3),
    (["malformed", "malformed", "malformed"], "gave up after 3 attempts: malformed", 3),
    (["refuse"], "refused", 1),
    (["refusal_field"], "refused", 1),
    (["wrong_format"], "wrong format", 1),
    (["out_of_range"], "out of range", 1),
    (["ambiguous"], "ambiguous", 1),
    (["empty"], "empty answer", 1),
    (["400"], "HTTP 400", 1),
]


@pytest.mark.parametrize("prompt_type", ["vlic-score", "ab-choice"])
def test_fault_injection_every_pair_judged_abstained_or_failed(server, pairs, prompt_type):
    cases = (
        FAULTS if prompt_type == "vlic-score" else [f for f in FAULTS if f[0] != ["out_of_range"]]
    )
    requests = pairs[: len(cases)]
    server.set_script(
        ServerScript(
            latency_s=0.2,  # every reply takes a while, so the concurrent requests overlap
            slow_s=3.0,
            retry_after_s=0.05,
            pairs={key_of(r): faults for r, (faults, _, _) in zip(requests, cases)},
        )
    )
    j = judge(server, prompt_type=prompt_type, concurrency=16, timeout_s=1.0, logprobs_type="on")
    out = j.compare_batch(requests)
    stats = server.stats()
    assert len(out) == len(requests)  # nothing lost
    for r, (faults, expected, n_requests), got in zip(requests, cases, out):
        seen = stats["by_key"][key_of(r)]
        assert seen == n_requests, (faults, seen)
        assert seen <= j.max_attempts  # retries are bounded
        if expected == "A":
            assert got.choice is Choice.A and got.error is None, (faults, got.error)
            assert got.score > 0
        else:
            assert got.choice is Choice.ABSTAIN and got.abstained, faults
            assert expected in (got.error or ""), (faults, got.error)
            assert got.votes[0].error == got.error
        # no answer at all (transport, HTTP error) is a failure, not an abstention
        no_answer = expected.startswith(("gave up", "HTTP"))
        want = "judged" if expected == "A" else "failed" if no_answer else "abstained"
        assert got.status == got.votes[0].status == want, (faults, got.status)
        assert got.failed is no_answer
        assert (got.usage is None) is no_answer  # every reply's token counts are kept
        assert got.backend == "openai" and got.model == "loopback-vlm"
        assert got.prompt_version == j.template.version
    assert stats["requests"] == sum(n for _, _, n in cases)
    assert j.stats.requests == stats["requests"]
    assert j.stats.retries == stats["requests"] - len(cases)
    assert j.stats.judged + j.stats.abstained + j.stats.failed == len(cases)
    assert j.stats.failed == sum(e.startswith(("gave up", "HTTP")) for _, e, _ in cases)
    answered = len(cases) - j.stats.failed
    assert j.stats.usage == {  # the loopback server reports 10 + 5 tokens per reply
        "prompt_tokens": 10 * answered,
        "completion_tokens": 5 * answered,
        "total_tokens": 15 * answered,
    }
    assert stats["max_in_flight"] >= 4  # the faulty pairs were in flight together
    j.close()


def test_retry_after_is_honoured(server, pairs):
    r = pairs[0]
    server.set_script(ServerScript(retry_after_s=0.6, pairs={key_of(r): ["429"]}))
    j = judge(server, backoff_base_s=0.01, backoff_max_s=5.0)
    start = time.perf_counter()
    got = j.compare(r.reference, r.a, r.b)
    assert got.choice is Choice.A
    assert time.perf_counter() - start >= 0.6
    assert server.stats()["by_key"][key_of(r)] == 2
    j.close()


def test_logprobs_give_prob_a_when_offered(server, pairs):
    requests = pairs[:6]
    server.set_script(ServerScript(pairs={key_of(requests[0]): ["no_logprobs"]}))
    j = judge(server, prompt_type="ab-choice")
    out = j.compare_batch(requests)
    assert out[0].choice is Choice.A and out[0].prob_a is None  # answered, no logprobs
    for got in out[1:]:
        assert got.choice is Choice.A
        assert got.prob_a is not None and 0.5 < got.prob_a <= 1.0
    # the request asked for them, and the swapped pair gets the mirrored probability
    assert all(rec["logprobs"] is True for rec in server.stats()["log"])
    r = requests[1]
    swapped = j.compare(r.reference, r.b, r.a)
    assert swapped.choice is Choice.B
    assert swapped.prob_a == pytest.approx(1.0 - out[1].prob_a, abs=1e-6)
    server.set_script(ServerScript(logprobs=False))
    assert j.compare(r.reference, r.a, r.b).prob_a is None
    j.close()


def test_logprobs_auto_falls_back_when_rejected(server, pairs):
    r = pairs[2]
    server.set_script(ServerScript(pairs={key_of(r): ["400"]}))
    j = judge(server, prompt_type="ab-choice", logprobs_type="auto")
    got = j.compare(r.reference, r.a, r.b)
    assert got.choice is Choice.A and got.prob_a is None
    log = server.stats()["log"]
    assert [rec["logprobs"] for rec in log] == [True, None]
    j.close()


def test_images_are_lossless_png_at_full_resolution(server, pairs):
    server.set_script(ServerScript())
    r = pairs[5]
    j = judge(server)
    j.compare(r.reference, r.a, r.b)
    (rec,) = server.stats()["log"]
    h, w = r.reference.shape[-2:]
    assert rec["formats"] == ["png"] * 3
    assert rec["sizes"] == [[h, w]] * 3
    assert rec["details"] == ["high"] * 3
    # the server decoded exactly the 8-bit pixels the client hashed: lossless
    assert rec["key"] == key_of(r)
    j.close()


def test_concurrency_is_bounded_and_used(server, pairs):
    server.set_script(ServerScript(latency_s=0.2))
    j = judge(server, concurrency=4)
    start = time.perf_counter()
    out = j.compare_batch(pairs[:12])
    elapsed = time.perf_counter() - start
    stats = server.stats()
    assert all(o.choice is Choice.A for o in out)
    assert stats["max_in_flight"] <= 4
    assert stats["max_in_flight"] >= 2
    assert elapsed >= 12 / 4 * 0.2 * 0.9  # bound: concurrency / latency
    j.close()


def test_acompare_from_a_foreign_event_loop(server, pairs):
    server.set_script(ServerScript(latency_s=0.05))
    j = judge(server, concurrency=3)

    async def main():
        return await asyncio.gather(*(j.acompare(r.reference, r.a, r.b) for r in pairs[:6]))

    out = asyncio.run(main())
    assert [o.choice for o in out] == [Choice.A] * 6
    assert server.stats()["max_in_flight"] <= 3
    j.close()


def test_api_key_never_in_logs_errors_or_cache(server, pairs, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # every logger, the openai client's included
    r = pairs[3]
    server.set_script(ServerScript(pairs={key_of(r): ["429", "500"]}))
    cache_path = tmp_path / "cache.sqlite"
    j = make_judge(
        "openai",
        model="loopback-vlm",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        backoff_base_s=0.01,
        cache_path=cache_path,
    )
    got = j.compare(r.reference, r.a, r.b)
    assert got.choice is Choice.A
    assert "judge retry" in caplog.text  # retries are logged...
    assert SECRET not in caplog.text  # ...without the key
    assert SECRET not in repr(j.judge) and SECRET not in str(j.cache_identity())
    assert SECRET not in str(got.to_dict())
    j.close()
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f
    # a wrong key is a configuration error, raised (not a silent abstention), without the key
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-123456")
    bad = judge(server)
    with pytest.raises(JudgeError) as err:
        bad.compare(r.reference, r.a, r.b)
    assert "401" in str(err.value) and "sk-wrong-key-123456" not in str(err.value)
    bad.close()
    assert SECRET not in caplog.text and "sk-wrong-key-123456" not in caplog.text


def test_missing_key_env_and_bad_settings_are_clear_errors(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(JudgeError, match=KEY_ENV):
        OpenAIJudge("m", base_url=server.base_url, api_key_env=KEY_ENV)
    with pytest.raises(ConfigError, match="prompt_type"):
        OpenAIJudge("m", base_url=server.base_url, api_key_env="", prompt_type="nope")
    with pytest.raises(ConfigError, match="attribute"):
        OpenAIJudge("m", base_url=server.base_url, api_key_env="", attribute="nope")
    with pytest.raises(ConfigError):
        OpenAIJudge("m", base_url=server.base_url, api_key_env="", concurrency=0)
    j = OpenAIJudge("m", base_url=server.base_url, api_key_env="")
    with pytest.raises(JudgeError, match="same size"):
        j.compare(torch.rand(3, 8, 8), torch.rand(3, 8, 8), torch.rand(3, 8, 9))


def test_cache_skips_the_server_and_never_stores_failures(server, pairs, tmp_path):
    requests = pairs[:8]
    failing = requests[7]
    server.set_script(ServerScript(pairs={key_of(failing): ["500", "500", "500"]}))
    cache_path = tmp_path / "judge.sqlite"
    j = make_judge(
        "openai",
        model="loopback-vlm",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        max_attempts=3,
        backoff_base_s=0.01,
        cache_path=cache_path,
    )
    first = j.compare_batch(requests)
    assert sum(o.abstained for o in first) == 1 and first[7].abstained
    assert len(JudgmentCache(cache_path)) == 7  # the failure is not stored
    before = server.stats()["requests"]
    second = j.compare_batch(requests)
    assert server.stats()["requests"] - before == 1  # only the failed pair went out again
    assert [o.cached for o in second] == [True] * 7 + [False]
    assert second[7].choice is Choice.A  # script exhausted: now it succeeds
    for a, b in zip(first[:7], second[:7]):
        assert (a.choice, a.score, a.rationale) == (b.choice, b.score, b.rationale)
    # different sampling settings or prompt are different entries
    other = make_judge(
        "openai",
        model="loopback-vlm",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        temperature=0.7,
        cache_path=cache_path,
    )
    assert other.key(*_triplet(requests[0])) != j.key(*_triplet(requests[0]))
    sample = j.judge.with_sample_index(2)
    assert sample.cache_identity() != j.judge.cache_identity()
    assert sample.concurrency == j.judge.concurrency and sample.stats is j.judge.stats
    j.close()


def _triplet(r: JudgeRequest):
    return r.reference, r.a, r.b


def test_position_biased_server_abstains_after_symmetrisation(server, pairs):
    """End to end over HTTP: a VLM that always says "A" carries no information."""
    from compressai_vlic.judges.compose import SymmetrizedJudge

    j = judge(server, prompt_type="vlic-score")
    sym = SymmetrizedJudge(j)
    server.set_script(ServerScript(answer_type="first"))
    biased = sym.compare_batch(pairs[:6])
    assert all(o.choice is Choice.ABSTAIN for o in biased)
    assert all(o.error is None for o in biased)  # answered, just cancelled out
    server.set_script(ServerScript(answer_type="closest"))
    fair = sym.compare_batch(pairs[:6])
    assert all(o.choice is Choice.A for o in fair)
    assert server.stats()["requests"] == 12  # both orders of every pair
    j.close()


def test_judge_keeps_working_in_a_forked_child(server, pairs):
    """DataLoader workers fork: the parent's loop thread does not exist in the child."""
    import multiprocessing as mp

    server.set_script(ServerScript())
    j = judge(server)
    r = pairs[0]
    assert j.compare(r.reference, r.a, r.b).choice is Choice.A  # loop thread started here
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def child() -> None:
        queue.put(j.compare(r.reference, r.a, r.b).choice.value)

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0 and queue.get(timeout=5) == "A"
    j.close()
