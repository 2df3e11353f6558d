"""VLIC hyper-parameters as one frozen, hashable config that travels inside checkpoints.

The config is serialised to canonical JSON and stored in the state dict as a uint8 buffer, so a
bare state dict (``torch.load(weights_only=True)``) is enough to rebuild the model. Its hash goes
into every bitstream so a stream is never decoded by a model with a different architecture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from compressai_vlic.errors import ConfigError
from compressai_vlic.sampling import FLOWMO_CFG_INTERVAL, SCHEDULES

CONFIG_VERSION = 1

# Fields that change neither the weights' shapes/meaning nor the bitstream syntax: sampler
# defaults (the values actually used travel in each stream header), training-only knobs and labels.
_UNHASHED_FIELDS = frozenset(
    {
        "name",
        "num_steps",
        "guidance_scale",
        "time_shift",
        "schedule",
        "schedule_power",
        "cfg_interval",
        "tile_overlap",
        "tile_batch",
        "code_dropout",
        "default_seed",
    }
)

# Fields added after format version 1, with the value that means "as before": at that value they
# stay out of the hash, so configs (and streams) made before they existed keep their hash.
_ADDED_FIELDS = {"prior_digits": "factorized", "mup": False}


@dataclass(frozen=True)
class VLICConfig:
    """Architecture, quantiser and sampler settings of one VLIC model (see docs/model.md)."""

    name: str = "custom"
    image_size: int = 256
    patch_size: int = 4
    in_channels: int = 3
    num_tokens: int = 256
    fsq_levels: tuple[int, ...] = (8, 8, 8, 8, 8, 8)
    encoder_width: int = 1024
    encoder_depth: int = 8
    encoder_heads: int = 16
    decoder_width: int = 1024
    decoder_depth: int = 16
    decoder_heads: int = 16
    prior_width: int = 768
    prior_depth: int = 12
    prior_heads: int = 12
    # "factorized": a token's digits predicted independently; "causal": each given the earlier.
    prior_digits: Literal["factorized", "causal"] = "factorized"
    # FlowMo's ``enable_mup``: attention logits q.k * 8 / head_dim (muP's 1/d, equal to the usual
    # 1/sqrt(d) at d = 64) in the encoder and decoder. FlowMo takes its muP base shapes from a
    # model of the same width, so its readout multipliers and MuAdam learning-rate factors are
    # all 1: the attention scale is the whole of its effect.
    mup: bool = False
    # Sampler defaults (each stream carries the values it was made with).
    num_steps: int = 25
    guidance_scale: float = 1.5
    time_shift: float = 0.5
    # FlowMo's sampler: power schedule pow_0.25, guidance only for t in cfg_interval.
    schedule: str = "power"
    schedule_power: float = 0.25
    cfg_interval: tuple[float, float] = FLOWMO_CFG_INTERVAL
    tile_overlap: int = 8
    tile_batch: int = 16
    default_seed: int = 0
    # Training.
    code_dropout: float = 0.1
    config_version: int = field(default=CONFIG_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fsq_levels", tuple(int(v) for v in self.fsq_levels))
        if isinstance(self.cfg_interval, (list, tuple)):
            object.__setattr__(self, "cfg_interval", tuple(float(v) for v in self.cfg_interval))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ConfigError for inconsistent values (before any module is built)."""
        if self.config_version != CONFIG_VERSION:
            raise ConfigError(
                f"config_version {self.config_version} is not supported (this package reads "
                f"{CONFIG_VERSION}); upgrade compressai-vlic or convert the checkpoint"
            )
        if self.image_size <= 0 or self.patch_size <= 0 or self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size ({self.image_size}) must be a positive multiple of "
                f"patch_size ({self.patch_size})"
            )
        if self.num_tokens <= 0:
            raise ConfigError(f"num_tokens must be positive, got {self.num_tokens}")
        if not self.fsq_levels or any(v < 2 or v > 256 for v in self.fsq_levels):
            raise ConfigError(f"fsq_levels must be integers in [2, 256], got {self.fsq_levels}")
        for prefix in ("encoder", "decoder", "prior"):
            width = getattr(self, f"{prefix}_width")
            depth = getattr(self, f"{prefix}_depth")
            heads = getattr(self, f"{prefix}_heads")
            if width <= 0 or depth <= 0 or heads <= 0 or width % heads:
                raise ConfigError(
                    f"{prefix}_width ({width}) must be a positive multiple of {prefix}_heads "
                    f"({heads}) and {prefix}_depth ({depth}) positive"
                )
        if self.prior_digits not in ("factorized", "causal"):
            raise ConfigError(
                f"prior_digits must be 'factorized' or 'causal', got {self.prior_digits!r}"
            )
        if self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.guidance_scale < 0 or self.time_shift <= 0:
            raise ConfigError("guidance_scale must be >= 0 and time_shift > 0")
        if self.schedule not in SCHEDULES[:2]:
            raise ConfigError(f"schedule must be 'power' or 'shift', got {self.schedule!r}")
        if not self.schedule_power > 0:
            raise ConfigError(f"schedule_power must be > 0, got {self.schedule_power}")
        interval = self.cfg_interval
        if not (
            isinstance(interval, tuple)
            and len(interval) == 2
            and 0 <= interval[0] <= interval[1] <= 1
        ):
            raise ConfigError(
                f"cfg_interval must be (lo, hi) with 0 <= lo <= hi <= 1, got {interval}"
            )
        if not 0 <= self.tile_overlap < min(self.image_size // 2, 255):
            raise ConfigError(f"tile_overlap ({self.tile_overlap}) must be in [0, image_size/2)")
        if self.tile_batch < 1:
            raise ConfigError(f"tile_batch must be >= 1, got {self.tile_batch}")
        if not 0 <= self.code_dropout < 1:
            raise ConfigError(f"code_dropout must be in [0, 1), got {self.code_dropout}")
        if not 0 <= self.default_seed < 2**32:
            raise ConfigError(f"default_seed must fit in uint32, got {self.default_seed}")

    # ------------------------------------------------------------ properties
    @property
    def code_dim(self) -> int:
        """Number of FSQ digits per token (d)."""
        return len(self.fsq_levels)

    @property
    def bits_per_token(self) -> float:
        """Bits per token before entropy coding: sum of log2 of the FSQ levels."""
        return float(sum(math.log2(v) for v in self.fsq_levels))

    @property
    def bpp_before_entropy_coding(self) -> float:
        """Rate of one training-resolution tile before entropy coding."""
        return self.num_tokens * self.bits_per_token / self.image_size**2

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fsq_levels"] = list(self.fsq_levels)
        d["cfg_interval"] = list(self.cfg_interval)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VLICConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown VLIC config fields: {', '.join(unknown)}")
        kwargs = dict(data)
        if "fsq_levels" in kwargs:
            kwargs["fsq_levels"] = tuple(kwargs["fsq_levels"])
        if isinstance(kwargs.get("cfg_interval"), list):
            kwargs["cfg_interval"] = tuple(kwargs["cfg_interval"])
        try:
            return cls(**kwargs)
        except TypeError as exc:  # wrong value types surface here
            raise ConfigError(f"invalid VLIC config: {exc}") from exc

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): stable across processes and versions."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> VLICConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"VLIC config is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("VLIC config JSON must be an object")
        return cls.from_dict(data)

    def config_hash(self) -> bytes:
        """First 4 bytes of sha256 over the fields that affect weights or the bitstream."""
        hashed = {k: v for k, v in self.to_dict().items() if k not in _UNHASHED_FIELDS}
        for name, legacy in _ADDED_FIELDS.items():  # added later: old configs keep their hash
            if hashed.get(name) == legacy:
                del hashed[name]
        text = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).digest()[:4]

    def replace(self, **overrides: Any) -> VLICConfig:
        """Copy with some fields changed (validated)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown VLIC config fields: {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)
