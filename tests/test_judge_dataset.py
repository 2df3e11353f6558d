"""Preference datasets: folder matching, crash-safe resumable writing, the `judge` command."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from compressai_vlic.cli.main import main
from compressai_vlic.errors import ConfigError, DatasetError
from compressai_vlic.judges.dataset import (
    PairInputs,
    PreferenceRow,
    PreferenceWriter,
    build_preference_dataset,
    file_sha256,
    pairs_from_folders,
    read_preference_dataset,
)
from compressai_vlic.judges.types import Choice, Judgment, Vote

REPO = Path(__file__).resolve().parents[1]


class CountingJudge:
    """Deterministic judge that logs every call to ``count_file`` (one fsync-ed line per call).

    Prefers the image with the lower mean absolute error. With the environment variable
    ``COUNTING_JUDGE_HANG_AFTER=K``, call number K and every later one creates
    ``<count_file>.hang`` and blocks before answering (so a test can SIGKILL the process at a
    known point). Used in-process and, via ``--judge-type test_judge_dataset:CountingJudge``, by
    the CLI in a subprocess.
    """

    def __init__(self, count_file: str, sleep_s: float = 0.02):
        self.count_file, self.sleep_s, self.name = count_file, sleep_s, "counting"
        self._lock = threading.Lock()
        self._n = 0
        self.hang_after = int(os.environ.get("COUNTING_JUDGE_HANG_AFTER", "-1"))

    def config(self):
        return {"kind": "counting", "sleep_s": self.sleep_s}

    def compare(self, reference, a, b) -> Judgment:
        with self._lock:
            index, self._n = self._n, self._n + 1
        if 0 <= self.hang_after <= index:
            Path(self.count_file + ".hang").touch()
            time.sleep(600)
        time.sleep(self.sleep_s)
        ea, eb = (a - reference).abs().mean().item(), (b - reference).abs().mean().item()
        digest = hashlib.sha256(reference.numpy().tobytes() + a.numpy().tobytes()).hexdigest()[:16]
        with open(self.count_file, "a") as f:
            f.write(digest + "\n")
            f.flush()
            os.fsync(f.fileno())
        score = float(np.tanh((eb - ea) * 50))
        choice = Choice.A if score > 0 else Choice.B if score < 0 else Choice.ABSTAIN
        return Judgment(
            score,
            choice,
            votes=[Vote(score, choice, raw=f"{ea:.4f} {eb:.4f}")],
            backend="test",
            model="counting",
        )

    def compare_batch(self, requests):
        return [self.compare(r.reference, r.a, r.b) for r in requests]

    async def acompare(self, reference, a, b):
        import asyncio

        return await asyncio.to_thread(self.compare, reference, a, b)


def make_folders(root: Path, photos: dict, n: int, nested: bool = False) -> tuple[Path, Path, Path]:
    """Originals (real photo crops), A = mild noise (PNG), B = blur (JPEG)."""
    rng = np.random.default_rng(0)
    orig, a_dir, b_dir = root / "orig", root / "a", root / "b"
    names = list(photos)
    for i in range(n):
        img = photos[names[i % len(names)]]
        top, left = 20 + 17 * (i // len(names)), 30 + 11 * i
        crop = np.ascontiguousarray(img[top : top + 40, left : left + 48])
        sub = Path(f"set{i % 2}") if nested else Path()
        stem = sub / f"{names[i % len(names)]}_{i}"
        for d in (orig, a_dir, b_dir):
            (d / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(orig / f"{stem}.png")
        noisy = np.clip(crop + rng.normal(0, 4 + i, crop.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(a_dir / f"{stem}.png")
        Image.fromarray(crop).filter(ImageFilter.GaussianBlur(1.5)).save(
            b_dir / f"{stem}.jpg", quality=95
        )
    return orig, a_dir, b_dir


def folder_args(orig: Path, a_dir: Path, b_dir: Path, out: Path) -> list[str]:
    """The judge CLI's input and output flags for the folders of ``make_folders``."""
    return [
        "--originals", str(orig), "--recon-a", str(a_dir), "--recon-b", str(b_dir),
        "--output", str(out),
    ]  # fmt: skip


