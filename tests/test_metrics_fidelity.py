"""PSNR, MS-SSIM and SSIMULACRA 2 on real photos against hand computations and the packages."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import photo_tensor
from PIL import Image

from compressai_vlic.errors import ConfigError
from compressai_vlic.metrics import available_metrics, get_metric
from compressai_vlic.metrics.fidelity import ms_ssim_reduced


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def pair(photos):
    ref = photos["astronaut"][100:356, 120:376]
    return ref, _jpeg(np.ascontiguousarray(ref), 20)


def test_registry_lists_the_full_reference_metrics():
    assert {"psnr", "ms_ssim", "ssimulacra2", "lpips", "dists"} <= set(available_metrics())
    with pytest.raises(ConfigError, match="unknown metric"):
        get_metric("no_such_metric")
    with pytest.raises(ConfigError, match="get_distribution_metric"):
        get_metric("fid")


def test_psnr_matches_hand_computation(pair):
    ref, dist = pair
    mse = np.mean((ref.astype(np.float64) - dist.astype(np.float64)) ** 2)
    expected = 10 * np.log10(255.0**2 / mse)
    got = get_metric("psnr")(photo_tensor(ref), photo_tensor(dist))
    assert got.shape == (1,) and got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_psnr_rounds_to_8_bits_like_compressai(pair):
    ref, _ = pair
    x = photo_tensor(ref)
    # A perturbation below half an 8-bit step disappears after rounding: infinite PSNR.
    assert torch.isinf(get_metric("psnr")(x, x + 0.4 / 255)).all()


def test_ms_ssim_matches_pytorch_msssim(pair):
    from pytorch_msssim import ms_ssim

    ref, dist = pair
    x, y = photo_tensor(ref), photo_tensor(dist)
    x255, y255 = (x * 255).round(), (y * 255).round()  # CompressAI's compute_metrics
    expected = ms_ssim(x255, y255, data_range=255, size_average=False)
    got = get_metric("ms_ssim")(x, y)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert 0.5 < got.item() < 1.0
    # The reduced-scale loop used for small images equals the library at 5 scales.
    assert ms_ssim_reduced(x255, y255, 5).item() == pytest.approx(expected.item(), abs=1e-6)


def test_ms_ssim_small_images(pair):
    ref, dist = pair
    x, y = photo_tensor(ref[:96, :96]), photo_tensor(dist[:96, :96])
    with pytest.warns(UserWarning, match="4 of 5 scales"):
        value = get_metric("ms_ssim")(x, y).item()
    assert 0.0 < value < 1.0
    with pytest.raises(ConfigError, match="160 px"):
        get_metric("ms_ssim", small_image_type="error")(x, y)
    with pytest.raises(ConfigError, match="small_image_type"):
        get_metric("ms_ssim", small_image_type="nope")


def test_ssimulacra2_matches_package_and_orders_quality(pair, tmp_path):
    from ssimulacra2 import compute_ssimulacra2

    ref, dist = pair
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(dist).save(tmp_path / "dist.png")
    expected = compute_ssimulacra2(tmp_path / "ref.png", tmp_path / "dist.png")
    metric = get_metric("ssimulacra2")
    x = photo_tensor(ref)
    better = photo_tensor(_jpeg(np.ascontiguousarray(ref), 90))
    scores = metric(torch.cat([x, x, x]), torch.cat([x, better, photo_tensor(dist)]))
    assert scores[2].item() == pytest.approx(expected, abs=1e-9)
    assert scores[0].item() == pytest.approx(100.0)
    assert scores[0] > scores[1] > scores[2]


def test_shape_mismatch_is_a_clear_error(pair):
    ref, _ = pair
    x = photo_tensor(ref)
    with pytest.raises(ConfigError, match="differ in shape"):
        get_metric("psnr")(x, x[..., :-1])
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        get_metric("psnr")(x[0], x[0])
