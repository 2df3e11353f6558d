"""`compressai-vlic demo`: the whole path of the demo (smoke preset), where stage 1 starts, the
report's content, and the pieces it is built from (shipped-weights init, JPEG/WebP at a rate)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

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
    for key, value in env_overrides.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch")]
    levels = [log.level for log in loggers]
    try:
        rc = main(["demo", "--preset", "smoke", "-o", str(out), *extra_args])
    finally:  # the demo sets both for its own run
        torch.set_num_threads(threads)
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, out


def _demo_args(*argv: str) -> argparse.Namespace:
    from compressai_vlic.cli import demo as demo_cli

    parser = argparse.ArgumentParser()
    demo_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.slow
def test_demo_smoke_writes_a_complete_report(tmp_path, monkeypatch, capsys):
    rc, stdout, stderr, out = _run_smoke_demo(
        tmp_path, monkeypatch, capsys, {}, ("--posttrain-selection", "last")
    )
    assert rc == 0, stderr[-3000:]
    assert f"report written to {out}" in stdout
    assert "cannot be cached" not in stderr  # no cache was asked for: nothing to say about one
    report = json.loads((out / "report.json").read_text())
    # stage 1 fine-tuned the shipped weights, never on the held-out photos
    assert report["init_type"] == "shipped" and report["stage1"]["init_from"] == "zoo:tiny"
    held_out = ("chelsea", "flower", "camera", "moon", "grass", "gravel")
    assert report["stage1"]["held_out_photos"] == list(held_out)
    assert not set(held_out) & set(report["stage1"]["train_photos"])
    # CompressAI's literal eval_model on both codecs (before / after post-training)
    results = report["compressai_eval"]["results"]
    assert len(results["bpp"]) == 2 and all(b > 0 for b in results["bpp"])
    assert report["compressai_eval"]["command"].startswith("python -m compressai")
    assert report["judge"]["judge_type"] == "ssimulacra2"
    assert report["judge"]["judge_compose"] == {"unanimous_with": ["lpips"]}
    assert report["stage2"]["judged_pairs"] >= 8
    # stage 2 froze the encoder (tiny_stage2.yaml): same tokens, so the refit is skipped
    assert (
        report["prior_refit"]["steps"] == 0
        and "froze the encoder" in report["prior_refit"]["skipped"]
    )
    # compare: both codecs and JPEG / WebP at the post-trained codec's rate, image by image
    codecs = {p["codec"] for p in report["compare"]["points"]}
    assert {"vlic-before", "vlic-after", "jpeg", "webp", "jpeg-at-rate", "webp-at-rate"} <= codecs
    assert {r["image"] for r in report["per_image"]} == {f"{n}.png" for n in held_out}
    for row in report["per_image"]:
        for codec in ("jpeg", "webp"):
            assert row[f"{codec}_bpp"] >= row["after_bpp"], (codec, row)
            assert row[f"{codec}_setting"].startswith("q=")
        for key in ("before", "after", "jpeg", "webp"):
            assert row[f"{key}_lpips"] is not None and row[f"{key}_psnr"] > 0
    # after vs before: the training judge and an independent one, on 128-px held-out crops,
    # win rates with intervals over photos
    duel = report["summary"]["judge_2afc_crops"]
    assert duel["crop_size"] == 128 and duel["photos"] == list(held_out)
    assert duel["crops"] == len(held_out) and duel["questions"] == 2 * duel["crops"]
    assert set(duel["judges"]) == {"training judge", "independent judge (dists)"}
    for j in duel["judges"].values():
        assert duel["questions"] == j["after"] + j["before"] + j["abstain"] + j["failed"]
        if j["after_win_rate"] is not None:
            low, high = j["after_win_rate_ci95"]
            assert 0 <= low <= j["after_win_rate"] <= high <= 1
    assert "over photos" in duel["ci_method"]
    # every metric after - before with its role in training and an interval over photos
    diffs = report["summary"]["after_minus_before"]
    assert set(diffs) == {"bpp", "psnr", "ssimulacra2", "lpips"}  # the smoke preset's metrics
    assert diffs["ssimulacra2"]["role"] == "judge"
    assert diffs["lpips"]["role"] == "unanimity partner, loss term"
    assert diffs["psnr"]["role"] == diffs["bpp"]["role"] == "none"
    for v in diffs.values():
        assert v["photos"] == len(held_out)
        assert v["delta"] == pytest.approx(v["after"] - v["before"])
        assert v["ci95"][0] <= v["delta"] <= v["ci95"][1]
    assert "selection" not in report["stage2"]  # --posttrain-selection last
    # the pictures: five panels per held-out photo, the plot, the training curves
    for row in report["per_image"]:
        with Image.open(out / "side_by_side" / row["image"]) as img:
            assert img.size[0] == 5 * row["size"][1] + 4 * 4  # original, before, after, JPEG, WebP
    for name in ("rate_quality.png", "training_curves.png"):
        assert (out / name).stat().st_size > 1000, name
    md = (out / "report.md").read_text()
    for text in ("95% CI", "JPEG", "WebP", "| ssimulacra2 | judge |", "independent judge",
                 "eval_model", "side_by_side/"):  # fmt: skip
        assert text in md, text
    assert "win rate" in stdout and "after - before post-training" in stdout


@pytest.mark.slow
def test_demo_stage1_starts_from_the_shipped_weights_or_from_scratch(tmp_path):
    """The default fine-tune stays near the shipped weights; --from-scratch starts elsewhere."""
    from compressai_vlic_lightning import demo
    from compressai_vlic_lightning.common import read_codec_state_dict

    shipped = read_codec_state_dict("zoo:tiny")
    distance = {}
    for flag in ((), ("--from-scratch",)):
        args = _demo_args("--preset", "smoke", "-o", str(tmp_path / "-".join(flag or ["s"])), *flag)
        threads = torch.get_num_threads()
        try:
            run = demo.prepare(args)
            ckpt = demo.finetune(run)
        finally:
            torch.set_num_threads(threads)
        state = read_codec_state_dict(ckpt, "raw")
        keys = [k for k, v in shipped.items() if v.is_floating_point()]
        diff = sum(float((state[k].float() - shipped[k].float()).norm() ** 2) for k in keys)
        norm = sum(float(shipped[k].float().norm() ** 2) for k in keys)
        distance[run.plan.init_type] = (diff / norm) ** 0.5
        assert run.report.stage1["init_from"] == ("zoo:tiny" if not flag else None)
        assert run.report.stage1["steps"] == run.plan.stage1_steps == 6
    assert distance["shipped"] < 0.05 < distance["scratch"], distance


def test_demo_init_options():
    assert _demo_args().init_type == "shipped"
    assert _demo_args("--from-scratch").init_type == "scratch"
    assert _demo_args("--init-type", "scratch").init_type == "scratch"
    with pytest.raises(SystemExit):
        _demo_args("--init-type", "imagenet")
    from compressai_vlic_lightning.demo import DemoConfigs, DemoPlan

    scratch = DemoConfigs.load("scratch")
    assert scratch.stage1["model"]["init_args"]["weights"] is None
    assert DemoConfigs.load("shipped").stage1["model"]["init_args"]["weights"] == "zoo:tiny"
    full, smoke = DemoPlan.preset("full"), DemoPlan.preset("smoke")
    assert full.stage1_steps > smoke.stage1_steps and full.refit_steps > smoke.refit_steps
    assert DemoPlan.preset("full", scratch).stage1_steps > full.stage1_steps


def test_zoo_init_reads_the_shipped_weights():
    from compressai_vlic_lightning.common import read_codec_state_dict

    from compressai_vlic.errors import CheckpointError
    from compressai_vlic.zoo import vlic

    state = read_codec_state_dict("zoo:tiny")
    expected = vlic("tiny", pretrained=True).state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    assert read_codec_state_dict("zoo:0").keys() == state.keys()  # CompressAI's integer alias
    with pytest.raises(CheckpointError, match=r"no weights ship with the package.*zoo:tiny"):
        read_codec_state_dict("zoo:test")


@pytest.mark.slow
def test_demo_uses_a_configured_vlm_endpoint(tmp_path, monkeypatch, capsys):
    """With an endpoint configured, post-training asks the VLM over real HTTP."""
    from compressai_vlic.testing.loopback_server import run_server

    with run_server() as server:
        rc, _stdout, stderr, out = _run_smoke_demo(
            tmp_path,
            monkeypatch,
            capsys,
            {},
            (
                *("--judge-base-url", server.base_url, "--judge-model", "loopback-vlm"),
                *("--judge-api-key-env", "", "--refit-type", "always"),
            ),
        )
        stats = server.stats()
    assert rc == 0, stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["judge"]["judge_type"] == "openai"
    assert report["judge"]["judge_kwargs"]["model"] == "loopback-vlm"
    assert report["stage2"]["judged_pairs"] >= 8
    assert stats["requests"] >= 2 * report["stage2"]["judged_pairs"]  # both orders per pair
    assert (
        report["prior_refit"]["steps"] == 4
    )  # --refit-type always: refit despite the frozen encoder
