"""VLIC on the Hugging Face Hub's file layout: save_pretrained -> from_pretrained, offline.

No network: the Hub's offline mode is on and sockets refuse to connect; a "Hub id" is served from
a local Hub cache laid out as huggingface_hub writes it.
"""

from __future__ import annotations

import json
import socket

import pytest
import safetensors.torch
import torch
from conftest import photo_tensor

from compressai_vlic.errors import CheckpointError
from compressai_vlic.models import VLIC
from compressai_vlic.zoo import WEIGHTS_ENV, vlic

SEEDS = (0, 7)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    def refuse(*args, **kwargs):
        raise OSError("tests never use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net() -> VLIC:
    torch.manual_seed(3)
    return vlic("test").eval()


@pytest.fixture(scope="module")
def photo(photos) -> torch.Tensor:
    return photo_tensor(photos["coffee"], crop=(48, 72))


def _coded(model: VLIC, x: torch.Tensor) -> list[tuple[bytes, torch.Tensor]]:
    out = []
    for seed in SEEDS:
        coded = model.compress(x, seed=seed)
        data = coded["strings"][0][0]
        out.append((data, model.decompress([[data]], coded["shape"])["x_hat"]))
    return out


def _assert_same_codec(a: VLIC, b: VLIC, x: torch.Tensor) -> None:
    for (bytes_a, image_a), (bytes_b, image_b) in zip(_coded(a, x), _coded(b, x)):
        assert bytes_a == bytes_b
        assert torch.equal(image_a, image_b)
    assert _coded(a, x)[0][0] != _coded(a, x)[1][0]  # the seed is in the bytes: a real check


def test_save_pretrained_round_trips_bit_identical_streams_and_images(net, photo, tmp_path):
    folder = tmp_path / "vlic-test"
    net.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert json.loads((folder / "config.json").read_text()) == json.loads(net.config.to_json())
    card = (folder / "README.md").read_text()
    assert "library_name: compressai-vlic" in card and "# vlic-test" in card
    assert "(8, 5, 5)" in card and "0.119 bpp" in card

    loaded = VLIC.from_pretrained(folder)
    assert loaded.config == net.config and not loaded.training
    _assert_same_codec(net, loaded, photo)
    # CompressAI's state-dict path reads the same file.
    state = safetensors.torch.load_file(folder / "model.safetensors")
    _assert_same_codec(net, VLIC.from_state_dict(state).eval(), photo)


def test_from_pretrained_without_config_json_uses_the_weights_own_config(net, photo, tmp_path):
    net.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    loaded = VLIC.from_pretrained(tmp_path)
    assert loaded.config == net.config
    _assert_same_codec(net, loaded, photo)


def test_from_pretrained_refuses_other_architectures_and_missing_weights(net, tmp_path):
    net.save_pretrained(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="does not match"):
        VLIC.from_pretrained(tmp_path / "ok", fsq_levels=(5, 5, 5))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(net.config.to_json())
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors"):
        VLIC.from_pretrained(tmp_path / "empty")
    # sampler defaults may differ from the saved ones (they travel in every stream)
    assert VLIC.from_pretrained(tmp_path / "ok", num_steps=2).config.num_steps == 2


def _fake_hub_cache(net: VLIC, repo_id: str) -> None:
    """The cache layout hf_hub_download reads in offline mode (refs/main -> snapshots/<commit>)."""
    from pathlib import Path

    import huggingface_hub.constants as hub_constants

    repo = Path(hub_constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    net.save_pretrained(repo / "snapshots" / commit)


def test_zoo_accepts_a_folder_a_hub_id_and_todays_file(net, photo, tmp_path, monkeypatch):
    folder = tmp_path / "saved"
    net.save_pretrained(folder)
    _assert_same_codec(net, vlic("test", pretrained=str(folder)), photo)
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    _assert_same_codec(net, vlic("test", pretrained=True), photo)

    _fake_hub_cache(net, "someone/vlic-test")
    from_hub = VLIC.from_pretrained("someone/vlic-test")
    _assert_same_codec(net, from_hub, photo)
    _assert_same_codec(net, vlic("test", pretrained="someone/vlic-test"), photo)
    with pytest.raises(CheckpointError, match=r"cannot get model\.safetensors of Hub model"):
        vlic("test", pretrained="someone/not-cached")
    with pytest.raises(CheckpointError, match="does not match"):
        vlic("test", pretrained=str(folder), fsq_levels=(5, 5, 5))
