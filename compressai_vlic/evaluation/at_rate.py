"""A classical codec at the rate of another codec, image by image.

``compare``'s matched-rate search keeps the quality whose size is *closest* to a target. To show a
learned codec next to JPEG or WebP fairly, the classical codec should get at least as many bits:
:class:`AtRateCodec` takes, per image, the lowest integer quality whose real file is at least the
other codec's bpp on that same image (the lowest quality the format has when even that is above).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping

import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.evaluation.codecs import (
    PILLOW_QUALITY_RANGE,
    Codec,
    CodedImage,
    PillowCodec,
)
from compressai_vlic.image_io import quantize_uint8, to_uint8_array

__all__ = ["AtRateCodec", "image_key", "lowest_quality_at_rate"]


def image_key(image: torch.Tensor) -> str:
    """A (3, H, W) image's identity: the sha256 of its 8-bit pixels (16 hex digits)."""
    return hashlib.sha256(quantize_uint8(image).numpy().tobytes()).hexdigest()[:16]


def lowest_quality_at_rate(codec: PillowCodec, arr, min_bpp: float) -> tuple[int, bytes]:
    """The lowest quality whose file has ``bpp >= min_bpp`` (scanned upwards), with its bytes.

    The format's highest quality is returned when no quality reaches ``min_bpp``.
    """
    lo, hi = PILLOW_QUALITY_RANGE[codec.format_type]
    pixels = arr.shape[0] * arr.shape[1]
    data = b""
    for quality in range(lo, hi + 1):
        data = codec.encode(arr, quality)
        if len(data) * 8 / pixels >= min_bpp:
            return quality, data
    return hi, data


class AtRateCodec(Codec):
    """A Pillow codec at, per image, the lowest quality reaching that image's target bpp.

    Args:
        format_type: "jpeg", "webp" or "avif" (when this Pillow writes it).
        targets: image key (:func:`image_key`) -> the bpp to reach on that image.
        label: the rate point's name (default "matched").
    """

    def __init__(
        self, format_type: str, targets: Mapping[str, float], label: str = "matched"
    ) -> None:
        self.base = PillowCodec(format_type, ["q50"])
        if not targets or any(not v > 0 for v in targets.values()):
            raise ConfigError(f"AtRateCodec needs positive target bpps, got {dict(targets)}")
        self.targets = dict(targets)
        self.label = label
        self.name = f"{format_type}-at-rate"
        self.format_type = format_type
        self.description = f"{self.base.description} at the lowest quality reaching each target"

    @property
    def rate_points(self) -> list[str]:
        return [self.label]

    @property
    def cache_key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.targets, sort_keys=True).encode()).hexdigest()
        return f"{self.base.cache_key}:at-rate:{digest[:16]}"

    def code(self, image: torch.Tensor, rate_point: str) -> CodedImage:
        key = image_key(image)
        if key not in self.targets:
            raise ConfigError(f"{self.name}: no target bpp for this image (key {key})")
        target = self.targets[key]
        arr = to_uint8_array(image)
        start = time.perf_counter()
        quality, data = lowest_quality_at_rate(self.base, arr, target)
        encode_s = time.perf_counter() - start
        # target_bpp None: at least the target by construction, not "close to" it
        return self.base.decoded(arr, quality, data, encode_s, target_bpp=None)
