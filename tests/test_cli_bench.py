"""`compressai-vlic bench`: the report is complete and self-consistent (no timing assertions)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from compressai_vlic.cli.main import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory, photos) -> Path:
    folder = tmp_path_factory.mktemp("bench_images")
    Image.fromarray(photos["chelsea"][60:124, 100:180]).save(folder / "chelsea.png")
    Image.fromarray(photos["coffee"][100:147, 200:253]).convert("L").save(folder / "coffee.png")
    return folder


def _check_report(report: dict, names: list[str]) -> None:
    assert report["model"] == "vlic-test"
    # 3 power-schedule steps, guidance only at t = 0.198 (inside the CFG interval): 4 evaluations.
    assert report["evaluations_per_tile"] == 4
    assert [Path(r["name"]).name for r in report["images"]] == names
    assert report["rss_after_model_mib"] >= report["rss_before_model_mib"] > 0
    for r in report["images"]:
        assert r["component_path_matches"], r["name"]
        assert r["real_bits"] == 8 * r["stream_bytes"]
        # Container = payload + 29-byte header + 4-byte checksum (41 with the rANS flush).
        assert r["stream_bytes"] - r["payload_bytes"] == 33
        assert r["real_over_cross_entropy"] == pytest.approx(
            r["real_bits"] / r["cross_entropy_bits"]
        )
        assert 1.0 <= r["real_over_cross_entropy"] < 1.01 + 8 * 41 / r["cross_entropy_bits"]
        assert r["cross_entropy_bits"] <= r["bits_before_entropy_coding"] * 1.5
        assert r["bpp"] == pytest.approx(r["real_bits"] / (r["height"] * r["width"]))
        for key in ("compress_ms", "decompress_ms", "encoder_ms", "entropy_encode_ms"):
            assert r[key] > 0
        assert r["sampler_step_ms"] == pytest.approx(r["sampler_ms"] / report["num_steps"])
        assert r["peak_memory_mib"] >= report["rss_after_model_mib"]
    _check_prior_steps(report, [1, 12])


def _check_prior_steps(report: dict, tiles: list[int]) -> None:
    """The prior step is reported next to its bound and the transformers reference."""
    assert [t["tiles"] for t in report["prior_steps"]] == tiles
    for t in report["prior_steps"]:
        assert t["step_ms"] > 0 and t["bound_ms"] > 0 and t["reference_ms"] > 0
        assert t["step_over_bound"] == pytest.approx(t["step_ms"] / t["bound_ms"])
        assert t["device"] == "cpu" and t["digits"] == "factorized"
        # the roofline: measured bandwidth and peak, and the step cannot beat it
        assert t["bandwidth_gb_s"] > 0.1 and t["peak_gflop_s"] > 0.1
        assert t["step_over_roofline"] == pytest.approx(t["step_ms"] / t["roofline_ms"])
        assert t["roofline_ms"] < t["step_ms"]


def test_bench_prior_only(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(
            [
                "bench",
                "--prior-only",
                "--prior-tiles",
                "2",
                "--isolation",
                "inline",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
    assert status == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == [] and report["model"] == "vlic-test prior"
    _check_prior_steps(report, [2])
    assert "2 tile(s)" in out.getvalue() and "bound" in out.getvalue()


def test_bench_inline_prints_a_table_and_writes_json(images, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(
            [
                "bench",
                "--quality",
                "test",
                "--images",
                str(images / "chelsea.png"),
                "--isolation",
                "inline",
                "--json",
                str(tmp_path / "r.json"),
                "--seed",
                "9",
            ]
        )
    assert status == 0, err.getvalue()
    report = json.loads((tmp_path / "r.json").read_text())
    _check_report(report, ["chelsea.png"])
    table = out.getvalue()
    assert "model vlic-test" in table and "real/xent" in table
    row = next(line for line in table.splitlines() if line.startswith("chelsea.png"))
    assert "80x64" in row and f"{report['images'][0]['stream_bytes']}" in row


@pytest.mark.slow
def test_bench_measures_in_a_fresh_process(images, tmp_path):
    cli = shutil.which("compressai-vlic", path=str(Path(sys.executable).parent))
    assert cli, "compressai-vlic is not installed: run `pip install --no-deps .`"
    proc = subprocess.run(
        [
            cli,
            "bench",
            "--images",
            str(images),
            "--json",
            str(tmp_path / "r.json"),
            "--threads",
            "1",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "grayscale (L) replicated to RGB" in proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    _check_report(report, ["chelsea.png", "coffee.png"])
    assert report["threads"] == 1
    assert "total:" in proc.stdout
