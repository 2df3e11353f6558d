"""The student's backbone in int8, for judging: the same convolutions, statically quantised.

A judge needs the sign of a distance gap, not its gradient, so the frozen AlexNet convolutions
can run in int8 (PyTorch's FX static quantisation on its x86, fbgemm or qnnpack engine), several
times faster than float32 on a CPU at the same resolution. Activation ranges are measured on
the training images at ``student train`` and stored in ``student.json``, so a saved student
quantises the same way on every machine and never depends on the first batch it judges. The
training and the perceptual loss keep float32.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from compressai_vlic.errors import ConfigError

log = logging.getLogger(__name__)

#: "auto": int8 when the student carries int8 ranges and torch has a quantised engine, else
#: float32; "int8": int8 or an error; "float32": never quantise.
PrecisionType = Literal["auto", "int8", "float32"]
CALIBRATION_KEY = "int8_calibration"
_ENGINES = ("x86", "fbgemm", "qnnpack")


def quantized_engine() -> str | None:
    """The first int8 engine this torch build supports (None: no int8 here)."""
    supported = torch.backends.quantized.supported_engines
    return next((e for e in _ENGINES if e in supported), None)


class _StageStack(nn.Module):
    """The kept conv stages as one traceable module returning every stage's output."""

    def __init__(self, stages: nn.ModuleDict) -> None:
        super().__init__()
        self.names = list(stages)
        self.stages = nn.ModuleList(stages[n] for n in self.names)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return tuple(outs)


def _qconfig_mapping(engine: str) -> Any:
    from torch.ao.quantization import (
        MinMaxObserver,
        PerChannelMinMaxObserver,
        QConfig,
        QConfigMapping,
    )

    # Full 8-bit activations keep an 8-bit image's every level (two decodes of one bitstream
    # differ by a few levels). x86 kernels without VNNI add pairs of u8 x s8 products in int16,
    # which full-range weights can overflow; 7-bit weights (per channel) cannot: 2*255*64 < 2^15.
    act = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False)
    weight = PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-64, quant_max=63
    )
    return QConfigMapping().set_global(QConfig(activation=act, weight=weight))


def _prepare(stack: _StageStack, engine: str) -> nn.Module:
    from torch.ao.quantization.quantize_fx import prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX quantisation's deprecation notices
        return prepare_fx(
            copy.deepcopy(stack).eval(),
            _qconfig_mapping(engine),
            example_inputs=(torch.zeros(1, 3, 64, 64),),
        )


def _observers(prepared: nn.Module) -> dict[str, Any]:
    from torch.ao.quantization import MinMaxObserver

    return {
        name: m
        for name, m in prepared.named_modules()
        if isinstance(m, MinMaxObserver) and name.startswith("activation_post_process")
    }


def calibrate_int8(
    model: Any, images: Iterable[torch.Tensor], batch_size: int = 16
) -> dict[str, Any]:
    """Activation ranges of ``model``'s backbone over ``images`` ((3, H, W) in [0, 1]); stored in
    ``model.meta`` so :func:`quantize_student` can rebuild the int8 backbone. Returns them."""
    engine = quantized_engine()
    if engine is None:
        raise ConfigError("this torch build has no int8 engine (x86, fbgemm or qnnpack)")
    backbone = model.backbone
    prepared = _prepare(_StageStack(backbone.stages), engine)
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for img in images:
        by_shape.setdefault(tuple(img.shape), []).append(img.float())
    seen = sum(len(group) for group in by_shape.values())
    if not seen:
        raise ConfigError("calibrate_int8 needs at least one image")
    with torch.no_grad():
        for group in by_shape.values():
            for start in range(0, len(group), batch_size):
                prepared(backbone.prepare_input(torch.stack(group[start : start + batch_size])))
    ranges = {
        name: [float(obs.min_val), float(obs.max_val)] for name, obs in _observers(prepared).items()
    }
    calibration = {"ranges": ranges, "images": seen, "torch": torch.__version__.split("+")[0]}
    model.meta[CALIBRATION_KEY] = calibration
    return calibration


class QuantizedStages(nn.Module):
    """Drop-in for :class:`~compressai_vlic.student.backbone.AlexNetStages` in int8."""

    def __init__(self, backbone: nn.Module, calibration: dict[str, Any], engine: str) -> None:
        super().__init__()
        from torch.ao.quantization.quantize_fx import convert_fx

        torch.backends.quantized.engine = engine
        prepared = _prepare(_StageStack(backbone.stages), engine)
        observers = _observers(prepared)
        ranges = calibration.get("ranges", {})
        if set(ranges) != set(observers):
            raise ConfigError(
                "the student's int8 ranges do not match this torch's quantised graph "
                f"({len(ranges)} stored, {len(observers)} expected); recalibrate or use float32"
            )
        for name, obs in observers.items():
            lo, hi = ranges[name]
            obs.min_val.copy_(torch.tensor(lo))
            obs.max_val.copy_(torch.tensor(hi))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.stack = convert_fx(prepared)
        self.names = list(backbone.stages)
        self.prepare_input = backbone.prepare_input
        self.engine = engine

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = self.stack(self.prepare_input(x))
        return dict(zip(self.names, outs))


def quantize_student(model: Any, precision: PrecisionType = "auto") -> str:
    """Switch a loaded student's backbone to int8 where ``precision`` allows; returns the
    precision in use ("int8" or "float32"). Distances stay differentiable only in float32."""
    if precision not in ("auto", "int8", "float32"):
        raise ConfigError(f"precision must be auto, int8 or float32, got {precision!r}")
    if precision == "float32" or model.config.depth == 0:
        return "float32"
    calibration = model.meta.get(CALIBRATION_KEY)
    engine = quantized_engine()
    reason = None
    if calibration is None:
        reason = "the student carries no int8 ranges (train it again with this version)"
    elif engine is None:
        reason = "this torch build has no int8 engine"
    elif next(model.parameters()).device.type != "cpu":
        reason = "torch's int8 kernels run on the CPU only; the student is on another device"
    if reason is None:
        try:
            model.backbone = QuantizedStages(model.backbone, calibration, engine)
            return "int8"
        except ConfigError as exc:
            reason = str(exc)
        except Exception as exc:  # a torch whose FX quantisation changed or is gone
            reason = f"int8 quantisation failed in this torch ({type(exc).__name__}: {exc})"
    if precision == "int8":
        raise ConfigError(f"student: int8 asked for, but {reason}")
    log.info("student judge in float32: %s", reason)
    return "float32"
