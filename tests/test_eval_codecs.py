"""Codecs under comparison: matched rates with real bytes, CompressAI checkpoints, VLIC."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import photo_tensor
from PIL import Image

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.evaluation.codecs import (
    CompressAICodec,
    PillowCodec,
    make_codec,
    pillow_format_available,
)

FORMATS = ["jpeg", "webp"] + (["avif"] if pillow_format_available("avif") else [])


@pytest.fixture(scope="module")
def crops(photos):
    return {
        name: photo_tensor(photos[name], crop=(256, 256))[0] for name in ("astronaut", "coffee")
    }


@pytest.mark.parametrize("format_type", FORMATS)
@pytest.mark.parametrize("target", [0.5, 1.0])
def test_matched_rate_hits_the_requested_bpp(format_type, target, crops):
    codec = make_codec(f"{format_type}@{target}")
    for image in crops.values():
        coded = codec.code(image, str(target))
        assert coded.target_bpp == target
        assert abs(coded.bpp - target) <= 0.1 * target, (format_type, coded.setting, coded.bpp)
        # The chosen quality is the best integer setting: its neighbours are not closer.
        arr = image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        quality = int(coded.setting.removeprefix("q="))
        for q in (quality - 1, quality + 1):
            lo, hi = codec_quality_range(codec)
            if lo <= q <= hi:
                other = len(codec.encode(arr, q)) * 8 / (256 * 256)
                assert abs(coded.bpp - target) <= abs(other - target) + 1e-12


def codec_quality_range(codec: PillowCodec) -> tuple[int, int]:
    from compressai_vlic.evaluation.codecs import PILLOW_QUALITY_RANGE

    return PILLOW_QUALITY_RANGE[codec.format_type]


def test_bytes_are_real_files_that_pillow_decodes(crops):
    image = crops["coffee"]
    codec = make_codec("jpeg@q50")
    coded = codec.code(image, "q50")
    arr = image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=50)
    assert coded.num_bytes == len(buf.getvalue())
    assert coded.bpp == pytest.approx(len(buf.getvalue()) * 8 / (256 * 256))
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert torch.equal(
        coded.reconstruction, torch.from_numpy(decoded.copy()).permute(2, 0, 1) / 255.0
    )
    assert coded.target_bpp is None


def test_unreachable_rate_returns_the_closest_setting(crops):
    coded = make_codec("webp@0.01").code(crops["astronaut"], "0.01")
    assert coded.setting == "q=0" and coded.bpp > 0.01


def test_spec_parsing_and_errors():
    assert make_codec("jpeg", default_bpps=[0.3, 0.6]).rate_points == ["0.3", "0.6"]
    assert make_codec("webp@q20,0.4").rate_points == ["q20", "0.4"]
    named = make_codec("low-jpeg=jpeg@0.1")
    assert named.name == "low-jpeg" and named.rate_points == ["0.1"]
    for bad in ("jpeg@fast", "jpeg@-1", "gif", "compressai", "vlic-ckpt:", "compressai-ckpt:x"):
        with pytest.raises(ConfigError):
            make_codec(bad)


def test_compressai_zoo_without_local_weights_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"compressai\.s3\.amazonaws\.com"):
        make_codec("compressai:bmshj2018-factorized@1")
    with pytest.raises(ConfigError, match="unknown CompressAI architecture"):
        make_codec("compressai:nope@1")


def test_compressai_checkpoint_codec_round_trips_real_bytes(tmp_path, crops):
    from compressai.zoo.image import cfgs, model_architectures

    torch.manual_seed(0)
    net = model_architectures["bmshj2018-factorized"](*cfgs["bmshj2018-factorized"][1])
    path = tmp_path / "factorized.pth.tar"
    torch.save(net.state_dict(), path)
    codec = make_codec(f"compressai-ckpt:bmshj2018-factorized:{path}")
    assert isinstance(codec, CompressAICodec) and codec.rate_points == ["factorized"]
    image = crops["coffee"][:, :100, :120]  # not a multiple of 64: padded and cropped back
    coded = codec.code(image, codec.rate_points[0])
    assert coded.reconstruction.shape == image.shape
    assert coded.num_bytes > 0 and coded.bpp == pytest.approx(coded.num_bytes * 8 / (100 * 120))
    bad = tmp_path / "bad.pth.tar"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError):
        make_codec(f"compressai-ckpt:bmshj2018-factorized:{bad}").code(image, "bad")


def test_vlic_codec_counts_its_container_bytes(crops):
    codec = make_codec("vlic@test")
    assert codec.name == "vlic-untrained"
    image = crops["astronaut"][:, :64, :64]
    first = codec.code(image, "test")
    again = make_codec("vlic@test").code(image, "test")
    assert first.reconstruction.shape == image.shape
    assert first.bpp == pytest.approx(first.num_bytes * 8 / (64 * 64))
    # Random weights are seeded: the same spec gives the same stream and image (cache-safe).
    assert first.num_bytes == again.num_bytes
    assert torch.equal(first.reconstruction, again.reconstruction)


def test_vlic_codec_spec_takes_any_weights_spec():
    new, old = make_codec("vlic:random:test"), make_codec("vlic@test")
    assert new.rate_points == old.rate_points == ["test"] and new.cache_key == old.cache_key
    assert new.name == old.name == "vlic-untrained"
    tiny = make_codec("vlic:tiny")
    assert tiny.name == "vlic" and tiny.rate_points == ["tiny"]
    assert make_codec("vlic-pretrained@tiny").cache_key == tiny.cache_key
