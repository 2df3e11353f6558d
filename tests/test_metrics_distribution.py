"""FID / KID / FD-DINO: HiFiC patches, the Frechet distance against a hand computation, and the
real loading paths (a tiny DINOv2 saved by transformers, a random-weights Inception file)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import photo_tensor
from torch import nn

from compressai_vlic.errors import ConfigError, MetricUnavailableError
from compressai_vlic.metrics import (
    FrechetDistance,
    KernelDistance,
    get_distribution_metric,
    hific_patches,
)


class PooledColour(nn.Module):
    """A tiny deterministic feature extractor: 2x2 average-pooled colours (12 features)."""

    num_features = 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


@pytest.fixture(scope="module")
def sets(photos):
    refs = [photo_tensor(photos[n], crop=(256, 256)) for n in ("astronaut", "chelsea", "coffee")]
    gen = torch.Generator().manual_seed(0)
    dists = [(0.6 * r + 0.05 * torch.randn(r.shape, generator=gen)).clamp(0, 1) for r in refs]
    return torch.cat(refs), torch.cat(dists)


def test_hific_patches_grid_plus_shifted_grid():
    image = torch.arange(3 * 512 * 768, dtype=torch.float32).reshape(1, 3, 512, 768)
    patches = hific_patches(image, 256)
    # 2x3 grid + (1x2) grid shifted by 128 px.
    assert patches.shape == (6 + 2, 3, 256, 256)
    assert torch.equal(patches[6], image[0, :, 128:384, 128:384])
    assert hific_patches(image[..., :200, :200], 256).shape[0] == 0


def test_frechet_distance_matches_hand_computation(sets):
    ref, dist = sets
    metric = FrechetDistance(PooledColour(), patch_size=64)
    metric.update(ref, dist)
    got = metric.compute()

    def feats(images):
        patches = torch.cat([hific_patches(img, 64) for img in images])
        return PooledColour()(patches).double().numpy()

    a, b = feats(ref), feats(dist)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean)
    assert metric.num_samples == 3 * (16 + 9)
    assert got == pytest.approx(expected, rel=1e-4)
    assert got > 1e-4


def test_identical_sets_are_near_zero(sets):
    ref, _ = sets
    fd = FrechetDistance(PooledColour(), patch_size=64)
    kd = KernelDistance(PooledColour(), patch_size=64, subsets=10)
    fd.update(ref, ref.clone())
    kd.update(ref, ref.clone())
    assert abs(fd.compute()) < 1e-6
    # The unbiased MMD estimator is O(1/m) on one identical sample set (here about -0.006).
    assert abs(kd.compute()) < 0.01
    fd.reset()
    with pytest.raises(ConfigError, match="at least 2"):
        fd.compute()


def _poly_mmd(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with KID's kernel (x.y / d + 1)^3, by hand."""
    m, d = a.shape

    def k(x, y):
        return (x @ y.T / d + 1.0) ** 3

    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    same = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(same - 2 * kxy.sum() / m**2)


def test_kernel_distance_matches_hand_computation(sets):
    ref, dist = sets
    values = []
    for _ in range(2):
        kd = KernelDistance(PooledColour(), patch_size=64, subsets=3)
        kd.update(ref, dist)
        values.append(kd.compute())
    feats = [
        PooledColour()(torch.cat([hific_patches(i, 64) for i in s])).double().numpy()
        for s in (ref, dist)
    ]
    # subset size = all 75 samples: every subset holds the whole set, so the value is exact.
    assert values[0] == values[1] == pytest.approx(_poly_mmd(*feats), rel=1e-4)  # float32
    assert values[0] > 0.01


def test_fd_dino_loads_a_local_dinov2(tiny_dinov2, sets):
    ref, dist = sets
    same = get_distribution_metric("fd_dino", model_path=tiny_dinov2, resolution=28, patch_size=64)
    assert same.features.num_features == 32
    same.update(ref, ref.clone())
    assert abs(same.compute()) < 1e-4
    diff = get_distribution_metric("fd_dino", model_path=tiny_dinov2, resolution=28, patch_size=64)
    diff.update(ref, dist)
    assert diff.compute() > 1e-3


def test_fd_dino_from_the_weight_cache_and_errors(tiny_dinov2, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("COMPRESSAI_VLIC_WEIGHTS_DIR", str(tmp_path / "cache"))
    with pytest.raises(MetricUnavailableError, match=r"save_pretrained to .*cache/dinov2"):
        get_distribution_metric("fd_dino")
    shutil.copytree(tiny_dinov2, tmp_path / "cache" / "dinov2")
    assert get_distribution_metric("fd_dino", resolution=28).features.num_features == 32
    with pytest.raises(MetricUnavailableError, match="does not exist"):
        get_distribution_metric("fd_dino", model_path=tmp_path / "missing")
    with pytest.raises(ConfigError, match="unknown distribution metric"):
        get_distribution_metric("fvd")


def test_fid_and_kid_without_inception_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("COMPRESSAI_VLIC_WEIGHTS_DIR", str(tmp_path / "cache"))
    for name in ("fid", "kid"):
        with pytest.raises(MetricUnavailableError, match="weights fetch inception"):
            get_distribution_metric(name)


class _Uint8Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = (images * 255).round().to(torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


@pytest.mark.slow
def test_fid_and_kid_equal_torch_fidelity(photos):
    """The real FID Inception (registry weights) gives torch-fidelity's FID and KID."""
    import torch_fidelity

    from compressai_vlic.metrics.weights import locate

    weights = locate("inception").path
    if weights is None:
        pytest.skip(
            "inception weights not installed (run `compressai-vlic weights fetch inception`)"
        )
    # 6 real 96-px crops and their blurred, darkened copies (Inception resizes to 299 px).
    crops = [
        photo_tensor(photos[name], crop=(192, 192))[..., i : i + 96, j : j + 96]
        for name in ("astronaut",)
        for i in (0, 96)
        for j in (0, 48, 96)
    ]
    ref = torch.cat(crops)
    dist = torchvision_blur(ref) * 0.8
    fid = get_distribution_metric("fid", patch_type="whole")
    kid = get_distribution_metric("kid", patch_type="whole", subsets=10)
    for metric in (fid, kid):
        metric.update(ref, dist)
    expected = torch_fidelity.calculate_metrics(
        input1=_Uint8Images(ref),
        input2=_Uint8Images(dist),
        fid=True,
        kid=True,
        kid_subset_size=len(ref),  # the whole set: no random subsets on either side
        kid_subsets=10,
        feature_extractor_weights_path=str(weights),
        cuda=False,
        verbose=False,
        cache=False,
        save_cpu_ram=True,
    )
    got_fid, got_kid = fid.compute(), kid.compute()
    assert got_fid == pytest.approx(expected["frechet_inception_distance"], rel=1e-3)
    assert got_kid == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-3, abs=1e-6)
    assert got_fid > 10 and got_kid > 1e-3


def torchvision_blur(images: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(images, 9, 3.0)
