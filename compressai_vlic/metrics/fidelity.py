"""Signal-fidelity metrics that need no learned weights: PSNR, MS-SSIM, SSIMULACRA 2.

PSNR and MS-SSIM follow CompressAI's ``eval_model`` (images rounded to 8 bits, data range 255)
so numbers line up with CompressAI's published JSON files.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from compressai_vlic.errors import ConfigError, MetricUnavailableError
from compressai_vlic.extras import require
from compressai_vlic.metrics.base import DeviceLike, PairMetric, register_metric
from compressai_vlic.options import check_option

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SmallImageType = Literal["reduce_scales", "error"]


def _to_255(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).clamp(0, 255).round()


def psnr(reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) images in [0, 1], on 8-bit-rounded values as in
    CompressAI's eval, computed in float64 (identical images give +inf)."""
    mse = (_to_255(reference).double() - _to_255(distorted).double()).pow(2).mean(dim=(1, 2, 3))
    return 20 * np.log10(255.0) - 10 * torch.log10(mse)


class PSNR(PairMetric):
    """PSNR in dB on 8-bit-rounded RGB, per image (identical images give +inf)."""

    name = "psnr"
    higher_is_better = True

    def _compute(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        return psnr(reference, distorted)


def ms_ssim_levels(height: int, width: int, win_size: int = 11) -> int:
    """How many MS-SSIM scales fit: each level halves the image and needs more than a window."""
    side = min(height, width)
    levels = 0
    while levels < len(MS_SSIM_WEIGHTS) and side > (win_size - 1) * 2**levels:
        levels += 1
    return levels


class MSSSIM(PairMetric):
    """MS-SSIM (pytorch-msssim) on 8-bit-rounded RGB with data range 255, like CompressAI.

    The standard 5 scales need more than 160 px per side. ``small_image_type="reduce_scales"``
    uses as many scales as fit (weights renormalised, a warning names the count); ``"error"``
    raises instead. Values on reduced scales are not comparable with 5-scale values.
    """

    name = "ms_ssim"
    higher_is_better = True

    def __init__(
        self, device: DeviceLike = "cpu", small_image_type: SmallImageType = "reduce_scales"
    ) -> None:
        super().__init__(device)
        check_option("small_image_type", small_image_type, SmallImageType)
        self.small_image_type = small_image_type

    def _compute(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        ms_ssim = require("pytorch_msssim", "eval", "The ms_ssim metric").ms_ssim

        x, y = _to_255(reference), _to_255(distorted)
        levels = ms_ssim_levels(*x.shape[-2:])
        if levels == len(MS_SSIM_WEIGHTS):
            return ms_ssim(x, y, data_range=255.0, size_average=False)
        if self.small_image_type == "error" or levels < 1:
            raise ConfigError(
                f"ms_ssim: image {tuple(x.shape[-2:])} is too small for 5 scales (needs > 160 px "
                "per side); use small_image_type='reduce_scales' or larger images"
            )
        warnings.warn(
            f"ms_ssim: {tuple(x.shape[-2:])} image evaluated on {levels} of 5 scales",
            stacklevel=3,
        )
        return ms_ssim_reduced(x, y, levels)


def ms_ssim_reduced(x: torch.Tensor, y: torch.Tensor, levels: int) -> torch.Tensor:
    """pytorch-msssim's MS-SSIM loop on the first ``levels`` scales (renormalised weights).

    pytorch-msssim asserts the 5-scale minimum size even when fewer weights are given, so the
    loop is repeated here on top of its own ``_ssim`` kernel; with ``levels=5`` it equals
    ``pytorch_msssim.ms_ssim`` (tested).
    """
    ssim = require("pytorch_msssim.ssim", "eval", "The ms_ssim metric")
    _fspecial_gauss_1d, _ssim = ssim._fspecial_gauss_1d, ssim._ssim

    weights = x.new_tensor(MS_SSIM_WEIGHTS[:levels])
    if levels < len(MS_SSIM_WEIGHTS):  # the published 5 weights sum to 1.0001: keep them as is
        weights = weights / weights.sum()
    win = _fspecial_gauss_1d(11, 1.5).repeat([x.shape[1], 1, 1, 1])
    mcs = []
    ssim_per_channel = None
    for i in range(levels):
        ssim_per_channel, cs = _ssim(x, y, win=win, data_range=255.0, size_average=False)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    stack = torch.stack([*mcs, torch.relu(ssim_per_channel)], dim=0)
    return torch.prod(stack ** weights.view(-1, 1, 1), dim=0).mean(1)


class SSIMULACRA2(PairMetric):
    """SSIMULACRA 2 (PyPI ``ssimulacra2``) on 8-bit images; 100 = identical, higher is better.

    The package reads images through Pillow, so each image is handed over as an in-memory PNG:
    the score is exactly what its own ``compute_ssimulacra2`` gives for the saved 8-bit files.
    """

    name = "ssimulacra2"
    higher_is_better = True

    def __init__(self, device: DeviceLike = "cpu") -> None:
        super().__init__("cpu")  # pure NumPy implementation
        module = require("ssimulacra2", "eval", "The ssimulacra2 metric", MetricUnavailableError)
        self._fn = module.compute_ssimulacra2

    def _compute(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        if min(reference.shape[-2:]) < 8:
            raise ConfigError("ssimulacra2: images need at least 8 px per side")
        scores = [
            self._fn(_png_buffer(ref), _png_buffer(dist)) for ref, dist in zip(reference, distorted)
        ]
        return torch.tensor(scores, dtype=torch.float64)


def _png_buffer(image: torch.Tensor) -> io.BytesIO:
    arr = _to_255(image).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=0)
    buf.seek(0)
    return buf


register_metric("psnr", PSNR)
register_metric("ms_ssim", MSSSIM)
register_metric("ssimulacra2", SSIMULACRA2)
