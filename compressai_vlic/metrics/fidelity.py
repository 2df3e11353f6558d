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


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 1-D Gaussian MS-SSIM uses (same values as pytorch-msssim's)."""
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_components(
    x: torch.Tensor, y: torch.Tensor, data_range: float, win: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel SSIM and contrast-structure term (valid Gaussian filtering)."""
    channels = x.shape[1]
    w = win.to(x).view(1, 1, 1, -1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t, w, groups=channels)
        return F.conv2d(t, w.transpose(2, 3), groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def ms_ssim_reduced(
    x: torch.Tensor,
    y: torch.Tensor,
    levels: int,
    data_range: float = 255.0,
    floor: float = 0.0,
    win_size: int = 11,
) -> torch.Tensor:
    """MS-SSIM on the first ``levels`` scales (weights renormalised below 5), per image.

    pytorch-msssim refuses images under 161 px even with fewer weights, so the scales are
    computed here; with ``levels=5`` this equals ``pytorch_msssim.ms_ssim`` (tested). Terms are
    clamped at ``floor`` (0 for the metric; a small positive value keeps the training loss's
    fractional powers differentiable). Used by the ``ms_ssim`` metric and the stage-1 loss.
    """
    weights = x.new_tensor(MS_SSIM_WEIGHTS[:levels])
    if levels < len(MS_SSIM_WEIGHTS):  # the published 5 weights sum to 1.0001: keep them as is
        weights = weights / weights.sum()
    win = gaussian_window(win_size)
    terms = []
    ssim_pc = None
    for i in range(levels):
        ssim_pc, cs = ssim_components(x, y, data_range, win)
        if i < levels - 1:
            terms.append(cs.clamp(min=floor))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    terms.append(ssim_pc.clamp(min=floor))  # type: ignore[union-attr]
    return torch.prod(torch.stack(terms) ** weights.view(-1, 1, 1), dim=0).mean(1)


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
