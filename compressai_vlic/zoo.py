"""Model zoo entry ``vlic(quality, metric, pretrained, progress, **overrides)`` in CompressAI's style.

Quality table (see docs/model.md):
- ``"test"``: tiny CPU configuration for tests, demos and CI (random weights are fine).
- ``1``: paper rate point 0.07 bpp before entropy coding: 256 tokens x 18 bits at 256x256.
- ``2``: paper rate point 0.21 bpp: 256 tokens x 56 bits.
Encoder depth 8 / decoder depth 16 / patch 4 / 256 tokens are from the paper; widths (1088, 17
heads of 64 -> ~1.0B parameters for encoder + decoder), FSQ levels, prior size and sampler
defaults are not published and are our defaults.

Trained weights ship for ``"tiny"``; no public weights exist for the paper qualities.
``pretrained`` also takes any weights spec of :func:`compressai_vlic.pretrained.load_weights`
(a file, a ``save_pretrained`` folder, a Hub id), which is the one loader behind it.
"""

from __future__ import annotations

import os
from typing import Any

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.models.config import VLICConfig

#: Where ``vlic(q, pretrained=True)`` finds weights of a quality that ships none (CompressAI's
#: ``eval_model pretrained`` has no other way to pass them).
WEIGHTS_ENV = "COMPRESSAI_VLIC_WEIGHTS"

_PAPER = {
    "image_size": 256,
    "patch_size": 4,
    "num_tokens": 256,
    "encoder_width": 1088,
    "encoder_depth": 8,
    "encoder_heads": 17,
    "decoder_width": 1088,
    "decoder_depth": 16,
    "decoder_heads": 17,
    "prior_width": 768,
    "prior_depth": 12,
    "prior_heads": 12,
    "num_steps": 25,
    "guidance_scale": 1.5,
    "time_shift": 0.5,
    "tile_overlap": 8,
    "mup": True,  # FlowMo's enable_mup (base.yaml); at 64-dim heads the same logits as 1/sqrt(d)
    # The intra-token causal prior: about 5% fewer bits per token than independent digits, for a
    # head of under 1 M parameters next to the 85 M-parameter prior.
    "prior_digits": "causal",
}

QUALITIES: dict[str, VLICConfig] = {
    "test": VLICConfig(
        name="vlic-test",
        image_size=32,
        patch_size=4,
        num_tokens=16,
        fsq_levels=(8, 5, 5),
        encoder_width=32,
        encoder_depth=1,
        encoder_heads=2,
        decoder_width=32,
        decoder_depth=2,
        decoder_heads=2,
        prior_width=32,
        prior_depth=1,
        prior_heads=2,
        num_steps=3,
        guidance_scale=1.5,
        time_shift=0.5,
        tile_overlap=8,
        tile_batch=64,
    ),
    # The shipped trained model (docs/model.md#the-shipped-tiny-model): 32-px tiles of 16 tokens
    # x 11.3 bits, blended with a 4-px overlap: about 0.2 bpp; decodes 512x512 in seconds on a CPU.
    "tiny": VLICConfig(
        name="vlic-tiny",
        image_size=32,
        patch_size=4,
        num_tokens=16,
        fsq_levels=(8, 8, 8, 5),
        encoder_width=128,
        encoder_depth=3,
        encoder_heads=4,
        decoder_width=128,
        decoder_depth=5,
        decoder_heads=4,
        prior_width=64,
        prior_depth=2,
        prior_heads=2,
        prior_digits="causal",
        num_steps=2,
        guidance_scale=1.0,
        time_shift=0.5,
        tile_overlap=4,
        tile_batch=64,
    ),
    "1": VLICConfig(name="vlic-q1", fsq_levels=(8,) * 6, **_PAPER),
    "2": VLICConfig(name="vlic-q2", fsq_levels=(16,) * 14, **_PAPER),
}

#: Integer names of string qualities: CompressAI's ``eval_model pretrained -q`` parses integers.
QUALITY_ALIASES = {"0": "tiny"}


def quality_key(quality: int | str) -> str:
    """The quality table's key of ``quality`` (``0`` is ``"tiny"``)."""
    key = str(quality)
    return QUALITY_ALIASES.get(key, key)


def quality_integers() -> str:
    """The integer qualities (what CompressAI's ``eval_model pretrained -q`` parses), each with
    its name where it has one: ``"0 (tiny), 1, 2"``."""
    ints = sorted({k for k in QUALITIES if k.isdigit()} | set(QUALITY_ALIASES), key=int)
    return ", ".join(f"{i} ({QUALITY_ALIASES[i]})" if i in QUALITY_ALIASES else i for i in ints)


def quality_config(quality: int | str = 1, **overrides: Any) -> VLICConfig:
    """The config of a quality level, with optional field overrides."""
    key = quality_key(quality)
    if key not in QUALITIES:
        names = ", ".join(repr(k) for k in QUALITIES if not k.isdigit())
        raise ConfigError(
            f"unknown VLIC quality {quality!r}; choose one of {names} or an integer: "
            f"{quality_integers()} (CompressAI's `eval_model pretrained -q` takes the integers)"
        )
    config = QUALITIES[key]
    return config.replace(**overrides) if overrides else config


def vlic(
    quality: int | str = 1,
    metric: str = "mse",
    pretrained: bool | str | os.PathLike[str] = False,
    progress: bool = True,
    weights: str | os.PathLike[str] | None = None,
    **overrides: Any,
):
    """Build a VLIC model of a quality level (CompressAI zoo signature).

    Args:
        quality: ``"tiny"`` (or ``0``: trained weights ship with the package), ``"test"``, ``1``
            or ``2`` (see the quality table); default 1.
        metric: accepted for CompressAI compatibility; VLIC models are perceptual ("mse",
            "ms-ssim" and "vlm" name the same weights). Default "mse".
        pretrained: False (random weights, default), True (``"tiny"``: the shipped weights,
            unless ``weights`` is given; others: weights from ``weights`` or
            $COMPRESSAI_VLIC_WEIGHTS), or the weights location itself: a hashed
            ``.pth.tar`` file or its folder, a ``save_pretrained`` folder, or a Hub id.
        progress: unused (CompressAI's signature).
        weights: the weights location when ``pretrained=True``.
        **overrides: config fields to change (e.g. ``num_steps=10``).

    The weights must match the quality's architecture (``CheckpointError`` otherwise).
    """
    from compressai_vlic.models.vlic import VLIC
    from compressai_vlic.pretrained import how_to_get_weights, load_weights, weights_row

    if metric not in ("mse", "ms-ssim", "vlm"):
        raise ConfigError(f"unknown metric {metric!r}; VLIC accepts 'mse', 'ms-ssim' or 'vlm'")
    config = quality_config(quality, **overrides)
    if pretrained is False:
        return VLIC(config)
    key = quality_key(quality)
    spec = weights if pretrained is True else pretrained
    if spec is None:
        spec = key if weights_row(key) is not None else os.environ.get(WEIGHTS_ENV)
    if not spec:
        raise CheckpointError(f"pretrained=True needs a weights location. {how_to_get_weights()}")
    row = weights_row(os.fspath(spec))
    if row is not None and row.config_hash != config.config_hash().hex():
        raise CheckpointError(
            f"the shipped {row.quality!r} weights fit config {row.config_hash}, "
            f"not {config.config_hash().hex()}: only sampler settings may be overridden"
        )
    return load_weights(spec, quality=key).model(config)  # CheckpointError on another architecture
