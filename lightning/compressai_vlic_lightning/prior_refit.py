"""Prior-only refit: fit the token prior to the frozen tokens of a trained codec.

In stage 1 the prior chases an encoder that keeps moving, and stage 2 leaves it at the DPO
learning rate: it is never fitted to the tokens of the codec that ships. VLIC trains its entropy
model separately; this stage does the same after stage 1 or stage 2. It loads a checkpoint,
freezes everything but the prior, encodes the training crops to tokens once (the first epoch
fills a cache keyed by batch index; later epochs read it and never run the encoder again),
trains the prior on the tokens' NLL, and exports the codec with the refitted prior.

The encoder, FSQ and decoder are untouched, so images decode exactly as before; only the rate
changes. ``prior_digits`` may switch the prior's kind (e.g. a factorised prior to an
intra-token "causal" one): the new head starts from zero, so the refit starts at the old rate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.options import check_option
from compressai_vlic_lightning.checkpointing import ResumableModule
from compressai_vlic_lightning.common import WeightsType, adamw, read_codec_state_dict

log = logging.getLogger(__name__)

__all__ = ["PriorRefitModule", "load_for_refit"]


def load_for_refit(
    checkpoint: str | Path,
    weights_type: WeightsType = "ema",
    prior_digits: Literal["factorized", "causal"] | None = None,
) -> Any:
    """The codec of ``checkpoint``, optionally with another kind of prior (its new head fresh)."""
    from compressai_vlic.models import VLIC
    from compressai_vlic.models.vlic import CONFIG_KEY, config_from_tensor

    state = read_codec_state_dict(checkpoint, weights_type)
    if CONFIG_KEY not in state:
        raise CheckpointError(f"{checkpoint}: no VLIC config inside; is it a VLIC checkpoint?")
    config = config_from_tensor(state[CONFIG_KEY])
    if prior_digits is None or prior_digits == config.prior_digits:
        return VLIC.from_state_dict(state)
    model = VLIC(config.replace(prior_digits=prior_digits))
    state = {k: v for k, v in state.items() if k != CONFIG_KEY and not k.startswith("prior.intra.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = [k for k in missing if not k.startswith("prior.intra.") and k != CONFIG_KEY]
    if fresh or unexpected:
        raise CheckpointError(
            f"{checkpoint} does not match the codec: missing {fresh[:5]}, unexpected "
            f"{unexpected[:5]}"
        )
    return model


class PriorRefitModule(ResumableModule):
    """Train only the token prior of an exported codec on its frozen tokens (token NLL).

    Args:
        checkpoint: the codec to refit (Lightning checkpoint of stage 1 or 2, or a CompressAI
            checkpoint as written by ``compressai-vlic-train export``).
        weights_type: "ema" (default; raw weights when the run kept no EMA) or "raw".
        prior_digits: kind of prior to fit: None (default) keeps the checkpoint's, or
            "factorized" / "causal" (intra-token digits; its head starts at zero).
        lr: AdamW learning rate of the prior (default 3e-4).
        weight_decay: AdamW weight decay (default 0).
        betas: AdamW betas (default (0.9, 0.99)).
        warmup_steps: linear learning-rate warm-up (default 0).
        export_path: where to write the refitted codec (a bare CompressAI state dict) when
            ``fit`` ends; None (default) writes nothing. An existing file is never overwritten.
    """

    def __init__(
        self,
        checkpoint: str,
        weights_type: WeightsType = "ema",
        prior_digits: Literal["factorized", "causal"] | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 0,
        export_path: str | None = None,
    ) -> None:
        super().__init__()
        check_option("weights_type", weights_type, WeightsType)
        if export_path is not None and Path(export_path).exists():
            raise ConfigError(
                f"export_path {export_path} exists; choose another path or remove it first"
            )
        self.save_hyperparameters()
        self.model = load_for_refit(checkpoint, weights_type, prior_digits)
        self.model.requires_grad_(False)
        for name, param in self.model.prior.named_parameters():
            param.requires_grad_(name != "transformer.wte.weight")  # unused table stays frozen
        # Token caches: batch index -> (B, K, d) indices, filled on the first pass.
        self._train_tokens: dict[int, Tensor] = {}
        self._val_tokens: dict[int, Tensor] = {}
        self.encoder_calls = 0

    # ------------------------------------------------------------------ tokens
    def _tokens(self, batch: Tensor, batch_idx: int, cache: dict[int, Tensor]) -> Tensor:
        cached = cache.get(batch_idx)
        if cached is not None and cached.shape[0] == batch.shape[0]:
            return cached.to(batch.device, torch.long)
        tile = self.model.config.image_size
        if batch.ndim != 4 or batch.shape[-2:] != (tile, tile):
            raise ConfigError(
                f"refit batches must be (B, 3, {tile}, {tile}) tiles of this codec, got "
                f"{tuple(batch.shape)}; set the data module's crop_size to {tile}"
            )
        was_training = self.model.encoder.training
        self.model.encoder.eval()
        with torch.no_grad():
            indices = self.model.encode(batch).indices.detach()
        self.model.encoder.train(was_training)
        self.encoder_calls += 1
        cache[batch_idx] = indices.to(torch.uint8).cpu()  # FSQ levels are <= 256
        return indices

    def _bits_per_token(self, indices: Tensor) -> Tensor:
        bits = self.model.prior.nll_bits(indices)
        return bits.float().sum() / (indices.shape[0] * indices.shape[1])

    # ---------------------------------------------------------------- training
    def on_train_epoch_start(self) -> None:
        self.model.eval()  # frozen parts stay in eval mode (no code dropout)
        self.model.prior.train()

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        indices = self._tokens(batch, batch_idx, self._train_tokens)
        loss = self._bits_per_token(indices)
        self.log("train/bits_per_token", loss.detach(), prog_bar=True, batch_size=len(indices))
        self.log("train/cached_batches", float(len(self._train_tokens)), batch_size=1)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        indices = self._tokens(batch, batch_idx, self._val_tokens)
        self.log(
            "val/bits_per_token",
            self._bits_per_token(indices),
            batch_size=len(indices),
            sync_dist=True,
        )

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.model.prior.parameters() if p.requires_grad]
        return adamw(params, hp.lr, hp.weight_decay, hp.betas, hp.warmup_steps)

    def on_fit_end(self) -> None:
        path = self.hparams.export_path
        if path is None or self.trainer.global_rank != 0:
            return
        out = Path(path)
        if out.exists():
            raise ConfigError(f"export_path {out} appeared during training; not overwriting it")
        out.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        torch.save(state, out)
        log.info("wrote the codec with the refitted prior to %s", out)
