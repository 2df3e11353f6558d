"""The comparison runner and `compressai-vlic compare` on real photos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from compressai_vlic.evaluation import CompareSettings, make_codec, run_comparison
from compressai_vlic.evaluation.plots import plot_crop_grid, plot_rate_quality

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def _no_weights(monkeypatch, tmp_path):
    """No metric backbones anywhere (empty weight cache and torch hub cache)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("COMPRESSAI_VLIC_WEIGHTS_DIR", str(tmp_path / "weights"))


def _settings(tiny_dinov2, **kw) -> CompareSettings:
    base = dict(
        metrics=["psnr", "ms_ssim", "ssimulacra2", "lpips"],
        distribution_metrics=["fid", "fd_dino"],
        metric_options={"fd_dino": {"model_path": str(tiny_dinov2), "resolution": 28}},
        patch_size=64,
        crop=192,
        progress=False,
    )
    return CompareSettings(**{**base, **kw})


@pytest.mark.usefixtures("_no_weights")
def test_runner_rows_json_skips_and_cache(photo_folder, tmp_path, tiny_dinov2):
    images = sorted(photo_folder.glob("*.png"))
    out = tmp_path / "out"
    notices: list[str] = []
    codecs = [make_codec("jpeg@0.5,1.0"), make_codec("webp@0.5,1.0")]
    settings = _settings(tiny_dinov2, judge_type="psnr", reference_codec="jpeg")
    result = run_comparison(images, codecs, out, settings, notify=notices.append)

    # Per-image rows: 4 photos x 2 codecs x 2 rate points, real bytes, all metrics finite.
    assert len(result.rows) == 16
    for row in result.rows:
        assert row.bpp == pytest.approx(row.num_bytes * 8 / (192 * 192))
        assert set(row.metrics) == {"psnr", "ms_ssim", "ssimulacra2"}
        assert all(math.isfinite(v) for v in row.metrics.values())
    assert len((out / "rows.jsonl").read_text().splitlines()) == 16

    # Weights that are missing: one notice each, absent from every table (never 0 or NaN).
    assert sum("metric lpips skipped" in n for n in notices) == 1
    assert sum("metric fid skipped" in n for n in notices) == 1
    assert set(result.skipped) == {"lpips", "fid"}
    table = (out / "table.md").read_text()
    assert "lpips" not in table and "nan" not in table.lower() and "fd_dino" in table

    # CompressAI-format JSON, readable by CompressAI's own plot script.
    data = json.loads((out / "json" / "webp.json").read_text())
    assert set(data) == {"name", "description", "results"}
    assert data["results"]["bpp"] == sorted(data["results"]["bpp"])
    assert {"bpp", "psnr-rgb", "ms-ssim-rgb", "ssimulacra2", "fd_dino", "judge_win_rate"} == set(
        data["results"]
    )
    from compressai.utils.plot.__main__ import parse_json_file

    parsed = parse_json_file(out / "json" / "webp.json", "psnr")
    assert parsed["xs"] == data["results"]["bpp"]

    # Judge win-rate of WebP against JPEG at the closest bpp: PSNR judge prefers WebP.
    webp = result.curve("webp")
    for point in webp:
        assert point.judge is not None and point.judge.reference.startswith("jpeg@")
        assert point.judge.wins + point.judge.losses + point.judge.abstains == 4
        assert point.judge.win_rate > 0.5
    assert all(p.judge is None for p in result.curve("jpeg"))
    assert "BD-rate vs jpeg" in (out / "bd.md").read_text()

    # Adding one codec recomputes only that codec; old rows come from the cache untouched.
    cached = next((out / "cache").rglob("*.json"))
    before = cached.stat().st_mtime_ns
    notices.clear()
    codecs.append(make_codec("jpeg-q30=jpeg@q30"))
    again = run_comparison(images, codecs, out, settings, notify=notices.append)
    assert any("4 of 20 codec runs computed, 16 from cache" in n for n in notices)
    assert cached.stat().st_mtime_ns == before
    old = {(r.codec, r.rate_point, r.image): r for r in result.rows}
    for row in again.rows:
        if row.codec != "jpeg-q30":
            assert row == old[(row.codec, row.rate_point, row.image)]

    # Plots from the same result.
    assert plot_rate_quality(again, tmp_path / "rq.png").stat().st_size > 10_000
    assert plot_crop_grid(again, tmp_path / "grid.png", crop=64).stat().st_size > 10_000


