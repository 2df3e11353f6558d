"""Soft-label Diffusion-DPO: the expected loss under the judge's P(winner), and a toy where it pays."""

from __future__ import annotations

import math

import pytest
import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.losses import VLMRewardLoss, diffusion_dpo_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _nls(z: float) -> float:  # -log sigmoid(z)
    return math.log1p(math.exp(-z))


def test_soft_loss_is_the_expected_loss_under_p():
    err_w, err_l = torch.tensor([0.5, 0.2, 0.3]), torch.tensor([0.3, 0.4, 0.3])
    ref = torch.tensor([0.4, 0.3, 0.2])
    t = torch.tensor([0.5, 0.0, 0.2])
    p = torch.tensor([0.8, 1.0, float("nan")])
    hard = diffusion_dpo_loss(err_w, err_l, ref, ref, t, beta=10.0)
    soft = diffusion_dpo_loss(
        err_w, err_l, ref, ref, t, beta=10.0, label_type="soft", prob_winner=p
    )
    z = hard.logits.tolist()
    assert z == pytest.approx([-0.5, 2.0, 0.0], abs=1e-6)
    expected = (0.8 * _nls(z[0]) + 0.2 * _nls(-z[0]) + _nls(z[1]) + _nls(z[2])) / 3
    assert float(soft.dpo_loss) == pytest.approx(expected, abs=1e-6)
    # p = 1 (and a missing p) is the hard loss; "hard" ignores the probabilities
    ones = diffusion_dpo_loss(
        err_w, err_l, ref, ref, t, beta=10.0, label_type="soft", prob_winner=torch.ones(3)
    )
    assert float(ones.dpo_loss) == pytest.approx(float(hard.dpo_loss), abs=1e-7)
    ignored = diffusion_dpo_loss(err_w, err_l, ref, ref, t, beta=10.0, prob_winner=p)
    assert float(ignored.dpo_loss) == pytest.approx(float(hard.dpo_loss), abs=1e-7)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        diffusion_dpo_loss(
            err_w, err_l, ref, ref, t, label_type="soft", prob_winner=torch.tensor([1.5, 0, 0])
        )
    with pytest.raises(ConfigError, match="label_type"):
        VLMRewardLoss(label_type="smooth")  # type: ignore[arg-type]
    assert VLMRewardLoss().label_type == "hard"  # off by default


def _velocity(mu: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact rectified-flow velocity E[eps - x | x_t] for data N(mu, 1): its samples have mean mu."""
    k = (2 * t - 1) / ((1 - t) ** 2 + t**2)
    return -mu + k * (x_t - (1 - t) * mu)


def _train(label_type: str, data, seed: int, steps: int = 120) -> float:
    """Diffusion-DPO of the generator's mean from a fixed, noisily judged pair set."""
    xa, xb, pa, chose_a = data
    g = torch.Generator().manual_seed(1000 + seed)
    mu = torch.zeros((), requires_grad=True)
    reference = torch.zeros(())
    opt = torch.optim.Adam([mu], lr=0.003)
    for _ in range(steps):
        idx = torch.randint(0, xa.numel(), (16,), generator=g)
        t = torch.rand(16, generator=g) * 0.98 + 0.01
        eps = torch.randn(16, generator=g)
        a, b, p, h = xa[idx], xb[idx], pa[idx], chose_a[idx]
        w, lose = torch.where(h, a, b), torch.where(h, b, a)

        def err(m: torch.Tensor, x: torch.Tensor, t=t, eps=eps) -> torch.Tensor:
            x_t = (1 - t) * x + t * eps
            return (_velocity(m, x_t, t) - (eps - x)) ** 2

        out = diffusion_dpo_loss(
            err(mu, w),
            err(mu, lose),
            err(reference, w),
            err(reference, lose),
            t,
            beta=5.0,
            label_type=label_type,
            prob_winner=torch.where(h, p, 1 - p),
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return float(mu.detach())


def test_soft_labels_learn_the_preferred_property_at_least_as_fast_with_noisy_labels():
    """The judge prefers the larger sample; it reports a calibrated P(A) but *answers* by sampling
    from it, so about 27% of the hard labels are flipped. Both label types move the generator
    towards larger samples; the soft loss, which uses P(A), gets at least as far in 120 steps."""
    hard_mu, soft_mu, flips = [], [], []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        xa, xb = torch.randn(256, generator=g), torch.randn(256, generator=g)
        pa = torch.sigmoid(xa - xb)
        chose_a = torch.rand(256, generator=g) < pa
        flips.append(float((chose_a != (xa > xb)).float().mean()))
        data = (xa, xb, pa, chose_a)
        hard_mu.append(_train("hard", data, seed))
        soft_mu.append(_train("soft", data, seed))
    assert 0.2 < sum(flips) / 3 < 0.35  # the label noise is what the test is about
    assert min(hard_mu) > 0.15 and min(soft_mu) > 0.15  # both learn the property (mean 0 before)
    assert sum(soft_mu) >= sum(hard_mu)
    # the probabilities carry the signal: inverted, soft labels unlearn the property
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.randn(256, generator=g), torch.randn(256, generator=g)
    pa = torch.sigmoid(xa - xb)
    inverted = _train("soft", (xa, xb, 1 - pa, xa > xb), 0)
    assert inverted < -0.15
