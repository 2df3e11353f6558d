"""`compressai-vlic demo --preset smoke`: the main job's whole path in about a minute."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from compressai_vlic.cli.main import main


def _run_smoke_demo(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    env_overrides: dict[str, str],
    extra_args: tuple[str, ...] = (),
) -> tuple[int, str, str, Path]:
    """Run `compressai-vlic demo --preset smoke` in this process; returns (rc, out, err, folder).

    The demo's own CompressAI evaluation still runs ``python -m compressai.utils.eval_model`` in a
    fresh interpreter, as a user's would.
    """
    out = tmp_path / "report"
    monkeypatch.delenv("COMPRESSAI_VLIC_JUDGE_BASE_URL", raising=False)
    for key, value in env_overrides.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    threads, lightning_log = torch.get_num_threads(), logging.getLogger("pytorch_lightning")
    level = lightning_log.level
    try:
        rc = main(["demo", "--preset", "smoke", "-o", str(out), *extra_args])
    finally:  # the demo sets both for its own run
        torch.set_num_threads(threads)
        lightning_log.setLevel(level)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, out


@pytest.mark.slow
def test_demo_smoke_writes_a_complete_report(tmp_path, monkeypatch, capsys):
    rc, stdout, stderr, out = _run_smoke_demo(tmp_path, monkeypatch, capsys, {})
    assert rc == 0, stderr[-3000:]
    assert f"report written to {out}" in stdout
    report = json.loads((out / "report.json").read_text())
    results = report["compressai_eval"]["results"]
    assert len(results["bpp"]) == 2 and all(b > 0 for b in results["bpp"])
    assert report["compressai_eval"]["command"].startswith("python -m compressai")
    assert report["judge"]["judge_type"] == "ssimulacra2"
    assert report["stage2"]["judged_pairs"] >= 8
    assert {r["image"] for r in report["per_image"]} == {"chelsea.png", "flower.png"}
    # the demo's own decodes are the bitstreams eval_model measured: same PSNR
    mean_psnr = sum(r["before_psnr"] for r in report["per_image"]) / 2
    assert mean_psnr == pytest.approx(results["psnr-rgb"][0], abs=1e-3)
    for name in (
        "rate_quality.png",
        "training_curves.png",
        "side_by_side/chelsea.png",
        "side_by_side/flower.png",
    ):
        assert (out / name).stat().st_size > 1000, name


@pytest.mark.slow
def test_demo_uses_a_configured_vlm_endpoint(tmp_path, monkeypatch, capsys):
    """With an endpoint configured (env var), post-training asks the VLM over real HTTP."""
    from compressai_vlic.testing.loopback_server import run_server

    with run_server() as server:
        rc, _stdout, stderr, out = _run_smoke_demo(
            tmp_path,
            monkeypatch,
            capsys,
            {
                "COMPRESSAI_VLIC_JUDGE_BASE_URL": server.base_url,
                "COMPRESSAI_VLIC_JUDGE_MODEL": "loopback-vlm",
            },
            ("--judge-api-key-env", ""),
        )
        stats = server.stats()
    assert rc == 0, stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["judge"]["judge_type"] == "openai"
    assert report["judge"]["judge_kwargs"]["model"] == "loopback-vlm"
    assert report["stage2"]["judged_pairs"] >= 8
    assert stats["requests"] >= 2 * report["stage2"]["judged_pairs"]  # both orders per pair
