"""`compressai-vlic judge` with the VLIC noise-control stack against a real loopback VLM server.

The server (a separate process speaking the chat-completions API) is either position-biased
(always answers "A") or honest (the lower-MSE image wins), and can inject faults. Pairs are real
photo crops; A is the slightly noisy reconstruction, B the heavily noisy one.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from compressai_vlic.cli.main import main
from compressai_vlic.judges.dataset import read_preference_dataset
from compressai_vlic.testing.loopback_server import ServerScript, run_server


@pytest.fixture(scope="module")
def folders(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("vlm_pairs")
    rng = np.random.default_rng(0)
    for d in ("orig", "a", "b"):
        (root / d).mkdir()
    for i, name in enumerate(["astronaut", "chelsea", "coffee", "rocket"] * 2):
        crop = np.ascontiguousarray(photos[name][50 + 20 * i : 50 + 20 * i + 32, 60:100])
        Image.fromarray(crop).save(root / "orig" / f"{name}{i}.png")
        for d, sigma in (("a", 4), ("b", 30)):
            noisy = np.clip(crop + rng.normal(0, sigma, crop.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / d / f"{name}{i}.png")
    return root


def _args(root, out, base_url, *extra):
    return [
        "judge", "--originals", str(root / "orig"), "--recon-a", str(root / "a"),
        "--recon-b", str(root / "b"), "--output", str(out), "--no-progress",
        "--judge-type", "openai", "--judge-arg", "model=loopback-vlm",
        "--judge-arg", f"base_url={base_url}", "--judge-arg", "api_key_env=",
        "--judge-arg", "prompt_type=ab-choice", "--judge-arg", "timeout_s=5",
        "--judge-arg", "backoff_base_s=0.01", *extra,
    ]  # fmt: skip


def test_position_biased_vlm_gives_abstentions_after_symmetrisation(folders, tmp_path):
    with run_server(ServerScript(answer_type="first")) as server:
        out = tmp_path / "biased.jsonl"
        assert main(_args(folders, out, server.base_url, "--symmetrize", "--votes", "3")) == 0
        rows = read_preference_dataset(out)
        assert len(rows) == 8
        for r in rows:
            assert r.label.value == "abstain" and r.judgment.error is None
            assert len(r.votes) == 6 and {v.order for v in r.votes} == {"AB", "BA"}
        assert server.stats()["requests"] == 8 * 6
        # without symmetrisation the same VLM "prefers" A everywhere: the bias becomes labels
        out1 = tmp_path / "raw.jsonl"
        assert main(_args(folders, out1, server.base_url)) == 0
        assert {r.label.value for r in read_preference_dataset(out1)} == {"A"}


def test_honest_vlm_unanimous_with_metric_cached_and_faults_abstain(folders, tmp_path):
    script = ServerScript(answer_type="closest", default=["ok"])
    with run_server(script) as server:
        out, cache = tmp_path / "prefs.jsonl", tmp_path / "cache.sqlite"
        flags = ("--symmetrize", "--unanimous-with", "psnr", "--cache", str(cache))
        assert main(_args(folders, out, server.base_url, *flags)) == 0
        rows = read_preference_dataset(out)
        assert [r.label.value for r in rows] == ["A"] * 8
        assert all(len(r.votes) == 3 for r in rows)  # AB + BA from the VLM, one from PSNR
        assert rows[0].votes[0].prob_a is not None and rows[0].votes[0].prob_a > 0.5
        assert rows[0].judge_config["judge"]["members"][0]["inner"]["model"] == "loopback-vlm"
        first = server.stats()["requests"]
        assert first == 16
        # the same pairs in a new dataset: every VLM answer comes from the cache
        out2 = tmp_path / "again.jsonl"
        assert main(_args(folders, out2, server.base_url, *flags)) == 0
        assert server.stats()["requests"] == first  # no VLM call: all 16 answers from the cache
        assert [r.label.value for r in read_preference_dataset(out2)] == ["A"] * 8

        # a server that only fails: every pair abstains with the error recorded, none is lost
        server.set_script(ServerScript(default=["500"]))
        out3 = tmp_path / "faults.jsonl"
        assert (
            main(
                _args(
                    folders, out3, server.base_url, "--symmetrize", "--judge-arg", "max_attempts=2"
                )
            )
            == 0
        )
        rows = read_preference_dataset(out3)
        assert len(rows) == 8
        assert all(r.label.value == "abstain" and r.judgment.error for r in rows)
        assert server.stats()["requests"] == 8 * 2 * 2  # bounded retries: 2 attempts x 2 orders