def test_pairs_from_folders_matches_by_relative_stem(tmp_path, photos):
    orig, a_dir, b_dir = make_folders(tmp_path, photos, 6, nested=True)
    pairs, missing = pairs_from_folders(orig, a_dir, b_dir)
    assert len(pairs) == 6 and not missing
    for p in pairs:
        assert p.a.suffix == ".png" and p.b.suffix == ".jpg"
        assert p.reference.with_suffix("").relative_to(orig) == p.b.with_suffix("").relative_to(
            b_dir
        )
    victim = pairs[2]
    victim.b.unlink()
    with pytest.raises(DatasetError, match="--missing-type skip"):
        pairs_from_folders(orig, a_dir, b_dir)
    kept, missing = pairs_from_folders(orig, a_dir, b_dir, "skip")
    assert len(kept) == 5 and missing == [victim.pair_id]
    Image.open(pairs[0].a).save(pairs[0].a.with_suffix(".webp"))
    with pytest.raises(DatasetError, match="ambiguous"):
        pairs_from_folders(orig, a_dir, b_dir, "skip")
    with pytest.raises(DatasetError, match="does not exist"):
        pairs_from_folders(orig, tmp_path / "nope", b_dir)


def _row(pair_id: str, cfg: dict) -> PreferenceRow:
    j = Judgment(0.5, Choice.A, votes=[Vote(0.5, Choice.A, raw="x")])
    return PreferenceRow(
        pair_id, "r.png", "a.png", "b.png", "0" * 64, "1" * 64, "2" * 64, Choice.A, j, "fake", cfg
    )


def test_writer_repairs_torn_tail_rejects_duplicates_and_other_configs(tmp_path):
    path = tmp_path / "prefs.jsonl"
    cfg = {"judge": "x"}
    with PreferenceWriter(path, cfg) as w:
        w.append(_row("p1", cfg))
        w.append(_row("p2", cfg))
        with pytest.raises(DatasetError, match="already present"):
            w.append(_row("p1", cfg))
        with pytest.raises(DatasetError, match="another run"):  # one writer per file
            PreferenceWriter(path, cfg).__enter__()
    with open(path, "ab") as f:
        f.write(b'{"version":1,"pair_id":"p3","refer')  # a write torn by kill -9
    with pytest.warns(UserWarning, match="torn"):
        rows = read_preference_dataset(path)
    assert [r.pair_id for r in rows] == ["p1", "p2"]
    with PreferenceWriter(path, cfg) as w:
        assert w.done == {"p1", "p2"} and w.repaired_bytes > 0
        w.append(_row("p3", cfg))
    assert [r.pair_id for r in read_preference_dataset(path)] == ["p1", "p2", "p3"]
    with pytest.raises(ConfigError, match="different judge configuration"):
        PreferenceWriter(path, {"judge": "y"}).__enter__()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"garbage\n" + lines[1])
    with pytest.raises(DatasetError, match=":2: not a preference row"):
        read_preference_dataset(path)


def test_a_file_that_is_not_a_dataset_is_refused_untouched(tmp_path, photos, capsys):
    cfg = {"judge": "x"}
    for content in (b'{"lr": 0.001, "steps": 10}', b"a,b\n1,2", b'\n\n{"version"x'):
        path = tmp_path / "config.json"
        path.write_bytes(content)  # no trailing newline: the old writer truncated it to 0 bytes
        with pytest.raises(DatasetError, match=r"not a preference (dataset|row)"):
            PreferenceWriter(path, cfg).__enter__()
        assert path.read_bytes() == content
    orig, a_dir, b_dir = make_folders(tmp_path, photos, 1)
    path.write_bytes(b'{"lr": 0.001}')
    rc = main(["judge", *folder_args(orig, a_dir, b_dir, path), "--judge-type", "psnr"])
    assert rc != 0 and "not a preference dataset" in capsys.readouterr().err
    assert path.read_bytes() == b'{"lr": 0.001}'


def test_build_dataset_in_process(tmp_path, photos):
    orig, a_dir, b_dir = make_folders(tmp_path, photos, 5)
    pairs, _ = pairs_from_folders(orig, a_dir, b_dir)
    judge = CountingJudge(str(tmp_path / "calls.txt"), sleep_s=0.0)
    out = tmp_path / "prefs.jsonl"
    summary = build_preference_dataset(pairs, judge, out, {"j": 1}, concurrency=3, progress=False)
    assert summary.judged == 5 and summary.already_done == 0
    rows = {r.pair_id: r for r in read_preference_dataset(out)}
    assert set(rows) == {p.pair_id for p in pairs}
    for p in pairs:
        r = rows[p.pair_id]
        assert r.a_sha256 == file_sha256(p.a) and r.reference == str(p.reference.resolve())
        assert r.label in (Choice.A, Choice.B) and r.winner in (r.a, r.b) and r.loser != r.winner
        assert r.votes and r.judge_config == {"j": 1}
    again = build_preference_dataset(pairs, judge, out, {"j": 1}, progress=False)
    assert again.judged == 0 and again.already_done == 5
    assert len((tmp_path / "calls.txt").read_text().split()) == 5
    # a reconstruction of the wrong size is reported and skipped (not a silent crop); the
    # other pairs are judged and the summary says the run was not clean
    bad = PairInputs("bad", pairs[0].reference, pairs[0].a, tmp_path / "small.png")
    Image.new("RGB", (8, 8)).save(bad.b)
    mixed = build_preference_dataset(
        [bad, *pairs], judge, tmp_path / "bad.jsonl", {}, progress=False
    )
    assert mixed.judged == 5 and not mixed.ok
    assert list(mixed.skipped) == ["bad"] and "sizes differ" in mixed.skipped["bad"]
    assert {r.pair_id for r in read_preference_dataset(tmp_path / "bad.jsonl")} == {
        p.pair_id for p in pairs
    }


