"""Exponential moving average of the codec's weights.

Why not Lightning's ``EMAWeightAveraging``: it averages every buffer of the whole LightningModule,
including the uint8 ``_config_json`` buffer that carries the model config (float averaging would
corrupt it) and, in stage 2, the frozen reference model. This callback averages only the
floating-point tensors of ``pl_module.model``, swaps them in for validation, stores them in the
checkpoint once, under ``ema_state_dict`` (what :mod:`.export` writes out by default; the
callback's own state holds only the update count), and restores them from there on resume.

``ema_device="cpu"`` keeps the averages in host memory (a 1B-parameter codec's EMA is 4 GiB of
GPU memory otherwise); each update then copies the weights to the host, so pair it with
``update_every_n_steps`` > 1 on large models.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from compressai_vlic.errors import ConfigError

EMA_KEY = "ema_state_dict"
EMA_DEVICES = ("model", "cpu")


def _float_tensors(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in module.state_dict(keep_vars=True).items() if v.is_floating_point()}


class EMA(Callback):
    """EMA with warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after n updates.

    Args:
        decay: the largest decay (0.999).
        update_every_n_steps: optimizer steps between updates (1).
        start_step: first step that updates (0).
        ema_device: where the averages live: "model" (the model's device, default) or "cpu".
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        start_step: int = 0,
        ema_device: Literal["model", "cpu"] = "model",
    ) -> None:
        if ema_device not in EMA_DEVICES:
            raise ConfigError(f"unknown ema_device {ema_device!r}; choose from model, cpu")
        if not 0 < decay < 1:
            raise ConfigError(f"EMA decay must be in (0, 1), got {decay}")
        if update_every_n_steps < 1:
            raise ConfigError("update_every_n_steps must be >= 1")
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step
        self.ema_device = ema_device
        self.shadow: dict[str, Tensor] | None = None
        self.num_updates = 0
        self._loaded: dict[str, Any] | None = None
        self._swapped = False

    @property
    def state_key(self) -> str:
        return "EMA"

    def _device(self, tensor: Tensor) -> torch.device:
        return torch.device("cpu") if self.ema_device == "cpu" else tensor.device

    def _init(self, pl_module: pl.LightningModule) -> None:
        params = _float_tensors(pl_module.model)
        if self._loaded is not None and "shadow" in self._loaded:
            shadow = self._loaded["shadow"]
            missing = sorted(set(params) - set(shadow))
            if missing:
                raise ConfigError(f"EMA state does not match the model (missing {missing[0]})")
            self.shadow = {
                k: shadow[k].to(self._device(params[k]), torch.float32).clone() for k in params
            }
            self.num_updates = int(self._loaded.get("num_updates", 0))
            self._loaded = None
        elif self.shadow is None:
            self.shadow = {
                k: v.detach().to(self._device(v), torch.float32, copy=True)
                for k, v in params.items()
            }

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._init(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._init(pl_module)  # picks up a state restored from a checkpoint after on_fit_start

    @torch.no_grad()
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if self.shadow is None or step < self.start_step or step % self.update_every_n_steps:
            return
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = _float_tensors(pl_module.model)
        keys = list(self.shadow)
        shadow = [self.shadow[k] for k in keys]
        current = [
            params[k].detach().to(shadow[i].device, torch.float32) for i, k in enumerate(keys)
        ]
        torch._foreach_lerp_(shadow, current, 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def _swap(self, pl_module: pl.LightningModule) -> None:
        if self.shadow is None:
            return
        params = _float_tensors(pl_module.model)
        for k, shadow in self.shadow.items():
            current = params[k].detach().clone()
            params[k].data.copy_(shadow.to(params[k].device, params[k].dtype))
            shadow.copy_(current.to(shadow.device, torch.float32))
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not self._swapped:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)

    def averaged_state_dict(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        """The model's full state dict with the averaged floats in place (non-floats as they are)."""
        state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        if self.shadow is not None:
            source = self.shadow
            if self._swapped:  # the model currently holds the averages; shadow holds the raw ones
                source = {k: state[k].float() for k in self.shadow}
            for k, v in source.items():
                # float32, as averaged: a bf16 model's EMA keeps its precision on resume
                state[k] = v.detach().to("cpu", torch.float32, copy=True)
        return state

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.shadow is not None:
            checkpoint[EMA_KEY] = {
                f"model.{k}": v for k, v in self.averaged_state_dict(pl_module).items()
            }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        ema = checkpoint.get(EMA_KEY)
        if isinstance(ema, dict):
            shadow = {k.removeprefix("model."): v for k, v in ema.items()}
            floats = {k: v for k, v in shadow.items() if v.is_floating_point()}
            self._loaded = {**(self._loaded or {}), "shadow": floats}
            self.shadow = None

    def state_dict(self) -> dict[str, Any]:
        """Only the update count: the averages themselves are saved once, as ``ema_state_dict``."""
        if self.shadow is None:
            return {}
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        loaded = dict(self._loaded or {})
        if "shadow" in state_dict:  # checkpoints written before the averages were stored once
            loaded.setdefault("shadow", state_dict["shadow"])
        loaded["num_updates"] = state_dict.get("num_updates", 0)
        self._loaded = loaded
        self.shadow = None
