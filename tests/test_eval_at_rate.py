"""JPEG / WebP at the lowest quality whose real file reaches another codec's rate, per image."""

from __future__ import annotations

import pytest
import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.evaluation.at_rate import AtRateCodec, image_key, lowest_quality_at_rate
from compressai_vlic.evaluation.codecs import PILLOW_QUALITY_RANGE, PillowCodec
from compressai_vlic.image_io import to_uint8_array


def _photo() -> torch.Tensor:
    from compressai_vlic_lightning.data import bundled_photos

    return bundled_photos(("chelsea",))["chelsea"][:, :128, :160].contiguous()


@pytest.mark.parametrize("format_type", ["jpeg", "webp"])
def test_lowest_quality_reaching_the_rate(format_type):
    image = _photo()
    arr = to_uint8_array(image)
    pixels = arr.shape[0] * arr.shape[1]
    base = PillowCodec(format_type, ["q50"])
    bpp = {q: len(base.encode(arr, q)) * 8 / pixels for q in (10, 40)}
    target = (bpp[10] + bpp[40]) / 2
    quality, data = lowest_quality_at_rate(base, arr, target)
    assert len(data) * 8 / pixels >= target
    assert 10 < quality <= 40
    lowest = PILLOW_QUALITY_RANGE[format_type][0]
    for lower in range(lowest, quality):  # every lower quality stays below the target
        assert len(base.encode(arr, lower)) * 8 / pixels < target, lower

    codec = AtRateCodec(format_type, {image_key(image): target})
    coded = codec.code(image, codec.rate_points[0])
    assert coded.setting == f"q={quality}" and coded.num_bytes == len(data)
    assert coded.reconstruction.shape == image.shape


def test_at_rate_codec_below_the_lowest_quality_and_unknown_images():
    image = _photo()
    codec = AtRateCodec("jpeg", {image_key(image): 1e-4})  # less than any JPEG file
    assert codec.code(image, "matched").setting == "q=1"
    with pytest.raises(ConfigError, match="no target bpp"):
        codec.code(image.flip(-1), "matched")
    with pytest.raises(ConfigError, match="positive"):
        AtRateCodec("webp", {"x": 0.0})
    other = AtRateCodec("jpeg", {image_key(image): 0.5})
    assert other.cache_key != codec.cache_key  # targets are part of the cached identity
