"""What defines a student network: backbone, which of its layers are compared, and how."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from compressai_vlic.errors import ConfigError
from compressai_vlic.options import check_option

BackboneType = Literal["alexnet"]
LayerName = Literal["pixel", "conv1", "conv2", "conv3", "conv4", "conv5"]
LAYER_NAMES: tuple[str, ...] = get_args(LayerName)
#: channels of each compared layer (AlexNet features; "pixel" is the RGB input itself)
LAYER_CHANNELS: dict[str, int] = {
    "pixel": 3,
    "conv1": 64,
    "conv2": 192,
    "conv3": 384,
    "conv4": 256,
    "conv5": 256,
}
CONFIG_VERSION = 1


@dataclass
class StudentConfig:
    """The student's architecture (saved as JSON next to its weights).

    Args:
        backbone_type: ImageNet backbone whose convolutions are frozen (default "alexnet").
        layers: compared layers, in forward order (default pixel, conv1, conv2, conv3). "pixel" is
            the RGB image itself: a learned per-channel squared error that catches the fine detail
            a strided backbone skips.
        input_pool: average-pooling factor of the image before the backbone (default 1: full
            resolution). 2 makes the float32 backbone about 4x cheaper, but on pairs of
            near-equal quality (two decodes of one bitstream) it agreed with an LPIPS teacher
            no better than chance.
        init_type: backbone weights: "imagenet" (local ImageNet weights; falls back to random
            weights with a loud warning when they are missing) or "random" (default "imagenet").
        teacher: what the student was distilled from (free text, for the record).
        backbone_source: where the backbone weights came from (filled in when built).
    """

    backbone_type: BackboneType = "alexnet"
    layers: list[str] = field(default_factory=lambda: ["pixel", "conv1", "conv2", "conv3"])
    input_pool: int = 1
    init_type: Literal["imagenet", "random"] = "imagenet"
    teacher: str = ""
    backbone_source: str = ""
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        check_option("backbone_type", self.backbone_type, BackboneType)
        check_option("init_type", self.init_type, Literal["imagenet", "random"])
        self.layers = list(self.layers)
        if not self.layers:
            raise ConfigError("layers must name at least one layer")
        for name in self.layers:
            if name not in LAYER_NAMES:
                raise ConfigError(f"unknown student layer {name!r}; choose from {LAYER_NAMES}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layers must be distinct, got {self.layers}")
        order = [LAYER_NAMES.index(n) for n in self.layers]
        if order != sorted(order):
            raise ConfigError(f"layers must be in forward order {LAYER_NAMES}, got {self.layers}")
        if int(self.input_pool) < 1:
            raise ConfigError(f"input_pool must be >= 1, got {self.input_pool}")
        self.input_pool = int(self.input_pool)
        if int(self.version) > CONFIG_VERSION:
            raise ConfigError(
                f"student config version {self.version} is newer than this package's "
                f"{CONFIG_VERSION}; upgrade compressai-vlic"
            )

    @property
    def channels(self) -> list[int]:
        return [LAYER_CHANNELS[n] for n in self.layers]

    @property
    def depth(self) -> int:
        """How many backbone conv layers run (0 when only "pixel" is compared)."""
        return max((LAYER_NAMES.index(n) for n in self.layers), default=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown student config key(s) {unknown}")
        return cls(**d)