def _cli(*args: str, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", **(env_extra or {})}
    cmd = [sys.executable, "-m", "compressai_vlic.cli.main", "judge", *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tmp_path, photos):
    n_pairs, hang_after = 10, 6
    orig, a_dir, b_dir = make_folders(tmp_path, photos, n_pairs)
    calls, out = tmp_path / "calls.txt", tmp_path / "prefs.jsonl"
    args = [
        *folder_args(orig, a_dir, b_dir, out), "--judge-type", "test_judge_dataset:CountingJudge",
        "--judge-arg", f"count_file={calls}", "--concurrency", "3",
    ]  # fmt: skip
    proc = _cli(*args, env_extra={"COUNTING_JUDGE_HANG_AFTER": str(hang_after)})
    hang = Path(f"{calls}.hang")
    deadline = time.monotonic() + 120
    while not hang.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "judge never reached the hang point"
        time.sleep(0.02)
    time.sleep(1.0)  # calls before the hang point finish and are written
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    first = read_preference_dataset(out)
    assert len(first) == hang_after == len(calls.read_text().split())
    with open(out, "ab") as f:  # and a torn write on top, as a kill during write() leaves
        f.write(b'{"version":1,"pair_id":"x')

    proc = _cli(*args)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"{n_pairs - hang_after} judged now, {hang_after} already present" in stdout
    assert "torn last line" in stderr and "pair/s" in stderr  # tqdm reports rate
    rows = read_preference_dataset(out)
    ids = [r.pair_id for r in rows]
    assert len(ids) == len(set(ids)) == n_pairs  # every pair exactly once
    judged = calls.read_text().split()
    assert len(judged) == len(set(judged)) == n_pairs  # nothing judged twice

    assert main(["judge", *args, "--no-progress"]) == 0  # once more, in-process
    assert len(read_preference_dataset(out)) == n_pairs
    assert len(calls.read_text().split()) == n_pairs


def test_cli_metric_judge_with_composition(tmp_path, photos, capsys, monkeypatch):
    orig, a_dir, b_dir = make_folders(tmp_path, photos, 4)
    out = tmp_path / "prefs.jsonl"
    base = ["judge", *folder_args(orig, a_dir, b_dir, out)]
    rc = main(
        [
            *base,
            "--judge-type",
            "psnr",
            "--symmetrize",
            "--unanimous-with",
            "ms_ssim",
            "--judge-arg",
            "ms_ssim.scale=0.05",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = read_preference_dataset(out)
    assert len(rows) == 4
    for r in rows:
        assert r.judge == "unanimous(symmetrize(psnr),ms_ssim)"
        assert [v.source for v in r.votes] == [
            "symmetrize(psnr)/AB/psnr",
            "symmetrize(psnr)/BA/psnr",
            "ms_ssim",
        ]
        assert r.judge_config["judge"]["kind"] == "unanimous"
        assert r.judge_config["judge"]["members"][1]["scale"] == 0.05  # ms_ssim.scale=0.05
    assert "4 judged now" in capsys.readouterr().out
    # resuming with other judge options is refused with a clear message
    assert main([*base, "--judge-type", "psnr", "--no-progress"]) == 2
    assert "different judge configuration" in capsys.readouterr().err
    # a judge argument addressed to a judge that is not in the run is refused
    assert main([*base, "--judge-type", "psnr", "--judge-arg", "lpips.net_type=vgg"]) == 2
    assert "not one of the judges" in capsys.readouterr().err
    # LPIPS without its backbone weights: a clear error, nothing written
    monkeypatch.setenv("COMPRESSAI_VLIC_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    assert main([*base[:-1], str(tmp_path / "l.jsonl"), "--judge-type", "lpips"]) == 2
    assert "weights fetch alexnet" in capsys.readouterr().err
    assert not (tmp_path / "l.jsonl").exists()


def test_default_judge_is_ssimulacra2(tmp_path, photos, capsys):
    orig, a_dir, b_dir = make_folders(tmp_path, photos, 2)
    out = tmp_path / "prefs.jsonl"
    rc = main(["judge", *folder_args(orig, a_dir, b_dir, out), "--no-progress"])
    assert rc == 0
    rows = read_preference_dataset(out)
    assert {r.judge for r in rows} == {"ssimulacra2"}
    assert all(r.votes[0].raw.startswith("ssimulacra2: A=") for r in rows)


@pytest.mark.slow
def test_codec_pairs_two_seeds_same_tokens(tmp_path, photos, capsys):
    """A tiny random-weight VLIC decodes each original twice; the pair shares one bitstream."""
    from compressai_vlic.bitstream import unpack

    orig = tmp_path / "orig"
    orig.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(np.ascontiguousarray(photos[name][100:132, 120:152])).save(
            orig / f"{name}.png"
        )
    out = tmp_path / "codec.jsonl"
    args = [
        "judge",
        "--originals",
        str(orig),
        "--codec-quality",
        "test",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert main([*args, "--limit", "1"]) == 0
    assert main(args) == 0  # resumes: only the second image is decoded and judged now
    assert "1 judged now, 1 already present" in capsys.readouterr().out
    rows = read_preference_dataset(out)
    assert [r.pair_id for r in rows] == ["astronaut#s0-s1", "coffee#s0-s1"]
    for r in rows:
        assert r.seeds == (0, 1) and r.bitstream is not None
        header, _ = unpack(Path(r.bitstream).read_bytes())
        assert header.seed == 0
        a, b = (np.asarray(Image.open(p)) for p in (r.a, r.b))
        assert a.shape == b.shape == (32, 32, 3)
        assert (
            np.abs(a.astype(int) - b.astype(int)).mean() > 0.5
        )  # different noise, different image
        assert r.judge_config["codec"]["quality"] == "test"
    assert (
        json.loads((out.parent / "codec.jsonl.decodes" / "codec.json").read_text())["init_seed"]
        == 0
    )
    # decoding the stored bitstream (seed 0) reproduces decode A exactly
    from compressai_vlic.zoo import vlic

    torch.manual_seed(0)
    net = vlic("test").eval()
    data = Path(rows[0].bitstream).read_bytes()
    x = net.decompress([[data]])["x_hat"][0]
    rec = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(rec, np.asarray(Image.open(rows[0].a)))


def test_ctrl_c_finishes_pairs_in_flight_and_loses_nothing(tmp_path, photos):
    """First Ctrl-C: no new pairs start, the ones in flight are judged AND written."""
    import signal as sig

    orig, a_dir, b_dir = make_folders(tmp_path, photos, 8)
    pairs, _ = pairs_from_folders(orig, a_dir, b_dir)
    calls = tmp_path / "calls.txt"

    class InterruptingJudge(CountingJudge):
        def compare(self, reference, a, b):
            with self._lock:
                n = self._n
            if n == 2:  # the user presses Ctrl-C while the third call runs
                os.kill(os.getpid(), sig.SIGINT)
            return super().compare(reference, a, b)

    out = tmp_path / "prefs.jsonl"
    judge = InterruptingJudge(str(calls), sleep_s=0.2)
    with pytest.raises(KeyboardInterrupt):
        build_preference_dataset(pairs, judge, out, {"j": 1}, concurrency=3, progress=False)
    written = len(read_preference_dataset(out))
    assert 3 <= written < 8
    assert written == len(calls.read_text().split())  # every finished call has its row
    summary = build_preference_dataset(
        pairs, CountingJudge(str(calls), 0.0), out, {"j": 1}, progress=False
    )
    assert summary.judged == 8 - written and len(calls.read_text().split()) == 8


def test_cli_skips_a_bad_pair_reports_it_and_exits_1(tmp_path, photos, capsys):
    orig, a_dir, b_dir = make_folders(tmp_path, photos, 4)
    victims = sorted(b_dir.iterdir())
    Image.new("RGB", (8, 8)).save(victims[0], quality=95)  # a reconstruction of the wrong size
    victims[1].write_bytes(b"not a jpeg")  # an unreadable one
    out = tmp_path / "prefs.jsonl"
    argv = [
        "judge", "--originals", str(orig), "--recon-a", str(a_dir), "--recon-b", str(b_dir),
        "--output", str(out), "--judge-type", "psnr", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "2 pairs skipped (bad input)" in captured.out
    assert "sizes differ" in captured.err and "not a readable image" in captured.err
    assert len(read_preference_dataset(out)) == 2