@pytest.mark.slow
def test_compare_reports_lpips_dists_fid_kid_with_the_installed_weights(photo_folder, tmp_path):
    from compressai_vlic.metrics.weights import list_weights

    missing = [w.spec.name for w in list_weights(check=False) if w.path is None]
    if missing:
        pytest.skip(f"weights not installed: {missing} (run `compressai-vlic weights fetch`)")
    notices: list[str] = []
    result = run_comparison(
        sorted(photo_folder.glob("*.png"))[:1],
        [make_codec("jpeg@q15,q90")],
        tmp_path / "out",
        CompareSettings(crop=96, patch_size=64, distribution_metrics=["fid", "kid"],
                        progress=False),  # default full-reference metrics; 2 patches each
        notify=notices.append,
    )  # fmt: skip
    assert not result.skipped, notices
    low, high = sorted(result.points, key=lambda p: p.bpp)
    for name in ("lpips", "dists"):
        assert 0 < high.metrics[name] < low.metrics[name] < 1
    assert 0 < high.distribution["fid"] < low.distribution["fid"]
    assert math.isfinite(high.distribution["kid"]) and math.isfinite(low.distribution["kid"])
    table = (tmp_path / "out" / "table.md").read_text()
    assert all(name in table for name in ("lpips", "dists", "fid", "kid"))


def test_fd_dino_is_near_zero_for_a_lossless_codec(photo_folder, tmp_path, tiny_dinov2):
    result = run_comparison(
        sorted(photo_folder.glob("*.png"))[:2],
        [make_codec("webp@q100")],
        tmp_path / "out",
        _settings(tiny_dinov2, metrics=["psnr"], distribution_metrics=["fd_dino"]),
        notify=lambda _text: None,
    )
    (point,) = result.points
    assert point.metrics["psnr"] > 40
    assert 0 <= point.distribution["fd_dino"] < 1e-2


@pytest.mark.usefixtures("_no_weights")
def test_cli_compare(photo_folder, tmp_path, capsys):
    from compressai_vlic.cli.main import main

    out = tmp_path / "cli"
    argv = [
        "compare", str(photo_folder),
        "--codec", "jpeg", "--codec", "webp", "--bpp", "0.4", "0.8",
        "--metrics", "psnr", "ssimulacra2", "dists", "--distribution-metrics", "kid",
        "--crop", "128", "--reference-codec", "jpeg", "--judge-type", "ssimulacra2",
        "--no-progress", "-o", str(out),
    ]  # fmt: skip
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "metric dists skipped" in captured.err and "weights fetch vgg16" in captured.err
    assert "| webp | 0.4 |" in captured.out
    for name in ("rate_quality.png", "crops.png", "json/jpeg.json", "json/webp.json", "rows.csv"):
        assert (out / name).is_file(), name


def test_cli_errors_are_clear(photo_folder, tmp_path):
    from compressai_vlic.cli.main import main

    base = ["compare", str(photo_folder), "--no-progress", "-o", str(tmp_path / "x")]
    assert main([*base, "--codec", "gif"]) == 2
    assert main([*base, "--judge-type", "psnr"]) == 2  # no reference codec
    assert main([*base, "--reference-codec", "avif9"]) == 2


def test_vlic_next_to_jpeg(photo_folder, tmp_path):
    images = sorted(photo_folder.glob("*.png"))[:2]
    result = run_comparison(
        images,
        [make_codec("vlic@test"), make_codec("jpeg@q10")],
        tmp_path / "out",
        CompareSettings(
            metrics=["psnr", "ssimulacra2"],
            distribution_metrics=[],
            crop=64,
            progress=False,
            judge_type="ssimulacra2",
            reference_codec="jpeg",
        ),
        notify=lambda _text: None,
    )
    (vlic,) = result.curve("vlic-untrained")
    assert vlic.num_images == 2 and vlic.bpp > 0
    assert vlic.judge is not None and vlic.judge.reference == "jpeg@q10"
    assert json.loads((tmp_path / "out" / "json" / "vlic-untrained.json").read_text())["name"] == (
        "vlic-untrained"
    )


def test_one_bad_image_is_skipped_and_the_run_goes_on(photo_folder, tmp_path, capsys):
    import shutil

    from PIL import Image

    from compressai_vlic.cli.main import main

    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(photo_folder.glob("*.png"))[:2]:
        shutil.copy(path, folder / path.name)
    Image.open(photo_folder / "coffee.png").crop((0, 0, 100, 100)).save(folder / "small.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "out"
    argv = [
        "compare", str(folder), "--codec", "jpeg@q50", "--metrics", "psnr", "ms_ssim",
        "--metric-option", "ms_ssim:small_image_type=error", "--distribution-metrics",
        "--plot-type", "none", "--no-progress", "-o", str(out),
    ]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "2 image(s) skipped (left out of every curve)" in err
    assert "broken.png: " in err and "not a readable image" in err
    assert "small.png: jpeg@q50: ms_ssim: image (100, 100) is too small" in err
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in rows) == ["astronaut.png", "chelsea.png"]
    skipped = json.loads((out / "skipped.json").read_text())
    assert set(skipped) == {"image:broken.png", "image:small.png"}
    (point,) = json.loads((out / "json" / "jpeg.json").read_text())["results"]["bpp"]
    assert point > 0
