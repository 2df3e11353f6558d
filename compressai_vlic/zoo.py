"""Model zoo entry ``vlic(quality, metric, pretrained, progress, **overrides)`` in CompressAI's style.

Quality table (see docs/model.md):
- ``"test"``: tiny CPU configuration for tests, demos and CI (random weights are fine).
- ``1``: paper rate point 0.07 bpp before entropy coding: 256 tokens x 18 bits at 256x256.
- ``2``: paper rate point 0.21 bpp: 256 tokens x 56 bits.
Encoder depth 8 / decoder depth 16 / patch 4 / 256 tokens are from the paper; widths (1088, 17
heads of 64 -> ~1.0B parameters for encoder + decoder), FSQ levels, prior size and sampler
defaults are not published and are our defaults.

No weights are downloadable: ``pretrained=True`` loads a file the user points to and checks the
sha256 prefix in its name (CompressAI's ``NAME-<sha256[:8]>.pth.tar`` convention, as written by
``compressai.utils.update_model``).
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
    "1": VLICConfig(name="vlic-q1", fsq_levels=(8,) * 6, **_PAPER),
    "2": VLICConfig(name="vlic-q2", fsq_levels=(16,) * 14, **_PAPER),
}

_HASHED_NAME = re.compile(r"-(?P<sha>[0-9a-f]{8})\.pth(\.tar)?$")


def quality_config(quality: int | str = 1, **overrides: Any) -> VLICConfig:
    """The config of a quality level, with optional field overrides."""
    key = str(quality)
    if key not in QUALITIES:
        raise ConfigError(f"unknown VLIC quality {quality!r}; choose one of {', '.join(QUALITIES)}")
    config = QUALITIES[key]
    return config.replace(**overrides) if overrides else config


def _sha256_prefix(path: Path, length: int = 8) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def resolve_weights(quality: int | str, weights: str | os.PathLike[str] | None = None) -> Path:
    """Find the checkpoint file for ``quality`` from ``weights`` or $COMPRESSAI_VLIC_WEIGHTS.

    Either may be a file or a directory holding ``vlic-<quality>-<sha8>.pth.tar``.
    """
    location = weights if weights is not None else os.environ.get(WEIGHTS_ENV)
    how = (
        "No public VLIC weights exist. Train a model (compressai-vlic-train), export it with "
        "`compressai-vlic update --architecture vlic CKPT -n vlic-<quality>` (writes vlic-<quality>-<sha8>.pth.tar), "
        f"then pass weights=PATH or set {WEIGHTS_ENV} to that file or its folder."
    )
    if not location:
        raise CheckpointError(f"pretrained=True needs a weights location. {how}")
    path = Path(location).expanduser()
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
    pretrained: bool = False,
    progress: bool = True,
    weights: str | os.PathLike[str] | None = None,
    **overrides: Any,
):
    """Build a VLIC model of a quality level (CompressAI zoo signature).

    ``metric`` is accepted for CompressAI compatibility; VLIC models are perceptual ("mse" and
    "vlm" name the same weights). ``progress`` is unused (nothing is downloaded).
    """
    from compressai_vlic.models.vlic import VLIC

    if metric not in ("mse", "ms-ssim", "vlm"):
        raise ConfigError(f"unknown metric {metric!r}; VLIC accepts 'mse', 'ms-ssim' or 'vlm'")
    config = quality_config(quality, **overrides)
    if not pretrained:
        return VLIC(config)
    state = load_checked(resolve_weights(quality, weights))
    net = VLIC(config)
    net.load_state_dict(state)  # raises CheckpointError if made for another architecture
    return net
