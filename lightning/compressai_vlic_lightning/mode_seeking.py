"""FlowMo's second stage, optional: mode-seeking post-training through the sampling chain.

FlowMo (Sargent et al. 2025) follows pre-training with a short stage that decodes each training
image with a few random Euler steps *with gradients* (each step recomputed in backward) and adds a
small perceptual loss between that sample and the image to the usual flow-matching loss
(``model.posttrain_sample: true``, ``opt.lpips_weight: 0.01``, ``opt.lr: 5e-5``, batch 8 per GPU,
25k steps in FlowMo's README; the chain is ``FlowMo.reconstruct_checkpoint`` in
``flowmo/models.py``). Its pre-training has frozen the encoder by then (``freeze_encoder_after``),
so only the decoder moves and the tokens, hence the rate, stay as they are.

This module runs it from YAML between stage 1 and the preference stage, in either order: it starts
from any codec checkpoint (``init_from``) and writes one that stage 2 (or this stage) starts from.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.utils.checkpoint
from torch import Tensor

from compressai_vlic.errors import ConfigError
from compressai_vlic.models.vlic import sample_t
from compressai_vlic_lightning.common import NOT_GIVEN, CompileMode, NormMode
from compressai_vlic_lightning.perceptual import PerceptualFallbackType, PerceptualType
from compressai_vlic_lightning.stage1 import Stage1Module


class ModeSeekingModule(Stage1Module):
    """Flow matching + a perceptual loss on samples drawn through ``sample_steps`` Euler steps.

    Args:
        quality: zoo quality the model is built from.
        model_overrides: VLIC config overrides (must match the weights' model).
        weights: the codec to post-train: a stage-1, stage-2 or mode-seeking checkpoint, a
            CompressAI one, ``tiny`` or any spec of :func:`compressai_vlic.pretrained.load_weights`.
        init_from: the older name of ``weights``; when given (even as None) it wins.
        lr: learning rate (FlowMo's post-training: 5e-5).
        weight_decay: AdamW weight decay.
        betas: AdamW betas (FlowMo's (0.9, 0.95)).
        warmup_steps: linear learning-rate warm-up.
        sample_steps: Euler steps of the differentiable chain (FlowMo's ``posttrain_sample_k``:
            8); the step sizes are random per sample, from t = 1 to 0, no guidance (FlowMo's
            ``posttrain_sample_enable_cfg: False``).
        flow_weight: weight of the flow-matching loss (FlowMo keeps it at 1).
        perceptual_type: loss between the chain's sample and the image: "lpips" (default),
            "ms_ssim", "student" or "none". FlowMo uses its own ResNet perceptual loss
            (``lpips_mode: resnet``), which this package does not ship; LPIPS-VGG is the default.
        perceptual_fallback_type: when LPIPS weights are missing.
        perceptual_weight: weight of that loss (FlowMo: 0.01).
        lpips_net_type: LPIPS backbone.
        lpips_weights: path of the LPIPS backbone weights.
        student_path: folder of a student judge for ``perceptual_type="student"``.
        prior_weight: weight of the prior's token NLL (0: the prior is left as it is).
        freeze_encoder_after: step from which the encoder is frozen (default 0: from the start,
            as in FlowMo, whose post-training resumes past its 200k-step freeze); None trains it
            (then refit the prior, ``paper_q*_prior_refit.yaml``, as the tokens move).
        fix_initial_norms: FlowMo's fixed weight norms (on, as in FlowMo's post-training).
        fix_norm_mode: "l2" or "channel".
        t_sampler: noise levels of the flow-matching term ("fat_lognormal", FlowMo's).
        val_decode_batches: validation batches decoded with the sampler for PSNR.
        val_seed: seed of validation noise and decodes.
        gradient_checkpointing: also recompute each block inside a step (the chain's steps are
            always recomputed one at a time in backward).
        compile_mode: ``torch.compile`` of the transformer blocks.
    """

    def __init__(
        self,
        quality: str = "test",
        model_overrides: dict[str, Any] | None = None,
        weights: str | None = None,
        init_from: str | None = NOT_GIVEN,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        sample_steps: int = 8,
        flow_weight: float = 1.0,
        perceptual_type: PerceptualType = "lpips",
        perceptual_fallback_type: PerceptualFallbackType = "ms_ssim",
        perceptual_weight: float = 0.01,
        lpips_net_type: str = "vgg",
        lpips_weights: str | None = None,
        student_path: str | None = None,
        prior_weight: float = 0.0,
        freeze_encoder_after: int | None = 0,
        fix_initial_norms: bool = True,
        fix_norm_mode: NormMode = "l2",
        t_sampler: Literal["fat_lognormal", "lognormal"] = "fat_lognormal",
        val_decode_batches: int = 1,
        val_seed: int = 0,
        gradient_checkpointing: bool = False,
        compile_mode: CompileMode = "none",
    ) -> None:
        if sample_steps < 1:
            raise ConfigError(f"sample_steps must be >= 1, got {sample_steps}")
        if flow_weight < 0:
            raise ConfigError(f"flow_weight must be >= 0, got {flow_weight}")
        super().__init__(
            quality=quality,
            model_overrides=model_overrides,
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            t_sampler=t_sampler,
            freeze_encoder_after=freeze_encoder_after,
            fix_initial_norms=fix_initial_norms,
            fix_norm_mode=fix_norm_mode,
            warmup_steps=warmup_steps,
            perceptual_type=perceptual_type,
            perceptual_fallback_type=perceptual_fallback_type,
            perceptual_weight=perceptual_weight,
            lpips_net_type=lpips_net_type,
            lpips_weights=lpips_weights,
            student_path=student_path,
            prior_weight=prior_weight,
            weights=weights,
            init_from=init_from,
            val_decode_batches=val_decode_batches,
            val_seed=val_seed,
            gradient_checkpointing=gradient_checkpointing,
            compile_mode=compile_mode,
        )
        # save_hyperparameters keeps this class's arguments; stage 1's others keep their defaults.
        for name, param in inspect.signature(Stage1Module.__init__).parameters.items():
            if name != "self" and name not in self.hparams:
                self.hparams[name] = param.default

    def sample_chain(self, codes: Tensor) -> Tensor:
        """Images in [0, 1] sampled from ``codes`` with gradients through every Euler step.

        Each step's network call is recomputed in backward (as FlowMo's ``decode_checkpointed``),
        so memory holds one step's activations at a time plus the k intermediate images.
        """
        model, k = self.model, self.hparams.sample_steps
        size, b = model.config.image_size, codes.shape[0]
        z = torch.randn(b, model.config.in_channels, size, size, device=codes.device)
        ts = torch.rand(b, k + 1, device=codes.device).cumsum(dim=1)
        ts = ts - ts[:, :1]
        ts = (ts / ts[:, -1:]).flip(dims=(1,))  # per sample: 1 = t_0 > t_1 > ... > t_k = 0
        for i in range(k):
            t, dt = ts[:, i], (ts[:, i] - ts[:, i + 1]).view(-1, 1, 1, 1)
            if torch.is_grad_enabled():
                v = torch.utils.checkpoint.checkpoint(
                    model.velocity, z, t, codes, use_reentrant=False
                )
            else:
                v = model.velocity(z, t, codes)
            z = z - dt * v
        return (z + 1.0) / 2.0

    def compute_losses(self, x: Tensor) -> dict[str, Tensor]:
        hp = self.hparams
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            enc = self.model.encode(x)
        t = sample_t(x.shape[0], hp.t_sampler, device=x.device)
        fm = self.model.flow_matching(x, enc.codes, t=t)
        loss = hp.flow_weight * fm.loss
        out = {"flow": fm.loss.detach()}
        if hp.perceptual_weight > 0 and self._perceptual:
            perceptual = self._perceptual_loss(self.sample_chain(enc.codes), x)
            loss = loss + hp.perceptual_weight * perceptual
            out["perceptual_chain"] = perceptual.detach()
        if hp.prior_weight > 0:
            bits = self.model.token_nll_bits(enc.indices.detach())
            prior_bpp = bits.float().mean() / (x.shape[-2] * x.shape[-1])
            loss = loss + hp.prior_weight * prior_bpp
            out["bpp_prior"] = prior_bpp.detach()
        out["loss"] = loss
        return out
