"""Kill post-training with SIGKILL and resume: no judged pair lost, no judge call repeated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from compressai_vlic_lightning.preferences import PreferenceBuffer

ROOT = Path(__file__).resolve().parents[1]

JUDGE_MODULE = textwrap.dedent(
    '''
    """A slow judge that records every real call (cache hits never reach it) and can be held."""
    import hashlib, json, os, time
    from compressai_vlic.judges.types import Choice, Judgment, Vote

    class CountingJudge:
        name = "counting"

        def __init__(self, log_path, delay_s=0.05):
            self.log_path = log_path
            self.delay_s = delay_s

        def cache_identity(self):
            return {"judge": "counting"}

        def compare(self, reference, a, b):
            # The test holds the judge (a "hold" file): the call waits, and says so ("held").
            folder = os.path.dirname(self.log_path)
            if os.path.exists(os.path.join(folder, "hold")):
                open(os.path.join(folder, "held"), "a").close()
                while os.path.exists(os.path.join(folder, "hold")):
                    time.sleep(0.01)
            time.sleep(self.delay_s)
            digest = hashlib.sha256(a.numpy().tobytes() + b.numpy().tobytes()).hexdigest()
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps({"digest": digest}) + "\\n")
                fh.flush()
                os.fsync(fh.fileno())
            d = float(a.mean() - b.mean())
            choice = Choice.A if d > 0 else Choice.B
            return Judgment(score=d, choice=choice, votes=[Vote(score=d, choice=choice)])

        def compare_batch(self, requests):
            return [self.compare(r.reference, r.a, r.b) for r in requests]

        async def acompare(self, reference, a, b):
            return self.compare(reference, a, b)
    '''
)

RUN = textwrap.dedent(
    """
    import logging, sys, torch
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    from compressai_vlic_lightning.cli import main
    root, steps, resume = sys.argv[1], sys.argv[2], sys.argv[3:]
    main(["fit", "--config", "configs/train/tiny_stage2.yaml",
          "--trainer.default_root_dir", root, "--trainer.logger.init_args.save_dir", root,
          "--trainer.max_steps", steps, "--trainer.val_check_interval", "1000",
          "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks.every_n_train_steps", "5", "--trainer.callbacks.save_top_k", "-1",
          "--data.init_args.batch_size", "4",
          "--model.init_args.judge_type", "counting_judge:CountingJudge",
          "--model.init_args.judge_kwargs", '{"log_path": "' + root + '/calls.jsonl"}',
          # the counting judge alone: a composite's calls still in flight at the kill are redone
          "--model.init_args.judge_compose", "null",
          "--model.init_args.buffer_size", "16", "--model.init_args.refresh_every", "5",
          "--model.init_args.warmup_pairs", "8", "--model.init_args.pairs_per_step", "4",
          "--model.init_args.dpo_batch_size", "4", *resume])
    """
)


def _ids(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            out.append(json.loads(line)["pair_id"])
    return out


@pytest.mark.slow
def test_kill_and_resume_post_training_loses_no_judged_pair(tmp_path):
    (tmp_path / "counting_judge.py").write_text(JUDGE_MODULE)
    (tmp_path / "run.py").write_text(RUN)
    root = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(ROOT / "lightning")]),
        "OMP_NUM_THREADS": "1",
    }
    prefs = root / "preferences"
    first = subprocess.Popen(
        [sys.executable, str(tmp_path / "run.py"), str(root), "200"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    target = root / "checkpoints" / "epoch=0-step=10.ckpt"
    while not target.exists():
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint at step 10 in time"
        time.sleep(0.2)
    # Hold the judge, and kill once a call is waiting in it: that pair is pending, not judged.
    (root / "hold").touch()
    while not (root / "held").exists():
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no judge call after the checkpoint in time"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    first.stderr.close()

    judged_before = _ids(prefs / "judged.jsonl")
    pending_before = _ids(prefs / "pending.jsonl")
    assert judged_before and set(judged_before) <= set(pending_before)
    in_flight = set(pending_before) - set(judged_before)
    assert in_flight, "the kill should interrupt pairs waiting for the judge"

    (root / "hold").unlink()
    last = root / "checkpoints" / "last.ckpt"
    resumed_from = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    target_steps = resumed_from + 10
    second = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "run.py"),
            str(root),
            str(target_steps),
            "--ckpt_path",
            str(root / "checkpoints" / "last.ckpt"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"restored {len(judged_before)} judged pairs" in second.stderr
    judged_after = _ids(prefs / "judged.jsonl")
    pending_after = _ids(prefs / "pending.jsonl")
    assert set(judged_before) <= set(judged_after)  # nothing judged was lost
    assert in_flight <= set(judged_after)  # interrupted pairs were finished after the restart
    assert len(judged_after) == len(set(judged_after))  # no pair judged twice
    assert len(pending_after) == len(set(pending_after))  # no pair submitted twice
    assert set(judged_after) == set(pending_after)
    calls = [json.loads(x)["digest"] for x in (root / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == len(set(calls)), "a judge call was repeated"
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == target_steps


class _AlwaysA:
    name = "always-a"

    def compare_batch(self, requests):
        from compressai_vlic.judges.types import Choice, Judgment

        return [Judgment(score=1.0, choice=Choice.A) for _ in requests]


def test_buffer_restores_from_disk_and_ignores_a_torn_line(tmp_path):
    images = torch.rand(3, 3, 3, 8, 8)
    buf = PreferenceBuffer(_AlwaysA(), tmp_path, capacity=8, worker_type="thread")
    assert buf.submit(["p0", "p1", "p2"], images[0], images[1], images[2], step=0, round=0) == 3
    assert buf.drain(timeout_s=30)
    buf.refresh()
    batch = buf.sample(2, torch.Generator().manual_seed(0))
    assert batch.winner.shape == (2, 3, 8, 8)
    stored = buf.active_pairs[0]
    buf.close()
    with (tmp_path / "judged.jsonl").open("a") as fh:
        fh.write('{"pair_id": "p9", "judg')  # a write torn by a crash
    again = PreferenceBuffer(_AlwaysA(), tmp_path, capacity=8, worker_type="inline")
    assert again.restore() == 3
    again.refresh()
    assert len(again) == 3
    restored = {p.pair_id: p for p in again.active_pairs}[stored.pair_id]
    assert torch.equal(restored.a, stored.a) and torch.equal(restored.reference, stored.reference)
    assert again.submit(["p0"], images[0][:1], images[1][:1], images[2][:1], step=1, round=0) == 0
    assert again.submit(["p3"], images[0][:1], images[1][:1], images[2][:1], step=1, round=0) == 1
    again.close()
    third = PreferenceBuffer(_AlwaysA(), tmp_path, capacity=8, worker_type="inline")
    assert third.restore() == 4  # the line written after the torn one is intact
    third.close()


class _PaidJudge:
    """Answers A with token usage, except that every third call fails (no answer)."""

    name = "paid"
    calls = 0

    def compare_batch(self, requests):
        from compressai_vlic.judges.types import Choice, Judgment, Vote

        out = []
        for _ in requests:
            self.calls += 1
            if self.calls % 3 == 0:
                vote = Vote(0.0, Choice.ABSTAIN, error="gave up", status="failed")
            else:
                usage = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}
                vote = Vote(1.0, Choice.A, usage=usage)
            out.append(Judgment(vote.score, vote.choice, votes=[vote]))
        return out


def test_buffer_counts_failed_calls_and_tokens(tmp_path):
    images = torch.rand(3, 3, 3, 8, 8)
    buf = PreferenceBuffer(_PaidJudge(), tmp_path, capacity=8, worker_type="inline")
    assert buf.submit(["p0", "p1", "p2"], images[0], images[1], images[2], step=0, round=0) == 3
    assert buf.drain(timeout_s=30)
    stats = buf.refresh()
    assert stats.failed == 1 and stats.abstained == 1  # the failed pair gives no label
    assert stats.total_tokens == 2 * 105
    assert len(buf) == 2
    buf.close()
