"""LPIPS and DISTS: never download; clear error without weights; real loading from a local file.

No ImageNet weights exist offline, so the tests save torchvision backbones with random weights to
temporary files and go through the same loading path a user's downloaded file takes.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torchvision
from conftest import photo_tensor

from compressai_vlic.errors import MetricUnavailableError
from compressai_vlic.metrics import get_metric


@pytest.fixture(autouse=True)
def _no_weights_anywhere(monkeypatch, tmp_path):
    """An empty torch hub cache, no env vars, and any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("COMPRESSAI_VLIC_LPIPS_WEIGHTS", "COMPRESSAI_VLIC_DISTS_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=AssertionError("download")):
        yield


def _save_features(arch: str, path):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    torch.save({f"features.{k}": v for k, v in model.features.state_dict().items()}, path)
    return model.features


@pytest.fixture(scope="module")
def images(photos):
    ref = photo_tensor(photos["coffee"], crop=(96, 128))
    noisy = (ref + 0.08 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))).clamp(
        0, 1
    )
    return ref, noisy


@pytest.mark.parametrize(("name", "var"), [("lpips", "LPIPS"), ("dists", "DISTS")])
def test_missing_weights_give_one_clear_error(name, var):
    with pytest.raises(MetricUnavailableError, match=f"COMPRESSAI_VLIC_{var}_WEIGHTS") as info:
        get_metric(name)
    assert "download.pytorch.org" in str(info.value)


def test_nonexistent_or_bad_weight_files_are_refused(tmp_path, monkeypatch):
    with pytest.raises(MetricUnavailableError, match="does not exist"):
        get_metric("lpips", weights=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    monkeypatch.setenv("COMPRESSAI_VLIC_LPIPS_WEIGHTS", str(bad))
    with pytest.raises(
        MetricUnavailableError, match=r"lpips: .*bad\.pth: not a PyTorch checkpoint"
    ):
        get_metric("lpips")
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(MetricUnavailableError, match="alexnet"):
        get_metric("lpips", weights=wrong)


def test_lpips_uses_the_local_backbone(tmp_path, monkeypatch, images):
    features = _save_features("alexnet", tmp_path / "alexnet.pth")
    monkeypatch.setenv("COMPRESSAI_VLIC_LPIPS_WEIGHTS", str(tmp_path / "alexnet.pth"))
    metric = get_metric("lpips")
    assert not metric.higher_is_better
    assert torch.equal(metric.net.net.slice1[0].weight, features[0].weight)
    ref, noisy = images
    values = metric(torch.cat([ref, ref]), torch.cat([ref, noisy]))
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(0.0, abs=1e-6)
    assert values[1].item() > 1e-4


def test_lpips_from_the_torch_hub_cache(tmp_path, images):
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    _save_features("alexnet", cache / "alexnet-owt-7be5be79.pth")
    ref, noisy = images
    assert get_metric("lpips")(ref, noisy).item() > 0


def test_dists_uses_the_local_backbone(tmp_path, images):
    features = _save_features("vgg16", tmp_path / "vgg16.pth")
    metric = get_metric("dists", weights=tmp_path / "vgg16.pth")
    assert torch.equal(metric.net.stage1[0].weight, features[0].weight)
    ref, noisy = images
    values = metric(torch.cat([ref, ref]), torch.cat([ref, noisy]))
    assert values[0].item() == pytest.approx(0.0, abs=1e-5)
    assert values[1].item() > values[0].item()
