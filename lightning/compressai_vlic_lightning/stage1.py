"""Stage 1: pre-train the codec (encoder, FSQ, flow decoder) and its token prior.

Loss (per batch of training-resolution crops x):
    flow-matching ||v - v_theta(x_t, t, code)||^2        (codes dropped with p=code_dropout: CFG)
  + perceptual_weight * P(x0_hat, x)                    (LPIPS by default, on the one-step estimate)
  + prior_weight * bpp of the token prior               (trains the AR prior; indices are discrete)
  + rate_weight * bpp through a straight-through path    (optional: lets the rate shape the encoder)

VLIC uses no rate term (the bottleneck fixes the rate), hence ``rate_weight=0`` by default.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import Tensor

from compressai_vlic.errors import ConfigError
from compressai_vlic.models.vlic import T_SAMPLERS, sample_t
from compressai_vlic.options import check_option
from compressai_vlic_lightning.checkpointing import ResumableModule
from compressai_vlic_lightning.common import (
    NOT_GIVEN,
    CompileMode,
    InitialNorms,
    NormMode,
    adamw,
    apply_speed_options,
    build_model,
    fixed_flow_matching,
    load_codec_weights,
    psnr,
    weights_spec,
)
from compressai_vlic_lightning.perceptual import (
    PerceptualFallbackType,
    PerceptualType,
    make_perceptual_loss,
    perceptual_distance,
)

log = logging.getLogger(__name__)


def straight_through_bits(model: Any, codes: Tensor, indices: Tensor) -> Tensor:
    """(B,) token bits whose gradient reaches the encoder through the FSQ codes.

    The value equals the prior's NLL of ``indices``; the gradient is that of the log-probability
    linearly interpolated between neighbouring levels at the straight-through digit value, so a
    latent moving towards a cheaper level lowers the rate. Prior logits are detached: the prior
    is trained by its own NLL term.
    """
    logits = model.prior(indices).logits
    half = model.fsq._half_width.to(codes.device)
    digits = indices.float() + (codes - codes.detach()) * half  # value == indices, grad via codes
    total = torch.zeros(codes.shape[0], device=codes.device)
    for j, lg in enumerate(logits):
        logp = torch.log_softmax(lg.detach().float(), dim=-1) / -torch.log(torch.tensor(2.0))
        levels = lg.shape[-1]
        idx = indices[..., j]
        lo = idx.clamp(max=levels - 2)
        bits_lo = logp.gather(-1, lo.unsqueeze(-1)).squeeze(-1)
        bits_hi = logp.gather(-1, (lo + 1).unsqueeze(-1)).squeeze(-1)
        bits = bits_lo + (digits[..., j] - lo.float()) * (bits_hi - bits_lo)
        total = total + bits.sum(dim=1)
    return total


class Stage1Module(ResumableModule):
    """Rate-distortion pre-training of VLIC (flow matching + perceptual + prior NLL).

    Args:
        quality: zoo quality ("test", "tiny", 1, 2) the model is built from.
        model_overrides: VLIC config field overrides, e.g. {"encoder_width": 64}.
        lr: learning rate of encoder/decoder (VLIC: 1e-4 at batch 256).
        prior_lr: learning rate of the token prior (default: lr).
        weight_decay: AdamW weight decay.
        betas: AdamW betas (default (0.9, 0.95), FlowMo's).
        t_sampler: training noise levels: "fat_lognormal" (default, FlowMo's: logit-normal with
            ``t_uniform_share`` of uniform t) or "lognormal" (logit-normal only).
        t_uniform_share: share of uniform t in "fat_lognormal" (default 0.1, FlowMo's).
        t_noise_share: share of t set to 1, pure noise, where the decoder rebuilds the image from
            the code alone (default 0, FlowMo's; the shipped tiny model uses 0.25: without it a
            small, briefly trained decoder learns to denoise long before it learns to use its
            code).
        freeze_encoder_after: from this global step on, the encoder (and with it the tokens:
            FSQ has no weights) gets no gradient and no optimizer updates, while the decoder and
            prior train on. Default 200,000: FlowMo's ``opt.freeze_encoder_after`` in
            ``flowmo/configs/base.yaml``, applied in ``flowmo/train.py``; None = never.
        fix_initial_norms: after every optimizer step, rescale the weight of every linear layer
            in the encoder's and decoder's transformer blocks to its norm at the start of
            training (default True: FlowMo's ``model.fix_initial_norms``).
        fix_norm_mode: "l2" (FlowMo's ``model.fix_norm_mode``): each matrix's norm; "channel":
            each output row's.
        warmup_steps: linear learning-rate warm-up.
        perceptual_type: "lpips" (default; needs local weights), "ms_ssim", "student" (a
            distilled judge, see ``student_path``) or "none".
        perceptual_fallback_type: when LPIPS weights are missing: "ms_ssim", "none" or "error".
        perceptual_weight: weight of the perceptual loss on the one-step estimate x0_hat.
        lpips_net_type: LPIPS backbone ("alex", "vgg", "squeeze").
        lpips_weights: path of the torchvision backbone weights (else the weight cache / torch hub cache).
        student_path: folder of a trained student, for ``perceptual_type="student"``.
        prior_weight: weight of the prior's token NLL in bits per pixel.
        rate_weight: weight of the straight-through rate term that trains the encoder (0 = VLIC).
        weights: the weights to start from, any spec of
            :func:`compressai_vlic.pretrained.load_weights` (``tiny``: the shipped ones, a
            Lightning or CompressAI checkpoint, a ``save_pretrained`` folder, a Hub id).
        init_from: the older name of ``weights``; when given (even as None) it wins.
        val_decode_batches: validation batches decoded with the sampler for PSNR.
        val_seed: seed of validation noise/timesteps and decodes.
        gradient_checkpointing: recompute encoder/decoder blocks in backward (far less memory,
            one extra forward; the paper configs turn it on).
        compile_mode: ``torch.compile`` of the encoder/decoder blocks: "none" (default),
            "default" or "max-autotune-no-cudagraphs".
    """

    def __init__(
        self,
        quality: str = "test",
        model_overrides: dict[str, Any] | None = None,
        lr: float = 1e-4,
        prior_lr: float | None = None,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        t_sampler: Literal["fat_lognormal", "lognormal"] = "fat_lognormal",
        t_uniform_share: float = 0.1,
        t_noise_share: float = 0.0,
        freeze_encoder_after: int | None = 200_000,
        fix_initial_norms: bool = True,
        fix_norm_mode: NormMode = "l2",
        warmup_steps: int = 0,
        perceptual_type: PerceptualType = "lpips",
        perceptual_fallback_type: PerceptualFallbackType = "ms_ssim",
        perceptual_weight: float = 1.0,
        lpips_net_type: str = "alex",
        lpips_weights: str | None = None,
        student_path: str | None = None,
        prior_weight: float = 1.0,
        rate_weight: float = 0.0,
        weights: str | None = None,
        init_from: str | None = NOT_GIVEN,
        val_decode_batches: int = 1,
        val_seed: int = 0,
        gradient_checkpointing: bool = False,
        compile_mode: CompileMode = "none",
    ) -> None:
        super().__init__()
        if perceptual_weight < 0 or prior_weight < 0 or rate_weight < 0:
            raise ConfigError("loss weights must be >= 0")
        if t_sampler not in T_SAMPLERS:
            raise ConfigError(
                f"t_sampler must be one of {', '.join(T_SAMPLERS)}, got {t_sampler!r}"
            )
        if freeze_encoder_after is not None and freeze_encoder_after < 0:
            raise ConfigError(f"freeze_encoder_after must be >= 0, got {freeze_encoder_after}")
        check_option("fix_norm_mode", fix_norm_mode, NormMode, ConfigError)
        self.save_hyperparameters()
        self._initial_norms: InitialNorms | None = None
        self.model = build_model(quality, model_overrides)
        if spec := weights_spec(weights, init_from):
            load_codec_weights(self.model, spec)
        apply_speed_options(self.model, gradient_checkpointing, compile_mode)
        loss, choice = make_perceptual_loss(
            perceptual_type if perceptual_weight > 0 else "none",
            perceptual_fallback_type,
            lpips_net_type,
            lpips_weights,
            student_path,
        )
        # A list keeps the frozen metric network out of the checkpoint, the EMA and the optimizer.
        self._perceptual = [loss] if loss is not None else []
        self.perceptual_choice = choice

    # ------------------------------------------------------------------ losses
    def _perceptual_loss(self, x0_hat: Tensor, x: Tensor) -> Tensor:
        if not self._perceptual:
            return x.new_zeros(())
        return perceptual_distance(self._perceptual[0], x0_hat, x)

    def compute_losses(self, x: Tensor) -> dict[str, Tensor]:
        hp = self.hparams
        enc = self.model.encode(x)
        t = sample_t(
            x.shape[0],
            hp.t_sampler,
            hp.t_uniform_share,
            device=x.device,
            noise_share=hp.get("t_noise_share", 0.0),
        )
        fm = self.model.flow_matching(x, enc.codes, t=t)
        pixels = x.shape[-2] * x.shape[-1]
        bits = self.model.token_nll_bits(enc.indices.detach())
        prior_bpp = bits.float().mean() / pixels
        perceptual = (
            self._perceptual_loss(fm.x0_hat, x) if hp.perceptual_weight > 0 else x.new_zeros(())
        )
        loss = fm.loss + hp.perceptual_weight * perceptual + hp.prior_weight * prior_bpp
        out = {
            "flow": fm.loss.detach(),
            "perceptual": perceptual.detach(),
            "bpp_prior": prior_bpp.detach(),
        }
        if hp.rate_weight > 0:
            rate = straight_through_bits(self.model, enc.codes, enc.indices).mean() / pixels
            loss = loss + hp.rate_weight * rate
            out["bpp_rate_term"] = rate.detach()
        out["loss"] = loss
        return out

    @property
    def encoder_frozen(self) -> bool:
        after = self.hparams.freeze_encoder_after
        return after is not None and self.global_step >= after

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)  # restores the random streams on resume
        if self.encoder_frozen and any(p.requires_grad for p in self.model.encoder.parameters()):
            log.info("freezing the encoder at step %d", self.global_step)
            self.model.encoder.requires_grad_(False)
            for p in self.model.encoder.parameters():
                p.grad = None  # AdamW skips parameters without gradients: no more updates

    def on_train_start(self) -> None:
        # FlowMo reads the norms after restoring a checkpoint, before the first step.
        if self.hparams.get("fix_initial_norms", False):
            self._initial_norms = InitialNorms(self.model, self.hparams.fix_norm_mode)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._initial_norms is not None:
            self._initial_norms.apply(self.model)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        out = self.compute_losses(batch)
        self.log_dict(
            {f"train/{k}": v for k, v in out.items()},
            prog_bar=False,
            on_step=True,
            batch_size=batch.shape[0],
            sync_dist=False,
        )
        self.log("loss", out["loss"].detach(), prog_bar=True, batch_size=batch.shape[0])
        return out["loss"]

    # -------------------------------------------------------------- validation
    def _eval_step(self, batch: Tensor, batch_idx: int, prefix: str) -> None:
        hp = self.hparams
        b = batch.shape[0]
        enc, fm = fixed_flow_matching(self.model, batch, hp.val_seed * 100_003 + batch_idx)
        bpp = self.model.token_nll_bits(enc.indices).float().mean() / (
            batch.shape[-2] * batch.shape[-1]
        )
        metrics = {"flow": fm.loss, "bpp_prior": bpp}
        if batch_idx < hp.val_decode_batches:
            x_hat = self.model.decode_codes(enc.indices, seed=hp.val_seed).to(batch.device)
            metrics["psnr"] = psnr(x_hat, batch).mean()
        self.log_dict(
            {f"{prefix}/{k}": v for k, v in metrics.items()}, batch_size=b, sync_dist=True
        )

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def on_train_epoch_start(self) -> None:
        self.model.train()  # Lightning keeps the mode a module had before fit; training needs CFG dropout

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        prior = [p for n, p in self.model.named_parameters() if n.startswith("prior.")]
        rest = [p for n, p in self.model.named_parameters() if not n.startswith("prior.")]
        groups = [{"params": rest}, {"params": prior, "lr": hp.prior_lr or hp.lr}]
        return adamw(groups, hp.lr, hp.weight_decay, hp.betas, hp.warmup_steps)
