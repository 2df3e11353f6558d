"""The trained "tiny" model ships inside the package and loads offline, checked by its card."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic import pretrained
from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.zoo import quality_config, quality_key, vlic


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_card_matches_the_file_and_the_zoo_config():
    shipped = pretrained.shipped_weights("tiny")
    assert shipped.path.stat().st_size <= 20 * 2**20
    assert shipped.config_hash == quality_config("tiny").config_hash().hex()
    assert "tiny" in pretrained.shipped_qualities()
    assert quality_key(0) == "tiny" and quality_config(0) == quality_config("tiny")


def test_vlic_tiny_pretrained_codes_a_held_out_photo_offline(offline, photos):
    net = vlic("tiny", pretrained=True)
    assert not net.training
    same = vlic(0, pretrained=True)
    for (k, a), b in zip(net.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    x = photo_tensor(photos["chelsea"], crop=(96, 128))  # chelsea is never trained on
    out = net.compress(x)
    x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
    again = net.decompress(out["strings"], out["shape"])["x_hat"]
    assert torch.equal(x_hat, again)
    bpp = sum(len(s[0]) for s in out["strings"]) * 8 / (96 * 128)
    mse = torch.mean((x_hat.clamp(0, 1) - x) ** 2)
    psnr = float(10 * torch.log10(1 / mse))
    assert 0.02 < bpp < 0.5
    assert psnr > 20  # random weights: about 10 dB
    random = vlic("tiny")
    noise = random.decompress(random.compress(x)["strings"], out["shape"])["x_hat"]
    assert psnr > float(10 * torch.log10(1 / torch.mean((noise.clamp(0, 1) - x) ** 2))) + 5


def test_sampler_overrides_keep_the_shipped_weights_but_architecture_changes_fail():
    assert vlic("tiny", pretrained=True, num_steps=2).config.num_steps == 2
    with pytest.raises(CheckpointError, match="only sampler settings"):
        vlic("tiny", pretrained=True, decoder_depth=2)


def test_altered_or_missing_weights_are_refused(tmp_path, monkeypatch):
    card = json.loads((pretrained.FOLDER / pretrained.CARDS["tiny"]).read_text())
    original = (pretrained.FOLDER / card["file"]).read_bytes()
    shutil.copy(pretrained.FOLDER / pretrained.CARDS["tiny"], tmp_path)
    monkeypatch.setattr(pretrained, "FOLDER", tmp_path)
    with pytest.raises(CheckpointError, match="is missing"):
        pretrained.shipped_weights("tiny")
    blob = bytearray(original)
    blob[len(blob) // 2] ^= 1
    (tmp_path / card["file"]).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        pretrained.shipped_weights("tiny")
    with pytest.raises(CheckpointError, match="sha256"):
        vlic("tiny", pretrained=True)
    with pytest.raises(CheckpointError, match="no weights ship"):
        pretrained.shipped_weights("1")


def test_unknown_quality_names_the_choices():
    with pytest.raises(ConfigError, match="tiny"):
        quality_config("huge")
