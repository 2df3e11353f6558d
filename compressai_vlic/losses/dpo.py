"""Diffusion-DPO for rectified-flow decoders: the "VLM-reward loss" of VLIC post-training.

Wallace et al.'s Diffusion-DPO compares how much better the trained model denoises the preferred
sample than the frozen reference does, relative to the rejected sample. With velocity targets
(x_t = (1-t) x + t eps, v = eps - x):

    D(x) = ||v - v_theta(x_t, t)||^2 - ||v - v_ref(x_t, t)||^2      (mean over pixels, per sample)
    L_DPO = -log sigmoid(-beta * w(t) * (D(x_w) - D(x_l)))
    L = L_DPO + lambda_flow * L_flow

Winner and loser must share the noise and the timestep, otherwise the difference D(x_w) - D(x_l)
measures the noise draw instead of the preference.

How this relates to the public Diffusion-DPO code (SalesforceAIResearch/DiffusionDPO,
``train.py``): there, D is the per-element mean of ||eps - eps_theta||^2 of Stable Diffusion's
eps-prediction UNet, and L = -log sigmoid(-0.5 * beta_dpo * (D(x_w) - D(x_l))) with
``beta_dpo=5000``, no timestep weight, and DDPM timesteps drawn uniformly from 0..999.

What matches: with x_t = (1-t) x + t eps and v = eps - x, the noise estimate is
eps_hat = x_t + (1-t) v_hat, so ||eps - eps_hat||^2 = (1-t)^2 ||v - v_hat||^2. The velocity form
with ``weighting_type="eps"`` is therefore the eps form at the same noise level (the weight w(t)
is the only difference between the parametrisations), and ``beta=2500`` is its 0.5 * 5000.

What does not match, so beta is a value to tune, not one carried over:
- the noise-level distribution: uniform DDPM steps under SD's scaled-linear schedule weight the
  noise levels differently from the t drawn here (``Stage2Module.t_sampling_type``);
- the space: SD's 4-channel VAE latents (scaled to about unit variance) against pixels in
  [-1, 1] here, so per-element errors, and their differences, have another magnitude;
- the model and its step: beta multiplies differences of errors whose size depends on how far
  the policy has moved from the reference, i.e. on the learning rate and the model.
VLIC's own beta, w(t) and lambda_flow are not published; these are documented defaults.

Soft labels (``label_type="soft"``): a judge that reports P(A) gives P(winner better) = p, and the
loss is the expected DPO loss under that label, L = p * l(w, l) + (1 - p) * l(l, w) with
l(w, l) = -log sigmoid(z), l(l, w) = -log sigmoid(-z), z = -beta * w(t) * (D(x_w) - D(x_l))
(conservative DPO with a per-pair, judge-given flip probability). p = 1 is the hard loss; pairs without a probability use p = 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressai_vlic._compressai import register_criterion
from compressai_vlic.errors import ConfigError
from compressai_vlic.options import check_option

WeightingType = Literal["uniform", "eps", "x0"]
LabelType = Literal["hard", "soft"]
DEFAULT_BETA = 2500.0
DEFAULT_WEIGHTING = "eps"
DEFAULT_LAMBDA_FLOW = 1.0


def timestep_weight(t: Tensor, weighting_type: WeightingType) -> Tensor:
    """w(t) that turns a velocity error into the error of another parametrisation.

    ``uniform``: the velocity error itself; ``eps``: (1-t)^2 (noise-prediction error);
    ``x0``: t^2 (clean-image error, since x0_hat = x_t - t v_hat).
    """
    check_option("weighting_type", weighting_type, WeightingType)
    if weighting_type == "uniform":
        return torch.ones_like(t)
    if weighting_type == "eps":
        return (1.0 - t) ** 2
    return t**2


def per_sample_error(target: Tensor, prediction: Tensor) -> Tensor:
    """Squared error averaged over every non-batch dimension -> (B,), in float32."""
    diff = target.float() - prediction.float()
    return diff.pow(2).flatten(1).mean(dim=1)


@dataclass
class DPOOutput:
    """Result of one DPO evaluation.

    ``implicit_accuracy`` is the fraction of pairs whose implicit reward already ranks the winner
    first (ties count half); ``reward_margin`` is the mean of -beta*w(t)*(D_w - D_l), i.e. the
    implicit reward of the winner minus that of the loser. Supports ``out["loss"]`` so CompressAI
    style training loops can use it like ``RateDistortionLoss``'s dict.
    """

    loss: Tensor
    dpo_loss: Tensor
    flow_loss: Tensor
    implicit_accuracy: Tensor
    reward_margin: Tensor
    logits: Tensor

    def __getitem__(self, key: str) -> Tensor:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return list(self.__dataclass_fields__)

    def scalars(self) -> dict[str, float]:
        """Detached scalar values for logging (``logits`` left out)."""
        return {k: float(v.detach()) for k, v in asdict(self).items() if k != "logits"}


def diffusion_dpo_loss(
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor,
    ref_err_l: Tensor,
    t: Tensor,
    beta: float = DEFAULT_BETA,
    weighting_type: WeightingType = DEFAULT_WEIGHTING,
    flow_loss: Tensor | None = None,
    lambda_flow: float = DEFAULT_LAMBDA_FLOW,
    label_type: LabelType = "hard",
    prob_winner: Tensor | None = None,
) -> DPOOutput:
    """DPO loss from per-sample velocity errors (each (B,)) of the trained and reference model.

    Args:
        label_type: "hard" (default): the winner is preferred for sure; "soft": the expected
            loss under ``prob_winner`` (the judge's P(winner better); NaN entries count as 1).
        prob_winner: (B,) probabilities in [0, 1], used only with ``label_type="soft"``.
    """
    check_option("label_type", label_type, LabelType)
    shapes = {tuple(x.shape) for x in (err_w, err_l, ref_err_w, ref_err_l)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ConfigError(
            f"per-sample errors must all be (B,) tensors, got shapes {sorted(shapes)}"
        )
    t = t.float().reshape(-1)
    if t.numel() != err_w.numel():
        raise ConfigError(f"t has {t.numel()} values for {err_w.numel()} pairs")
    d_w = err_w - ref_err_w
    d_l = err_l - ref_err_l
    logits = -beta * timestep_weight(t, weighting_type) * (d_w - d_l)
    if label_type == "soft" and prob_winner is not None:
        p = prob_winner.to(device=logits.device, dtype=logits.dtype).reshape(-1)
        if p.numel() != logits.numel():
            raise ConfigError(f"prob_winner has {p.numel()} values for {logits.numel()} pairs")
        p = torch.where(torch.isnan(p), torch.ones_like(p), p)
        if bool(((p < 0) | (p > 1)).any()):
            raise ConfigError("prob_winner must lie in [0, 1]")
        dpo = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).mean()
    else:
        dpo = -F.logsigmoid(logits).mean()
    flow = flow_loss if flow_loss is not None else torch.zeros((), device=dpo.device)
    accuracy = ((logits > 0).float() + 0.5 * (logits == 0).float()).mean()
    return DPOOutput(
        loss=dpo + lambda_flow * flow,
        dpo_loss=dpo,
        flow_loss=flow,
        implicit_accuracy=accuracy.detach(),
        reward_margin=logits.detach().mean(),
        logits=logits,
    )


def _field(output: Any, name: str) -> Any:
    if isinstance(output, Mapping):
        return output[name]
    return getattr(output, name)


@register_criterion("vlic_dpo")
class VLMRewardLoss(nn.Module):
    """Diffusion-DPO criterion for VLIC decoders ("VLM-reward loss"), usable without Lightning.

    Call it on four flow-matching outputs of the model (anything with ``v_target``, ``v_pred``
    and ``t``, e.g. ``VLIC.flow_matching`` results or dicts): the trained model and the frozen
    reference, each on the winner and the loser (same noise and t). ``flow`` is the flow-matching
    regulariser: a loss tensor or an output with ``.loss``; ``prob_winner`` the judge's
    P(winner better) per pair for ``label_type="soft"``.

    Args:
        beta: DPO temperature (default 2500: the public eps-prediction code's 0.5 * 5000; tune it).
        weighting_type: w(t): "eps" (1-t)^2 (default), "uniform", "x0" t^2.
        lambda_flow: weight of the flow-matching regulariser (default 1.0).
        label_type: "hard" (default) or "soft" (expected loss under the judge's P(winner)).
    """

    def __init__(
        self,
        beta: float = DEFAULT_BETA,
        weighting_type: WeightingType = DEFAULT_WEIGHTING,
        lambda_flow: float = DEFAULT_LAMBDA_FLOW,
        label_type: LabelType = "hard",
    ) -> None:
        super().__init__()
        check_option("label_type", label_type, LabelType)
        self.label_type = label_type
        if beta <= 0:
            raise ConfigError(f"beta must be positive, got {beta}")
        if lambda_flow < 0:
            raise ConfigError(f"lambda_flow must be >= 0, got {lambda_flow}")
        timestep_weight(torch.zeros(1), weighting_type)  # validates the name early
        self.beta = float(beta)
        self.weighting_type = weighting_type
        self.lambda_flow = float(lambda_flow)

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, weighting_type={self.weighting_type!r}, "
            f"lambda_flow={self.lambda_flow}, label_type={self.label_type!r}"
        )

    def forward(
        self,
        policy_w: Any,
        policy_l: Any,
        ref_w: Any,
        ref_l: Any,
        flow: Any = None,
        prob_winner: Tensor | None = None,
    ) -> DPOOutput:
        t = _field(policy_w, "t")
        for name, other in (
            ("loser", policy_l),
            ("reference winner", ref_w),
            ("reference loser", ref_l),
        ):
            if not torch.equal(_field(other, "t"), t):
                raise ConfigError(f"the {name} was evaluated at other timesteps than the winner")
        for policy, ref in ((policy_w, ref_w), (policy_l, ref_l)):
            if not torch.equal(_field(policy, "v_target"), _field(ref, "v_target")):
                raise ConfigError("trained and reference model must be evaluated on the same x_t")
        noise_w = _maybe_field(policy_w, "noise")
        noise_l = _maybe_field(policy_l, "noise")
        if noise_w is not None and noise_l is not None and not torch.equal(noise_w, noise_l):
            raise ConfigError("winner and loser must share the same noise")
        flow_loss = None
        if flow is not None:
            flow_loss = flow if isinstance(flow, Tensor) else _field(flow, "loss")
        return diffusion_dpo_loss(
            per_sample_error(_field(policy_w, "v_target"), _field(policy_w, "v_pred")),
            per_sample_error(_field(policy_l, "v_target"), _field(policy_l, "v_pred")),
            per_sample_error(_field(ref_w, "v_target"), _field(ref_w, "v_pred")),
            per_sample_error(_field(ref_l, "v_target"), _field(ref_l, "v_pred")),
            t,
            beta=self.beta,
            weighting_type=self.weighting_type,
            flow_loss=flow_loss,
            lambda_flow=self.lambda_flow,
            label_type=self.label_type,
            prob_winner=prob_winner,
        )


def _maybe_field(output: Any, name: str) -> Tensor | None:
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)
