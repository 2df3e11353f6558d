"""FID / KID / FD-DINO: HiFiC patches, the Frechet distance against a hand computation, and the
real loading paths (a tiny DINOv2 saved by transformers, a random-weights Inception file)."""

from __future__ import annotations

from unittest import mock

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


def test_fd_dino_env_var_and_errors(tiny_dinov2, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSAI_VLIC_DINOV2", str(tiny_dinov2))
    assert get_distribution_metric("fd_dino", resolution=28).features.num_features == 32
    monkeypatch.setenv("COMPRESSAI_VLIC_DINOV2", str(tmp_path / "empty"))
    with pytest.raises(MetricUnavailableError, match="COMPRESSAI_VLIC_DINOV2"):
        get_distribution_metric("fd_dino")
    with pytest.raises(MetricUnavailableError, match="does not exist"):
        get_distribution_metric("fd_dino", model_path=tmp_path / "missing")
    with pytest.raises(ConfigError, match="unknown distribution metric"):
        get_distribution_metric("fvd")


def test_fid_and_kid_without_inception_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("COMPRESSAI_VLIC_INCEPTION_WEIGHTS", raising=False)
    for name in ("fid", "kid"):
        with pytest.raises(MetricUnavailableError, match="COMPRESSAI_VLIC_INCEPTION_WEIGHTS"):
            get_distribution_metric(name)


@pytest.mark.slow
def test_fid_loads_a_local_inception_file(monkeypatch, tmp_path, sets):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # Fabricate a random-weights file with the real architecture (the real one is a download).
    with (
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"),
        mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url"),
    ):
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():  # default init makes activations vanish over 90 layers
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    monkeypatch.setenv("COMPRESSAI_VLIC_INCEPTION_WEIGHTS", str(weights))
    ref, dist = sets
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=AssertionError("download")):
        fid = get_distribution_metric("fid", patch_type="whole")
    assert fid.features.num_features == 2048 and fid.features.weights_path == weights
    # Inception resizes every sample to 299 px (slow on CPU): two small whole images per set.
    ref, dist = ref[:2, :, :64, :64], dist[:2, :, :64, :64]
    fid.update(ref, ref.clone())
    same = fid.compute()
    fid.reset()
    fid.update(ref, dist)
    different = fid.compute()
    assert abs(same) < 1e-3 * different
