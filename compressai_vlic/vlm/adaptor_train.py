"""Training the codec-conditioned adaptor by feature distillation, and measuring what it buys.

The loss is ``||CVE(X^, C) - VE(X)||^2``: the adapted vision encoder on a compressed image
(conditioned on its codec and rate level) against the frozen base encoder on the original. The
features are the ones the language model receives (``model.get_image_features``: the selected
vision layer after the multimodal projector), so any HF VLM with that method trains the same way.
The targets are computed once, from the base model, before any weight moves.

Photos: crops of real photos at fixed-seed positions, each coded by every codec at every rate
point (real bytes through :mod:`compressai_vlic.evaluation.codecs`), so the model learns the
distortion of each codec x level. :func:`feature_distances` reports, per codec and level, the
relative feature distance ``sum ||f(X^) - f(X)||^2 / sum ||f(X)||^2`` of the base and the adapted
encoder on held-out photos, for seen and unseen codecs alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressai_vlic.errors import ConfigError, DatasetError
from compressai_vlic.options import check_option
from compressai_vlic.vlm.adaptor import AdaptorHandle, TrainableType, create_adaptor
from compressai_vlic.vlm.options import DEFAULT_HELDOUT_PHOTOS as DEFAULT_HELDOUT_PHOTOS
from compressai_vlic.vlm.options import DEFAULT_TRAIN_PHOTOS as DEFAULT_TRAIN_PHOTOS

# Real photos that ship inside scikit-image / scikit-learn (no download).
BUNDLED_PHOTOS = (
    "astronaut",
    "coffee",
    "rocket",
    "motorcycle_left",
    "china",
    "chelsea",
    "flower",
)

Condition = tuple[str, int]


# --------------------------------------------------------------------------- photos and crops
def bundled_photos(names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Real photos from scikit-image and scikit-learn as (3, H, W) float tensors in [0, 1]."""
    from compressai_vlic.extras import require

    photos: dict[str, torch.Tensor] = {}
    for name in names:
        if name in ("china", "flower"):
            datasets = require("sklearn.datasets", "demo", "The china/flower photos")
            data = datasets.load_sample_images()
            array = dict(zip((Path(f).stem for f in data.filenames), data.images, strict=True))[
                name
            ]
        elif name == "motorcycle_left":
            array = require("skimage.data", "demo", "The motorcycle photo").stereo_motorcycle()[0]
        elif name in BUNDLED_PHOTOS:
            array = getattr(require("skimage.data", "demo", "The scikit-image photos"), name)()
        else:
            raise DatasetError(
                f"unknown bundled photo {name!r}; choose from {', '.join(BUNDLED_PHOTOS)}"
            )
        photos[name] = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float() / 255
    return photos


