"""Differentiable perceptual losses on the one-step estimate x0_hat (stage 1).

VLIC/FlowMo add LPIPS(x0_hat, x) to the flow-matching loss. LPIPS runs the reference ``lpips``
network on local weights (``compressai-vlic weights fetch``, run by ``scripts/install.sh``; see
``compressai_vlic.metrics.weights``). When they are not on the machine, ``perceptual_type="lpips"``
falls back to MS-SSIM and says so once, loudly, so a CPU demo still runs and a GPU run never
silently trains without the loss it asked for (``perceptual_fallback_type="error"`` makes the
missing weights fatal instead). ``perceptual_type="student"`` uses a student distilled from a
judge (``compressai-vlic student train``; ``student_path`` names it): the "distilled reward".
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from compressai_vlic.errors import ConfigError, MetricUnavailableError
from compressai_vlic.options import check_option

log = logging.getLogger(__name__)

PerceptualType = Literal["lpips", "ms_ssim", "student", "none"]
PerceptualFallbackType = Literal["ms_ssim", "none", "error"]


@dataclass(frozen=True)
class PerceptualChoice:
    """What was asked for, what runs, and why they differ (logged and stored in hparams)."""

    requested: str
    active: str
    reason: str = ""


class MSSSIMLoss(nn.Module):
    """1 - MS-SSIM on as many scales as the image allows (small training crops get fewer).

    The metric's own reduced-scale MS-SSIM (``compressai_vlic.metrics.fidelity``), with inputs
    clamped to [0, 1] and per-scale terms floored at ``eps`` so the powers stay differentiable.
    """

    def __init__(self, win_size: int = 11, eps: float = 1e-4) -> None:
        super().__init__()
        self.win_size = win_size
        self.eps = eps

    def levels(self, side: int) -> int:
        from compressai_vlic.metrics.fidelity import ms_ssim_levels

        return ms_ssim_levels(side, side, self.win_size)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        from compressai_vlic.metrics.fidelity import ms_ssim_reduced

        x = prediction.float().clamp(0, 1)
        y = target.float().clamp(0, 1)
        levels = self.levels(min(x.shape[-2:]))
        if levels < 1:
            raise ConfigError(f"ms_ssim loss needs images larger than {self.win_size} px per side")
        value = ms_ssim_reduced(
            x, y, levels, data_range=1.0, floor=self.eps, win_size=self.win_size
        )
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
        # On the CPU, autocast would run the backbone's convolutions in bf16, which PyTorch's CPU
        # kernels execute about 10x slower than float32 (VGG at 256 px: minutes per step).
        on_cpu = prediction.device.type == "cpu"
        with torch.autocast("cpu", enabled=False) if on_cpu else contextlib.nullcontext():
            return self.net(prediction.float(), target.float(), normalize=True).mean()


def make_perceptual_loss(
    perceptual_type: PerceptualType = "lpips",
    fallback_type: PerceptualFallbackType = "ms_ssim",
    lpips_net_type: str = "alex",
    lpips_weights: str | None = None,
    student_path: str | None = None,
) -> tuple[nn.Module | None, PerceptualChoice]:
    """Build the stage-1 perceptual loss; returns (loss or None, what was chosen and why)."""
    check_option("perceptual_type", perceptual_type, PerceptualType, ConfigError)
    check_option("perceptual_fallback_type", fallback_type, PerceptualFallbackType, ConfigError)
    if perceptual_type == "none":
        return None, PerceptualChoice("none", "none")
    if perceptual_type == "ms_ssim":
        return MSSSIMLoss(), PerceptualChoice("ms_ssim", "ms_ssim")
    if perceptual_type == "student":  # a missing student is always an error: it was asked for
        if not student_path:
            raise ConfigError(
                "perceptual_type 'student' needs student_path (a trained student folder)"
            )
        from compressai_vlic.student.loss import StudentLoss

        return StudentLoss(student_path), PerceptualChoice("student", "student")
    try:
        return LPIPSLoss(lpips_net_type, lpips_weights), PerceptualChoice("lpips", "lpips")
    except MetricUnavailableError as exc:
        if fallback_type == "error":
            raise
        reason = f"LPIPS unavailable ({exc}); training with {fallback_type!r} instead"
        log.warning(reason)
        loss = MSSSIMLoss() if fallback_type == "ms_ssim" else None
        return loss, PerceptualChoice("lpips", fallback_type, reason)


def perceptual_distance(module: nn.Module, x0_hat: Tensor, x: Tensor) -> Tensor:
    """``module(x0_hat, x)`` with the (frozen, unregistered) network moved to the images' device."""
    if next(iter(module.buffers()), x).device != x.device:
        module.to(x.device)
    return module(x0_hat, x)
