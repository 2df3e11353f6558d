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

        # a server that only fails: no pair becomes a label, the run says so and exits non-zero
        server.set_script(ServerScript(default=["500"]))
        out3 = tmp_path / "faults.jsonl"
        argv = _args(
            folders, out3, server.base_url, "--symmetrize", "--judge-arg", "max_attempts=2"
        )
        assert main(argv) == 1
        assert read_preference_dataset(out3) == []
        assert server.stats()["requests"] == 8 * 2 * 2  # bounded retries: 2 attempts x 2 orders


def test_abstentions_are_final_unless_retry_abstentions(folders, tmp_path, capsys):
    with run_server(ServerScript(default=["empty"])) as server:
        out = tmp_path / "prefs.jsonl"
        assert main(_args(folders, out, server.base_url, "--limit", "4")) == 0
        server.set_script(ServerScript(default=["refuse"]))
        assert main(_args(folders, out, server.base_url)) == 0
        rows = read_preference_dataset(out)
        assert [r.label.value for r in rows] == ["abstain"] * 8
        assert [r.votes[0].error.split(" ")[0] for r in rows] == ["empty"] * 4 + ["refused:"] * 4
        server.set_script(ServerScript(default=["ok"]))  # the server answers properly now
        assert main(_args(folders, out, server.base_url)) == 0  # default: rows are final
        assert server.stats()["requests"] == 0
        assert [r.label.value for r in read_preference_dataset(out)] == ["abstain"] * 8
        capsys.readouterr()
        assert main(_args(folders, out, server.base_url, "--retry-abstentions")) == 0
        assert "asked again 8 pair(s)" in capsys.readouterr().err
        assert server.stats()["requests"] == 8
        rows = read_preference_dataset(out)
        assert sorted(r.label.value for r in rows) == ["A"] * 8  # replaced, not duplicated
        # an abstention the judge decided on (symmetrised position bias) is not asked again
        server.set_script(ServerScript(answer_type="first"))
        biased = tmp_path / "biased.jsonl"
        assert main(_args(folders, biased, server.base_url, "--symmetrize")) == 0
        assert {r.label.value for r in read_preference_dataset(biased)} == {"abstain"}
        server.set_script(ServerScript())
        assert (
            main(_args(folders, biased, server.base_url, "--symmetrize", "--retry-abstentions"))
            == 0
        )
        assert server.stats()["requests"] == 0


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens here any more


def test_failed_calls_are_retried_on_resume_even_at_another_url(folders, tmp_path, capsys):
    import sqlite3

    out, cache = tmp_path / "prefs.jsonl", tmp_path / "cache.sqlite"
    flags = ("--symmetrize", "--cache", str(cache), "--judge-arg", "max_attempts=2")
    # a dead endpoint: every pair failed, nothing written, nothing cached, exit 1 with a summary
    assert main(_args(folders, out, _closed_port_url(), *flags, "--judge-arg", "timeout_s=2")) == 1
    captured = capsys.readouterr()
    assert "8 pairs FAILED (not written; rerun to retry them)" in captured.out
    assert captured.err.count("failed ") == 8 and "connection error" in captured.err
    assert read_preference_dataset(out) == []
    # HTTP 500s from a live server: the same
    with run_server(ServerScript(default=["500"])) as broken:
        assert main(_args(folders, out, broken.base_url, *flags)) == 1
        assert broken.stats()["requests"] == 8 * 2 * 2
    assert read_preference_dataset(out) == []
    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == 0
    capsys.readouterr()
    # the endpoint works again, at another URL: same model, prompt and sampling, so it resumes
    # and asks for every pair that failed
    with run_server(ServerScript(answer_type="closest")) as server:
        assert main(_args(folders, out, server.base_url, *flags)) == 0
        assert server.stats()["requests"] == 8 * 2
        assert [r.label.value for r in read_preference_dataset(out)] == ["A"] * 8
        assert "tokens completion_tokens=80, prompt_tokens=160, total_tokens=240" in (
            capsys.readouterr().out
        )
        assert main(_args(folders, out, server.base_url, *flags)) == 0
        assert server.stats()["requests"] == 8 * 2  # nothing left to ask
    # another model is another judge: refused
    argv = _args(folders, out, _closed_port_url(), *flags, "--judge-arg", "model=other-vlm")
    assert main(argv) == 2
    assert "different judge configuration" in capsys.readouterr().err


def test_an_echoed_api_key_is_stored_and_printed_nowhere(folders, tmp_path, monkeypatch, capsys):
    secret = "sk-loopback-5ecret-7e57"
    monkeypatch.setenv("VLIC_ECHO_KEY", secret)
    with run_server(ServerScript(default=["echo_key"]), expect_key_env="VLIC_ECHO_KEY") as server:
        out, cache = tmp_path / "prefs.jsonl", tmp_path / "cache.sqlite"
        argv = _args(
            folders, out, server.base_url, "--cache", str(cache),
            "--judge-arg", "api_key_env=VLIC_ECHO_KEY",
        )  # fmt: skip
        assert main(argv) == 0
        assert server.stats()["requests"] == 8
        rows = read_preference_dataset(out)
        assert len(rows) == 8 and all("Bearer ***" in r.judgment.rationale for r in rows)
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    for path in tmp_path.iterdir():  # JSONL, SQLite cache and its WAL, lock files
        assert secret.encode() not in path.read_bytes(), path


def test_cache_with_a_judge_that_cannot_be_cached_says_so(folders, tmp_path, capsys):
    out = tmp_path / "psnr.jsonl"
    argv = [
        "judge", "--originals", str(folders / "orig"), "--recon-a", str(folders / "a"),
        "--recon-b", str(folders / "b"), "--output", str(out), "--no-progress",
        "--judge-type", "psnr", "--cache", str(tmp_path / "cache.sqlite"),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "--cache: judge 'psnr' cannot be cached" in capsys.readouterr().err
