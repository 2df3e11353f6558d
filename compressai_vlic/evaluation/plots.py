"""Figures of a comparison: rate-quality curves per metric and a grid of crops at similar bpp."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from compressai_vlic.atomic import atomic_path
from compressai_vlic.errors import ConfigError
from compressai_vlic.evaluation.compare import ComparisonResult
from compressai_vlic.extras import require
from compressai_vlic.image_io import load_image

LABELS = {
    "psnr": "PSNR [dB]",
    "ms_ssim": "MS-SSIM",
    "ssimulacra2": "SSIMULACRA 2",
    "lpips": "LPIPS",
    "dists": "DISTS",
    "fid": "FID",
    "kid": "KID",
    "fd_dino": "FD-DINO",
    "judge_win_rate": "judge win-rate",
}


def _pyplot():
    matplotlib = require("matplotlib", "eval", "Rate-distortion plots")
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_rate_quality(
    result: ComparisonResult,
    path: str | Path,
    metrics: list[str] | None = None,
    ceilings: dict[str, float] | None = None,
) -> Path:
    """One panel per metric (bpp on x), one line per codec; arrows say which way is better.

    ``ceilings`` (metric -> value, default None) draws a dashed "uncompressed" line per panel.
    """
    names = metrics or [*result.metric_names, *result.distribution_names]
    if any(p.judge is not None and p.judge.win_rate is not None for p in result.points):
        names = [*names, "judge_win_rate"] if metrics is None else names
    if not names:
        raise ConfigError("nothing to plot: no metric produced values")
    plt = _pyplot()
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.4 * rows + 0.5), squeeze=False, layout="constrained"
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names):
        for k, codec in enumerate(result.codecs):  # one colour per codec in every panel
            curve = [(p.bpp, result.value(p, name)) for p in result.curve(codec)]
            curve = [(x, y) for x, y in curve if y is not None]
            if curve:
                xs, ys = zip(*curve)
                ax.plot(xs, ys, marker="o", label=codec, color=colours[k % len(colours)])
        if ceilings and name in ceilings:
            ax.axhline(ceilings[name], color="0.3", linestyle="--", label="uncompressed")
        arrow = "↑" if result.higher_is_better.get(name, True) else "↓"
        ax.set_title(f"{LABELS.get(name, name)} {arrow}")
        ax.set_xlabel("bpp")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_crop_grid(
    result: ComparisonResult,
    path: str | Path,
    target_bpp: float | None = None,
    crop: int = 128,
    max_images: int = 3,
) -> Path:
    """Rows = images, columns = original + each codec at its rate point closest to ``target_bpp``.

    The default target is the median bpp over all points, so every codec is shown near one rate.
    """
    if not result.rows:
        raise ConfigError("nothing to plot: no rows")
    if target_bpp is None:
        target_bpp = float(np.median([p.bpp for p in result.points]))
    images = list(result.originals)[:max_images]
    codecs = list(result.codecs)
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(images),
        1 + len(codecs),
        figsize=(2.3 * (1 + len(codecs)), 2.6 * len(images) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for i, image in enumerate(images):
        original = result.originals[image]
        box = _centre_box(original, crop)
        _show(axes[i, 0], original, box, f"original\n{image}")
        for j, codec in enumerate(codecs, start=1):
            rows = [r for r in result.rows if r.codec == codec and r.image == image]
            row = min(rows, key=lambda r: abs(math.log(r.bpp) - math.log(target_bpp)))
            rec = load_image(result.reconstructions[(codec, row.rate_point, image)]).tensor
            _show(axes[i, j], rec, box, f"{codec}\n{row.bpp:.3f} bpp")
    fig.suptitle(f"centre crops, each codec at the rate point closest to {target_bpp:.3f} bpp")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _centre_box(image: torch.Tensor, crop: int) -> tuple[int, int, int, int]:
    h, w = image.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return top, left, ch, cw


def _show(ax, image: torch.Tensor, box: tuple[int, int, int, int], title: str) -> None:
    top, left, h, w = box
    arr = image[:, top : top + h, left : left + w].clamp(0, 1).permute(1, 2, 0).numpy()
    ax.imshow(arr, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
