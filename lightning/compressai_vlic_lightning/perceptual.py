"""Differentiable perceptual losses on the one-step estimate x0_hat (stage 1).

VLIC/FlowMo add LPIPS(x0_hat, x) to the flow-matching loss. LPIPS needs ImageNet backbone weights
that this package never downloads (see ``compressai_vlic.metrics.weights``); when they are not on
the machine, ``perceptual_type="lpips"`` falls back to MS-SSIM and says so once, loudly, so a
CPU demo still runs and a GPU run never silently trains without the loss it asked for
(``perceptual_fallback_type="error"`` makes the missing weights fatal instead).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressai_vlic.errors import ConfigError, MetricUnavailableError
from compressai_vlic.extras import require
from compressai_vlic.options import check_option

log = logging.getLogger(__name__)

PerceptualType = Literal["lpips", "ms_ssim", "none"]
PerceptualFallbackType = Literal["ms_ssim", "none", "error"]
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


@dataclass(frozen=True)
class PerceptualChoice:
    """What was asked for, what runs, and why they differ (logged and stored in hparams)."""

    requested: str
    active: str
    reason: str = ""


class MSSSIMLoss(nn.Module):
    """1 - MS-SSIM on as many scales as the image allows (small training crops get fewer).

    Inputs are clamped to [0, 1] and per-scale terms floored at a small epsilon so the fractional
    powers stay differentiable.
    """

    def __init__(self, win_size: int = 11, sigma: float = 1.5, eps: float = 1e-4) -> None:
        super().__init__()
        _fspecial_gauss_1d = require(
            "pytorch_msssim.ssim", "train", "The MS-SSIM loss"
        )._fspecial_gauss_1d

        self.win_size = win_size
        self.eps = eps
        self.register_buffer("win", _fspecial_gauss_1d(win_size, sigma), persistent=False)

    def levels(self, side: int) -> int:
        levels = 0
        while levels < len(_MS_SSIM_WEIGHTS) and side > (self.win_size - 1) * 2**levels:
            levels += 1
        return levels

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        _ssim = require("pytorch_msssim.ssim", "train", "The MS-SSIM loss")._ssim

        x = prediction.float().clamp(0, 1)
        y = target.float().clamp(0, 1)
        levels = self.levels(min(x.shape[-2:]))
        if levels < 1:
            raise ConfigError(f"ms_ssim loss needs images larger than {self.win_size} px per side")
        weights = x.new_tensor(_MS_SSIM_WEIGHTS[:levels])
        weights = weights / weights.sum()
        win = self.win.to(x).repeat([x.shape[1], 1, 1, 1])
        terms = []
        for i in range(levels):
            ssim_pc, cs = _ssim(x, y, win=win, data_range=1.0, size_average=False)
            if i < levels - 1:
                terms.append(cs.clamp(min=self.eps))
                pad = [s % 2 for s in x.shape[2:]]
                x = F.avg_pool2d(x, kernel_size=2, padding=pad)
                y = F.avg_pool2d(y, kernel_size=2, padding=pad)
        terms.append(ssim_pc.clamp(min=self.eps))
        value = torch.prod(torch.stack(terms) ** weights.view(-1, 1, 1), dim=0).mean(1)
        return 1.0 - value.mean()


class LPIPSLoss(nn.Module):
    """LPIPS distance (mean over the batch) with gradients, on a local backbone (no download)."""

    def __init__(self, net_type: str = "alex", weights: str | None = None) -> None:
        super().__init__()
        from compressai_vlic.metrics.deep import LPIPS

        metric = LPIPS(device="cpu", net_type=net_type, weights=weights)
        self.net = metric.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPSLoss:
        return super().train(False)  # the metric stays in eval mode (dropout off)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return self.net(prediction.float(), target.float(), normalize=True).mean()


def make_perceptual_loss(
    perceptual_type: PerceptualType = "lpips",
    fallback_type: PerceptualFallbackType = "ms_ssim",
    lpips_net_type: str = "alex",
    lpips_weights: str | None = None,
) -> tuple[nn.Module | None, PerceptualChoice]:
    """Build the stage-1 perceptual loss; returns (loss or None, what was chosen and why)."""
    check_option("perceptual_type", perceptual_type, PerceptualType, ConfigError)
    check_option("perceptual_fallback_type", fallback_type, PerceptualFallbackType, ConfigError)
    if perceptual_type == "none":
        return None, PerceptualChoice("none", "none")
    if perceptual_type == "ms_ssim":
        return MSSSIMLoss(), PerceptualChoice("ms_ssim", "ms_ssim")
    try:
        return LPIPSLoss(lpips_net_type, lpips_weights), PerceptualChoice("lpips", "lpips")
    except MetricUnavailableError as exc:
        if fallback_type == "error":
            raise
        reason = f"LPIPS unavailable ({exc}); training with {fallback_type!r} instead"
        log.warning(reason)
        loss = MSSSIMLoss() if fallback_type == "ms_ssim" else None
        return loss, PerceptualChoice("lpips", fallback_type, reason)