def folder_photos(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every readable image under ``folder`` (unreadable files are a typed error, not skipped)."""
    from compressai_vlic.image_io import find_images, load_image

    paths = find_images(folder)
    if not paths:
        raise DatasetError(f"{folder}: no images found")
    return {str(p.relative_to(folder)): load_image(p).tensor for p in paths}


def random_crops(
    photos: Mapping[str, torch.Tensor], size: int, per_photo: int, seed: int = 0
) -> list[torch.Tensor]:
    """``per_photo`` square crops of ``size`` from each photo at fixed-seed positions.

    Photos smaller than ``size`` are first upscaled on their shorter side.
    """
    if size < 8 or per_photo < 1:
        raise ConfigError("crop size must be >= 8 and crops per photo >= 1")
    gen = torch.Generator().manual_seed(seed)
    crops = []
    for image in photos.values():
        _, h, w = image.shape
        if min(h, w) < size:
            scale = size / min(h, w)
            image = F.interpolate(
                image[None],
                size=(max(size, round(h * scale)), max(size, round(w * scale))),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0].clamp(0, 1)
            _, h, w = image.shape
        for _ in range(per_photo):
            top = int(torch.randint(0, h - size + 1, (), generator=gen))
            left = int(torch.randint(0, w - size + 1, (), generator=gen))
            crop = image[:, top : top + size, left : left + size]
            crops.append(crop.mul(255).round().div(255))  # 8-bit values, as a codec sees them
    return crops


@dataclass
class CodedSet:
    """Original crops and their reconstructions by each codec at each rate level."""

    originals: list[torch.Tensor]
    codecs: dict[str, list[str]]  # codec name -> rate point labels (level i = i-th)
    coded: dict[Condition, list[torch.Tensor]]
    bpp: dict[Condition, list[float]]

    def mean_bpp(self) -> dict[str, list[float | None]]:
        """Codec name -> mean real bpp per level (what unseen codecs are mapped by)."""
        return {
            name: [
                float(np.mean(self.bpp[(name, i)])) if (name, i) in self.bpp else None
                for i in range(len(levels))
            ]
            for name, levels in self.codecs.items()
        }


def code_crops(
    crops: Sequence[torch.Tensor],
    codecs: Sequence[Any],
    progress: Callable[[str], None] | None = None,
) -> CodedSet:
    """Code every crop with every codec at every rate point (real bytes, decoded back).

    Args:
        crops: (3, H, W) images in [0, 1].
        codecs: :class:`~compressai_vlic.evaluation.codecs.Codec` objects (``make_codec``).
        progress: called with one line per codec x level (default None).
    """
    names = [c.name for c in codecs]
    if len(set(names)) != len(names):
        raise ConfigError(f"codec names must be unique, got {names}; rename with NAME=SPEC")
    coded: dict[Condition, list[torch.Tensor]] = {}
    bpp: dict[Condition, list[float]] = {}
    for codec in codecs:
        for level, point in enumerate(codec.rate_points):
            outs = [codec.code(crop, point) for crop in crops]
            coded[(codec.name, level)] = [o.reconstruction for o in outs]
            bpp[(codec.name, level)] = [o.bpp for o in outs]
            if progress is not None:
                mean = float(np.mean(bpp[(codec.name, level)]))
                progress(f"coded {len(crops)} crops with {codec.name}@{point}: {mean:.3f} bpp")
    return CodedSet(list(crops), {c.name: list(c.rate_points) for c in codecs}, coded, bpp)


# --------------------------------------------------------------------------- features
def _image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", processor)


def image_inputs(processor: Any, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The processor's tensors for one (3, H, W) image (pixel values, grid sizes, ...)."""
    from PIL import Image

    from compressai_vlic.image_io import to_uint8_array

    out = _image_processor(processor)(
        images=[Image.fromarray(to_uint8_array(image))], return_tensors="pt"
    )
    return {k: v for k, v in out.items() if torch.is_tensor(v)}


def _collate(items: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> dict[str, Any]:
    return {k: torch.cat([item[k] for item in items]).to(device) for k in items[0]}


def image_features(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per image, the (tokens, width) features the language model receives."""
    if not hasattr(model, "get_image_features"):
        raise ConfigError(
            f"{type(model).__name__} has no get_image_features(): not a supported VLM"
        )
    out = model.get_image_features(**inputs)
    feats = getattr(out, "pooler_output", out) if not torch.is_tensor(out) else out
    if torch.is_tensor(feats):
        feats = list(feats) if feats.dim() == 3 else [feats]
    return [f.reshape(-1, f.shape[-1]).float() for f in feats]


def _batched_features(
    model: nn.Module, items: Sequence[Mapping[str, torch.Tensor]], device: torch.device, size: int
) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for i in range(0, len(items), size):
        out += image_features(model, _collate(items[i : i + size], device))
    return out


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------- training
@dataclass
class DistillConfig:
    """Settings of :func:`train_adaptor`.

    Args:
        steps: optimiser steps, cosine-decayed learning rate (default 600).
        batch_size: images per step, all of one codec x level (default 16).
        lr: learning rate of the condition table (default 1e-3).
        block_lr: learning rate of the tuned encoder weights (default 3e-4).
        trainable: what trains with the condition table: nothing else (``"condition"``), the
            patch embedding (``"condition+patch-embedding"``, default), the last vision blocks
            (``"condition+last-blocks"``) or the whole tower (``"condition+vision-tower"``).
        last_blocks: how many of the last vision blocks tune with ``condition+last-blocks``
            (default 1).
        seed: batch order (default 0).
    """

    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    block_lr: float = 3e-4
    trainable: TrainableType = "condition+patch-embedding"
    last_blocks: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_option("trainable", self.trainable, TrainableType)
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be >= 1")
        if not (self.lr > 0 and self.block_lr > 0):
            raise ConfigError("learning rates must be > 0")


@dataclass
class TrainResult:
    """What :func:`train_adaptor` returns: the attached adaptor and its loss history."""

    handle: AdaptorHandle
    # per step: feature error of the batch relative to the base encoder's (1.0 at the start)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _relative_distance(
    pred: Sequence[torch.Tensor], target: Sequence[torch.Tensor]
) -> torch.Tensor:
    num = sum(((p - t) ** 2).sum() for p, t in zip(pred, target, strict=True))
    den = sum((t**2).sum() for t in target)
    return num / den.clamp_min(1e-12)


def train_adaptor(
    model: nn.Module,
    processor: Any,
    data: CodedSet,
    config: DistillConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Attach a fresh adaptor to ``model`` and train it by feature distillation on ``data``.

    Only the adaptor's parameters get gradients (the condition table, and with
    ``condition+last-blocks`` the last vision blocks); every other parameter, the language model
    included, is frozen for the run and left bit-identical.
    """
    config = config or DistillConfig()
    device = _device(model)
    conditions = sorted(data.coded)
    if not conditions:
        raise DatasetError("no coded images to train on")
    handle = create_adaptor(
        model, data.codecs, config.trainable, config.last_blocks, bpp=data.mean_bpp()
    )
    handle.training = {"config": asdict(config), "images": len(data.originals)}
    was_training = model.training
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    try:
        with torch.no_grad(), handle.bypassed():
            originals = [image_inputs(processor, x) for x in data.originals]
            targets = _batched_features(model, originals, device, config.batch_size)
            coded = {c: [image_inputs(processor, x) for x in data.coded[c]] for c in conditions}
            # the base encoder's error per coded image: each condition's loss is measured against
            # it, so low rates (large errors) do not drown the high ones in shared weights
            base_err = {
                c: [
                    float(((f - t) ** 2).sum())
                    for f, t in zip(
                        _batched_features(model, coded[c], device, config.batch_size),
                        targets,
                        strict=True,
                    )
                ]
                for c in conditions
            }
        for param in model.parameters():
            param.requires_grad_(False)
        blocks = [p for p in handle.trainable_parameters() if p is not handle.embedding.weight]
        for param in handle.trainable_parameters():
            param.requires_grad_(True)
        groups: list[dict[str, Any]] = [{"params": [handle.embedding.weight], "lr": config.lr}]
        if blocks:
            groups.append({"params": blocks, "lr": config.block_lr})
        optimizer = torch.optim.Adam(groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / config.steps))
        )
        gen = torch.Generator().manual_seed(config.seed)
        n = len(data.originals)
        losses: list[float] = []
        start = time.perf_counter()
        for step in range(config.steps):
            if step % len(conditions) == 0:
                order = torch.randperm(len(conditions), generator=gen).tolist()
            codec, level = conditions[order[step % len(conditions)]]
            idx = torch.randperm(n, generator=gen)[: config.batch_size].tolist()
            handle.set_condition(codec, level)
            feats = image_features(model, _collate([coded[(codec, level)][i] for i in idx], device))
            err = sum(((f - targets[i]) ** 2).sum() for f, i in zip(feats, idx, strict=True))
            loss = err / max(sum(base_err[(codec, level)][i] for i in idx), 1e-12)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if progress is not None and (step + 1) % max(1, config.steps // 10) == 0:
                recent = losses[-max(1, config.steps // 10) :]
                progress(f"step {step + 1}/{config.steps}: error vs base {np.mean(recent):.4f}")
        seconds = time.perf_counter() - start
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])
        handle.embedding.weight.requires_grad_(False)
        handle.clear_condition()
        model.train(was_training)
    handle.training["steps_run"] = config.steps
    handle.training["final_loss"] = float(np.mean(losses[-max(1, len(losses) // 10) :]))
    return TrainResult(handle, losses, seconds)


# --------------------------------------------------------------------------- measuring
@torch.no_grad()
def feature_distances(
    model: nn.Module,
    processor: Any,
    data: CodedSet,
    handle: AdaptorHandle,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Per codec x level: relative feature distance to the base on originals, base vs adapted.

    A codec the adaptor has not seen is conditioned by the handle's mapping rule, using the mean
    bpp of the images at that level; ``condition`` in each row says what it mapped to.
    """
    device = _device(model)
    was_training = model.training
    model.eval()
    saved = handle.condition

    def features(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        items = [image_inputs(processor, x) for x in images]
        return _batched_features(model, items, device, batch_size)

    rows = []
    try:
        with handle.bypassed():
            targets = features(data.originals)
        for (codec, level), images in sorted(data.coded.items()):
            with handle.bypassed():
                before = float(_relative_distance(features(images), targets))
            mean_bpp = float(np.mean(data.bpp[(codec, level)]))
            used = handle.set_condition(codec, level, bpp=mean_bpp)
            after = float(_relative_distance(features(images), targets))
            rows.append(
                {
                    "codec": codec,
                    "level": level,
                    "rate_point": data.codecs[codec][level],
                    "bpp": mean_bpp,
                    "seen": codec in handle.codecs,
                    "condition": f"{used[0]}/{used[1]}" if used else "none",
                    "images": len(images),
                    "before": before,
                    "after": after,
                    "change": after / before - 1 if before > 0 else math.nan,
                }
            )
    finally:
        if saved is None:
            handle.clear_condition()
        else:
            handle.set_condition(*saved)
        model.train(was_training)
    return rows


def format_distances(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of :func:`feature_distances` rows."""
    lines = [
        f"{'codec':<10} {'level':>5} {'rate':>8} {'bpp':>7} {'seen':>5} {'as':>9} "
        f"{'before':>8} {'after':>8} {'change':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r['codec']:<10} {r['level']:>5} {r['rate_point']:>8} {r['bpp']:>7.3f} "
            f"{'yes' if r['seen'] else 'no':>5} {r['condition']:>9} {r['before']:>8.4f} "
            f"{r['after']:>8.4f} {r['change'] * 100:>7.1f}%"
        )
    return "\n".join(lines)
