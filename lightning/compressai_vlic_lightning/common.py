"""Pieces both training stages share: building the codec, loading weights, the optimizer."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.options import check_option

WeightsType = Literal["ema", "raw"]
CompileMode = Literal["none", "default", "max-autotune-no-cudagraphs"]
#: ``weights: "zoo:tiny"`` (or ``tiny``) starts from the weights that ship with the package.
ZOO_PREFIX = "zoo:"
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)


def build_model(quality: int | str = "test", model_overrides: dict[str, Any] | None = None) -> Any:
    """A fresh VLIC from a zoo quality plus config overrides (e.g. ``{"image_size": 64}``)."""
    from compressai_vlic.zoo import vlic

    overrides = dict(model_overrides or {})
    if "fsq_levels" in overrides:
        overrides["fsq_levels"] = tuple(overrides["fsq_levels"])
    return vlic(quality, **overrides)


#: The default of the old ``init_from``: not given (``None`` given on purpose means no weights).
NOT_GIVEN = ""


def weights_spec(
    weights: str | None, init_from: str | None = NOT_GIVEN, init_weights_type: str | None = None
) -> str | None:
    """The one weights spec from ``weights`` or its aliases ``init_from`` + ``init_weights_type``.

    Args:
        weights: any spec of :func:`compressai_vlic.pretrained.load_weights`.
        init_from: the older name of ``weights`` (still accepted; when given, even as null, it
            wins, so ``--model.init_from X`` or ``null`` still overrides a YAML's ``weights``).
        init_weights_type: "raw" appends ``#raw`` (a Lightning checkpoint's raw weights).
    """
    spec = weights
    if init_from != NOT_GIVEN:
        if weights and init_from != weights:
            logging.getLogger(__name__).warning(
                "both weights=%r and its old name init_from=%r are set: using init_from",
                weights,
                init_from,
            )
        spec = init_from
    if init_weights_type is not None:
        check_option("init_weights_type", init_weights_type, WeightsType, ConfigError)
        if spec and init_weights_type == "raw" and not spec.endswith(("#raw", "#ema")):
            spec += "#raw"
    return spec


def read_codec_state_dict(path: str | Path, weights_type: WeightsType = "ema") -> dict[str, Tensor]:
    """The codec's state dict of any weights spec (a Lightning checkpoint's EMA or raw weights)."""
    from compressai_vlic.pretrained import load_weights

    check_option("weights_type", weights_type, WeightsType, ConfigError)
    state = load_weights(path, ema=weights_type == "ema").state
    if state is None:
        raise ConfigError(f"{path}: random weights have no state dict")
    return state


def shipped_state_dict(quality: str) -> dict[str, Tensor]:
    """The state dict of the weights shipped for zoo ``quality`` (sha256-checked)."""
    return read_codec_state_dict(f"{ZOO_PREFIX}{quality}")


def load_codec_weights(model: Any, path: str | Path, weights_type: WeightsType = "ema") -> None:
    """Load a checkpoint's codec weights into ``model``; errors name the file and the fix."""
    state = read_codec_state_dict(path, weights_type)
    try:
        model.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{path}: {exc}; give a checkpoint of this model's configuration (or leave "
            "model_overrides as the checkpoint's run had them)"
        ) from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: does not fit this model ({first}); give a checkpoint of the same architecture"
        ) from None


def load_codec(path: str | Path, weights_type: WeightsType = "ema") -> Any:
    """A VLIC built from the config stored in a checkpoint (train mode, as training wants it)."""
    from compressai_vlic.pretrained import load_weights

    check_option("weights_type", weights_type, WeightsType, ConfigError)
    return load_weights(path, ema=weights_type == "ema").model().train()


def adamw(
    params: Any, lr: float, weight_decay: float, betas: tuple[float, float], warmup_steps: int
) -> dict[str, Any]:
    """AdamW with an optional linear warm-up, in Lightning's optimizer-config format."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    if warmup_steps <= 0:
        return {"optimizer": optimizer}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR on 8-bit-rounded values, like CompressAI's eval (the ``psnr`` metric),
    in ``x``'s dtype; capped (MSE >= 1e-10) so identical images do not put +inf into the logs."""
    from compressai_vlic.metrics.fidelity import psnr as psnr_db

    return psnr_db(x, y).clamp(max=_PSNR_CAP_DB).to(x.dtype)


_PSNR_CAP_DB = 10 * math.log10(255.0**2 / 1e-10)


def fixed_flow_matching(model: Any, batch: Tensor, seed: int) -> tuple[Any, Any]:
    """Encode ``batch`` and evaluate flow matching at (t, noise) drawn from ``seed``, no code dropout.

    Validation uses it so that every epoch (and both stages) scores the same noisy inputs.
    """
    gen = torch.Generator().manual_seed(seed)
    b = batch.shape[0]
    t = torch.rand(b, generator=gen).to(batch.device)
    noise = torch.randn(batch.shape, generator=gen).to(batch.device)
    enc = model.encode(batch)
    fm = model.flow_matching(
        batch,
        enc.codes,
        t=t,
        noise=noise,
        drop_mask=torch.zeros(b, dtype=torch.bool, device=batch.device),
    )
    return enc, fm


def apply_speed_options(
    model: Any, gradient_checkpointing: bool, compile_mode: CompileMode
) -> None:
    """Gradient checkpointing and ``torch.compile`` of the encoder and decoder blocks."""
    if compile_mode not in COMPILE_MODES:
        raise ConfigError(
            f"unknown compile_mode {compile_mode!r}; choose from {', '.join(COMPILE_MODES)}"
        )
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    if compile_mode != "none":
        model.compile_blocks(**({} if compile_mode == "default" else {"mode": compile_mode}))


NormMode = Literal["l2", "channel"]


def fixed_norm_weights(model: Any) -> list[tuple[str, Tensor]]:
    """The weights FlowMo holds at their initial norm: every linear layer's weight inside the
    encoder's and decoder's transformer blocks (FlowMo's ``get_weights_to_fix``: ``nn.Linear``
    in ``double_blocks``); embeddings, output heads, biases and the prior are left free."""
    prefixes = ("encoder.blocks.", "decoder.transformer.transformer_blocks.")
    return [
        (name, module.weight)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(prefixes)
    ]


class InitialNorms:
    """FlowMo's ``fix_initial_norms``: after every optimizer step, rescale each weight of
    :func:`fixed_norm_weights` back to the norm it had when training started.

    Args:
        model: the codec; the norms are read now.
        mode: "l2" (FlowMo's default): the whole matrix's Frobenius norm; "channel": each output
            row's norm.
    """

    def __init__(self, model: Any, mode: NormMode = "l2") -> None:
        check_option("fix_norm_mode", mode, NormMode, ConfigError)
        self.mode = mode
        with torch.no_grad():
            self.norms = {name: self._norm(w).clone() for name, w in fixed_norm_weights(model)}

    def _norm(self, w: Tensor) -> Tensor:
        if self.mode == "channel":
            return torch.linalg.vector_norm(w, dim=1, keepdim=True)
        return torch.linalg.vector_norm(w)

    @torch.no_grad()
    def apply(self, model: Any) -> None:
        """Rescale the weights in place (a frozen weight keeps its norm and is left as it is)."""
        for name, w in fixed_norm_weights(model):
            if w.requires_grad:
                w.mul_(self.norms[name].to(w.device) / self._norm(w).clamp_min(1e-12))
