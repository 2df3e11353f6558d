"""Diffusion-DPO loss: hand-computed values, the CompressAI criterion registry, model outputs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.errors import ConfigError
from compressai_vlic.losses import VLMRewardLoss, diffusion_dpo_loss, timestep_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _neg_log_sigmoid(z: float) -> float:
    return math.log1p(math.exp(-z))


def test_dpo_loss_matches_hand_computed_values():
    err_w = torch.tensor([0.5, 0.2])
    err_l = torch.tensor([0.3, 0.4])
    ref_w = torch.tensor([0.4, 0.3])
    ref_l = torch.tensor([0.4, 0.3])
    t = torch.tensor([0.5, 0.0])
    out = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, t, beta=10.0, weighting_type="eps")
    # D_w = [0.1, -0.1], D_l = [-0.1, 0.1]; w(t) = (1-t)^2 = [0.25, 1]
    # logits = -10 * w * (D_w - D_l) = [-0.5, 2.0]
    expected_logits = [-0.5, 2.0]
    assert out.logits.tolist() == pytest.approx(expected_logits, abs=1e-6)
    expected = (_neg_log_sigmoid(-0.5) + _neg_log_sigmoid(2.0)) / 2
    assert float(out.dpo_loss) == pytest.approx(expected, abs=1e-6)
    assert float(out.dpo_loss) == pytest.approx(0.5505025, abs=1e-6)
    assert float(out.implicit_accuracy) == 0.5
    assert float(out.reward_margin) == pytest.approx(0.75, abs=1e-6)
    assert float(out.loss) == pytest.approx(expected, abs=1e-6)  # no flow term given


def test_flow_term_and_weightings():
    e = torch.tensor([0.2])
    flow = torch.tensor(0.7)
    out = diffusion_dpo_loss(
        e, e, e, e, torch.tensor([0.3]), beta=5.0, flow_loss=flow, lambda_flow=2.0
    )
    # identical errors: logits 0 -> -log sigmoid(0) = log 2; ties count half for accuracy
    assert float(out.dpo_loss) == pytest.approx(math.log(2.0))
    assert float(out.loss) == pytest.approx(math.log(2.0) + 1.4)
    assert float(out.implicit_accuracy) == 0.5
    t = torch.tensor([0.0, 0.25, 1.0])
    assert timestep_weight(t, "uniform").tolist() == [1.0, 1.0, 1.0]
    assert timestep_weight(t, "eps").tolist() == [1.0, 0.5625, 0.0]
    assert timestep_weight(t, "x0").tolist() == [0.0, 0.0625, 1.0]
    with pytest.raises(ConfigError, match="weighting_type"):
        VLMRewardLoss(weighting_type="snr")
    with pytest.raises(ConfigError, match="beta"):
        VLMRewardLoss(beta=0)


def test_registered_as_compressai_criterion():
    from compressai import registry

    from compressai_vlic.plugins import register_entry_points

    register_entry_points()
    assert "vlic_dpo" in registry.CRITERIONS
    criterion = registry.CRITERIONS["vlic_dpo"](beta=100.0, weighting_type="uniform")
    assert isinstance(criterion, VLMRewardLoss)
    assert criterion.beta == 100.0


def test_criterion_on_model_outputs_without_lightning(photos):
    """Call the criterion on VLIC.flow_matching outputs; compare with a by-hand computation."""
    from compressai_vlic.zoo import vlic

    torch.manual_seed(0)
    policy = vlic("test").eval()
    reference = copy.deepcopy(policy)
    with torch.no_grad():  # make the policy differ from the reference
        for p in policy.decoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    size = policy.config.image_size
    original = torch.cat([photo_tensor(photos[n], (size, size)) for n in ("astronaut", "coffee")])
    winner = (original + 0.02).clamp(0, 1)
    loser = (original - 0.05).clamp(0, 1)
    t = torch.tensor([0.3, 0.8])
    noise = torch.randn_like(original)
    keep = torch.zeros(2, dtype=torch.bool)
    codes = policy.encode(original).codes
    ref_codes = reference.encode(original).codes

    def fm(model, x, c):
        return model.flow_matching(x, c, t=t, noise=noise, drop_mask=keep)

    pw, pl_, rw, rl = (
        fm(policy, winner, codes),
        fm(policy, loser, codes),
        fm(reference, winner, ref_codes),
        fm(reference, loser, ref_codes),
    )
    criterion = VLMRewardLoss(beta=500.0, weighting_type="eps", lambda_flow=0.5)
    out = criterion(pw, pl_, rw, rl, flow=pw)

    def err(o, i):
        d = (o.v_target[i] - o.v_pred[i]).detach().double()
        return float((d * d).mean())

    losses = []
    for i in range(2):
        d_w = err(pw, i) - err(rw, i)
        d_l = err(pl_, i) - err(rl, i)
        z = -500.0 * (1 - float(t[i])) ** 2 * (d_w - d_l)
        losses.append(_neg_log_sigmoid(z))
    expected = sum(losses) / 2
    assert float(out.dpo_loss) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert float(out["loss"]) == pytest.approx(expected + 0.5 * float(pw.loss), rel=1e-4)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.decoder.parameters())
    # winner and loser at different timesteps is a usage error
    other = policy.flow_matching(loser, codes, t=t.flip(0), noise=noise, drop_mask=keep)
    with pytest.raises(ConfigError, match="timesteps"):
        criterion(pw, other, rw, rl)
