"""Persistent judgment cache: keys, concurrent writers (threads, processes), kill -9 mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from compressai_vlic.judges.cache import CachedJudge, JudgmentCache, cache_key, is_cacheable
from compressai_vlic.judges.openai_judge import OpenAIJudge
from compressai_vlic.judges.types import Choice, JudgeRequest, Judgment, Vote
from compressai_vlic.testing.loopback_server import ServerScript, run_server

REPO = Path(__file__).resolve().parents[1]

# Shared by this test and the child process it kills: deterministic pairs, A less noisy.
PAIRS_SRC = """
import torch
from compressai_vlic.judges.types import JudgeRequest

def make_pairs(n):
    gen = torch.Generator().manual_seed(1234)
    out = []
    for i in range(n):
        ref = torch.rand(3, 24, 32, generator=gen)
        a = (ref + 0.02 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        b = (ref + 0.2 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        out.append(JudgeRequest(ref, a, b, pair_id=str(i)))
    return out
"""

CHILD_SRC = (
    PAIRS_SRC
    + """
import sys
from compressai_vlic.judges.cache import CachedJudge
from compressai_vlic.judges.openai_judge import OpenAIJudge

base_url, cache_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
judge = CachedJudge(OpenAIJudge("loopback-vlm", base_url=base_url, api_key_env="",
                                concurrency=4), cache_path)

def done(i, judgment):
    print(f"stored {i} {judgment.choice.value}", flush=True)

judge.compare_batch(make_pairs(n), on_result=done)
print("finished", flush=True)
"""
)


def _pairs(n: int) -> list[JudgeRequest]:
    ns: dict = {}
    exec(PAIRS_SRC, ns)
    return ns["make_pairs"](n)


def _judgment(score: float, error: str | None = None) -> Judgment:
    choice = Choice.ABSTAIN if error else (Choice.A if score > 0 else Choice.B)
    vote = Vote(score=score, choice=choice, raw=f"Score: {score}", error=error)
    return Judgment(score=score, choice=choice, votes=[vote], backend="test", error=error)


def test_key_covers_images_prompt_model_and_sampling():
    d = ("r" * 64, "a" * 64, "b" * 64)
    ident = {"backend": "openai", "model": "m", "prompt_version": "p1", "sampling": {"t": 0}}
    k = cache_key(d, ident)
    assert k == cache_key(d, dict(ident)) and len(k) == 64
    assert k != cache_key((d[0], d[2], d[1]), ident)  # order matters: (B, A) is another question
    for change in ({"model": "m2"}, {"prompt_version": "p2"}, {"sampling": {"t": 1}}):
        assert cache_key(d, {**ident, **change}) != k


def test_failures_are_not_cacheable(tmp_path):
    cache = JudgmentCache(tmp_path / "c.sqlite")
    assert cache.put("ok", _judgment(3.0))
    assert not cache.put("bad", _judgment(0.0, error="gave up after 4 attempts: HTTP 500"))
    failed_vote = _judgment(2.0)
    failed_vote.votes.append(Vote(0.0, Choice.ABSTAIN, error="timeout"))
    assert not is_cacheable(failed_vote)
    tie = _judgment(0.0)
    tie.choice = Choice.ABSTAIN  # a clean tie is an answer, and is cached
    assert cache.put("tie", tie)
    assert cache.get("bad") is None and len(cache) == 2
    got = cache.get("ok")
    assert got is not None and got.cached and got.score == 3.0 and got.votes[0].raw == "Score: 3.0"


def test_threads_write_concurrently(tmp_path):
    cache = JudgmentCache(tmp_path / "c.sqlite")
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(60):
                cache.put(f"{t}-{i}", _judgment(float(i % 5 + 1)))
                assert cache.get(f"{t}-{i}") is not None
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(cache) == 8 * 60 and cache.integrity_ok()


def test_processes_write_concurrently(tmp_path):
    path = tmp_path / "c.sqlite"
    go = tmp_path / "go"
    src = (
        "import sys, time, pathlib\n"
        "from compressai_vlic.judges.cache import JudgmentCache\n"
        "from compressai_vlic.judges.types import Choice, Judgment\n"
        "c = JudgmentCache(sys.argv[1])\n"
        "pathlib.Path(sys.argv[3] + sys.argv[2]).touch()\n"
        "while not pathlib.Path(sys.argv[3]).exists():\n"
        "    time.sleep(0.01)\n"
        "for i in range(400):\n"
        "    c.put(f'{sys.argv[2]}-{i}', Judgment(score=1.0, choice=Choice.A))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", src, str(path), str(p), str(go)], cwd=REPO)
        for p in range(3)
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}{p}").exists() for p in range(3)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # all three write at the same time
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    cache = JudgmentCache(path)
    assert len(cache) == 1200 and cache.integrity_ok()


@pytest.mark.slow
def test_cache_survives_kill_9_mid_run(tmp_path):
    n = 40
    cache_path = tmp_path / "judge.sqlite"
    with run_server(ServerScript(latency_s=0.15)) as server:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_SRC, server.base_url, str(cache_path), str(n)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        reported: list[int] = []
        assert child.stdout is not None
        deadline = time.monotonic() + 120
        while len(reported) < 12 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line.startswith("stored"), line
            reported.append(int(line.split()[1]))
        os.kill(child.pid, signal.SIGKILL)  # mid-run: requests are still in flight
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        assert len(reported) >= 12

        cache = JudgmentCache(cache_path)
        assert cache.integrity_ok()
        stored = len(cache)
        assert len(reported) <= stored < n  # everything reported is there; the run was cut short

        # resume: the stored pairs come from the cache, only the rest reach the server
        requests_before = server.stats()["requests"]
        judge = CachedJudge(
            OpenAIJudge("loopback-vlm", base_url=server.base_url, api_key_env="", concurrency=8),
            cache,
        )
        out = judge.compare_batch(_pairs(n))
        assert len(out) == n and all(o.choice is Choice.A for o in out)
        cached = [i for i, o in enumerate(out) if o.cached]
        assert set(reported) <= set(cached) and len(cached) == stored
        assert server.stats()["requests"] - requests_before == n - stored
        assert len(cache) == n and cache.integrity_ok()
        judge.close()


def test_cached_judge_needs_an_identity(tmp_path):
    class Anonymous:
        name = "anon"

        def compare(self, reference, a, b):  # pragma: no cover - never called
            raise AssertionError

    from compressai_vlic.errors import JudgeError

    with pytest.raises(JudgeError, match="cache_identity"):
        CachedJudge(Anonymous(), tmp_path / "c.sqlite")  # type: ignore[arg-type]


def test_hits_are_marked_and_identical(tmp_path):
    class Counting:
        name = "counting"

        def __init__(self) -> None:
            self.calls = 0

        def cache_identity(self) -> dict:
            return {"backend": "counting", "model": "x", "prompt_version": "v", "sampling": {}}

        def compare(self, reference, a, b) -> Judgment:
            self.calls += 1
            return _judgment(
                float((a - reference).abs().mean() < (b - reference).abs().mean()) * 2 - 1
            )

        def compare_batch(self, requests):
            return [self.compare(r.reference, r.a, r.b) for r in requests]

    inner = Counting()
    judge = CachedJudge(inner, tmp_path / "c.sqlite")
    reqs = _pairs(5)
    first = judge.compare_batch(reqs)
    again = [judge.compare(r.reference, r.a, r.b) for r in reqs]
    assert inner.calls == 5 and judge.stats.hits == 5 and judge.stats.stored == 5
    assert all(o.cached for o in again) and not any(o.cached for o in first)
    assert [o.score for o in first] == [o.score for o in again]
    # an image that differs by one 8-bit level is a different question
    r = reqs[0]
    a2 = r.a.clone()
    a2[0, 0, 0] = (torch.round(a2[0, 0, 0] * 255) + (1 if a2[0, 0, 0] < 0.5 else -1)) / 255
    judge.compare(r.reference, a2, r.b)
    assert inner.calls == 6
