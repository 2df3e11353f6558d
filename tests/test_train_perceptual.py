"""The stage-1 perceptual losses: real LPIPS with gradients, and the one shared MS-SSIM."""

from __future__ import annotations

import pytest
import torch
from compressai_vlic_lightning.perceptual import MSSSIMLoss, make_perceptual_loss
from conftest import photo_tensor
from pytorch_msssim import ms_ssim

from compressai_vlic.metrics import get_metric
from compressai_vlic.metrics.weights import locate


def test_ms_ssim_loss_is_the_metric_ms_ssim(photos):
    x = photo_tensor(photos["astronaut"], crop=(192, 192))
    y = (x * 0.9 + 0.05).clamp(0, 1)
    loss = MSSSIMLoss()(x, y)
    expected = ms_ssim(x, y, data_range=1.0, size_average=True)
    assert loss.item() == pytest.approx(1 - expected.item(), abs=1e-5)
    small = MSSSIMLoss()(x[..., :32, :32], y[..., :32, :32])  # 2 scales on a training crop
    assert 0 < small.item() < 1


def test_lpips_loss_is_real_lpips_with_gradients(photos):
    if locate("alexnet").path is None or locate("lpips-alex").path is None:
        pytest.skip("LPIPS weights not installed (run `compressai-vlic weights fetch`)")
    loss, choice = make_perceptual_loss("lpips", fallback_type="error")
    assert choice.active == "lpips" and not choice.reason
    target = photo_tensor(photos["coffee"], crop=(64, 64))
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1).requires_grad_(True)
    value = loss(pred, target)
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    metric = get_metric("lpips")
    assert value.item() == pytest.approx(metric(target, pred.detach()).item(), abs=1e-5)


def test_lpips_loss_runs_in_float32_under_cpu_autocast():
    """CPU bf16 convolutions without bf16 instructions are ~10x slower: the backbone stays float32."""
    from compressai_vlic_lightning.perceptual import LPIPSLoss

    loss = LPIPSLoss.__new__(LPIPSLoss)
    torch.nn.Module.__init__(loss)
    seen = []

    class Net(torch.nn.Module):
        def forward(self, a, b, normalize):
            seen.append(
                torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else a.dtype
            )
            return (a - b).abs().mean(dim=(1, 2, 3))

    loss.net = Net()
    x = torch.rand(1, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss(x, x.flip(-1))
    assert seen == [torch.float32]


def test_trainer_warns_before_bf16_on_a_cpu_without_bf16_instructions(monkeypatch):
    from compressai_vlic_lightning import cli

    monkeypatch.setattr(cli, "cpu_bf16_is_fast", lambda: False)
    assert "32-true" in cli.slow_cpu_precision("cpu", "bf16-mixed")
    assert cli.slow_cpu_precision("cpu", "32-true") is None
    assert cli.slow_cpu_precision("gpu", "bf16-mixed") is None
    monkeypatch.setattr(cli, "cpu_bf16_is_fast", lambda: True)
    assert cli.slow_cpu_precision("cpu", "bf16-mixed") is None
