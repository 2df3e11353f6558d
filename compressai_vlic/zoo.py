"""Model zoo entry ``vlic(quality, metric, pretrained, progress, **overrides)`` in CompressAI's style.

Quality table (see docs/model.md):
- ``"test"``: tiny CPU configuration for tests, demos and CI (random weights are fine).
- ``1``: paper rate point 0.07 bpp before entropy coding: 256 tokens x 18 bits at 256x256.
- ``2``: paper rate point 0.21 bpp: 256 tokens x 56 bits.
Encoder depth 8 / decoder depth 16 / patch 4 / 256 tokens are from the paper; widths (1088, 17
heads of 64 -> ~1.0B parameters for encoder + decoder), FSQ levels, prior size and sampler
defaults are not published and are our defaults.

No public weights exist. ``pretrained`` loads weights the user points to: a file whose name
carries its sha256 prefix (CompressAI's ``NAME-<sha256[:8]>.pth.tar`` convention, as written by
``compressai.utils.update_model``), a folder holding one, a ``VLIC.save_pretrained`` folder, or
a Hugging Face Hub repository id (``owner/name``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.models.config import VLICConfig

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

_HASHED_NAME = re.compile(r"-(?P<sha>[0-9a-f]{8})\.pth(\.tar)?$")


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


def _sha256_prefix(path: Path, length: int = 8) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def _how() -> str:
    return (
        "No public VLIC weights exist. Train a model (compressai-vlic-train), export it with "
        "`compressai-vlic update --architecture vlic CKPT -n vlic-<quality>` (writes "
        "vlic-<quality>-<sha8>.pth.tar) or VLIC.save_pretrained(folder), then pass "
        f"pretrained=PATH_OR_HUB_ID, weights=PATH_OR_HUB_ID or set {WEIGHTS_ENV}."
    )


def _location(weights: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    location = weights if weights is not None else os.environ.get(WEIGHTS_ENV)
    if not location:
        raise CheckpointError(f"pretrained=True needs a weights location. {_how()}")
    return location


def resolve_weights(quality: int | str, weights: str | os.PathLike[str] | None = None) -> Path:
    """Find the hashed checkpoint file for ``quality`` from ``weights`` or $COMPRESSAI_VLIC_WEIGHTS.

    Either may be a file or a directory holding ``vlic-<quality>-<sha8>.pth.tar``.
    """
    how = _how()
    path = Path(_location(weights)).expanduser()
    if path.is_dir():
        pattern = re.compile(rf"^vlic-{re.escape(str(quality))}-[0-9a-f]{{8}}\.pth(\.tar)?$")
        matches = sorted(p for p in path.iterdir() if pattern.match(p.name))
        if len(matches) != 1:
            found = "none" if not matches else ", ".join(p.name for p in matches)
            raise CheckpointError(
                f"expected exactly one vlic-{quality}-<sha8>.pth.tar in {path}, found {found}. {how}"
            )
        path = matches[0]
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist. {how}")
    return path


def pretrained_weights_file(
    quality: int | str, weights: str | os.PathLike[str] | None = None
) -> Path:
    """The local file ``vlic(quality, pretrained=True, weights=weights)`` loads its weights from."""
    from compressai_vlic.pretrained import shipped_qualities, shipped_weights

    key = quality_key(quality)
    if weights is None and key in shipped_qualities():
        return shipped_weights(key).path
    return resolve_weights(key, weights)


def load_checked(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict after checking the sha256 prefix in its file name."""
    match = _HASHED_NAME.search(path.name)
    if match is None:
        raise CheckpointError(
            f"{path.name} has no sha256 prefix in its name (NAME-<sha8>.pth.tar); export it "
            "with `compressai-vlic update` / compressai.utils.update_model"
        )
    actual = _sha256_prefix(path)
    if actual != match.group("sha"):
        raise CheckpointError(
            f"hash check failed for {path}: name says {match.group('sha')}, content is {actual} "
            "(corrupted or renamed file)"
        )
    from compressai_vlic.checkpoints import load_state_dict

    return load_state_dict(path, keys=("state_dict",))


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
    from compressai_vlic.models.hub import (
        is_hub_id,
        is_pretrained_folder,
        load_weights,
        weights_file,
    )
    from compressai_vlic.models.vlic import VLIC
    from compressai_vlic.pretrained import shipped_qualities, shipped_weights

    if metric not in ("mse", "ms-ssim", "vlm"):
        raise ConfigError(f"unknown metric {metric!r}; VLIC accepts 'mse', 'ms-ssim' or 'vlm'")
    config = quality_config(quality, **overrides)
    if pretrained is False:
        return VLIC(config)
    if pretrained is True and weights is None and quality_key(quality) in shipped_qualities():
        shipped = shipped_weights(quality_key(quality))
        if shipped.config_hash != config.config_hash().hex():
            raise CheckpointError(
                f"the shipped {quality_key(quality)!r} weights fit config {shipped.config_hash}, "
                f"not {config.config_hash().hex()}: only sampler settings may be overridden"
            )
        return load_weights(VLIC(config), shipped.path)
    location = _location(weights if pretrained is True else pretrained)
    net = VLIC(config)
    if is_hub_id(location) or is_pretrained_folder(Path(location).expanduser()):
        return load_weights(net, weights_file(location))  # checks the config hash
    state = load_checked(resolve_weights(quality_key(quality), location))
    net.load_state_dict(state)  # raises CheckpointError if made for another architecture
    return net
