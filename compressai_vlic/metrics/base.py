"""The full-reference metric interface and its registry.

Every metric takes two (B, 3, H, W) float batches in [0, 1] and returns one value per image, so
the evaluation runner can treat PSNR, MS-SSIM, SSIMULACRA 2, LPIPS and DISTS the same way.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from compressai_vlic.errors import ConfigError

DeviceLike = str | torch.device


class PairMetric(ABC):
    """A full-reference image quality metric; ``__call__`` returns a (B,) float64 CPU tensor."""

    name: str = ""
    higher_is_better: bool = True

    def __init__(self, device: DeviceLike = "cpu") -> None:
        self.device = torch.device(device)

    @abstractmethod
    def _compute(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        """Per-image values for batches already checked and moved to ``self.device``."""

    def __call__(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        check_pair(reference, distorted, self.name)
        with torch.no_grad():
            ref = reference.detach().to(self.device, torch.float32)
            dist = distorted.detach().to(self.device, torch.float32)
            values = self._compute(ref, dist)
        return values.detach().reshape(-1).to("cpu", torch.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device})"


def check_pair(reference: torch.Tensor, distorted: torch.Tensor, name: str) -> None:
    """Reject batches a metric would silently misread (wrong rank, channels, sizes)."""
    for label, t in (("reference", reference), ("distorted", distorted)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != 3:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ConfigError(
                f"{name}: {label} must be a (B, 3, H, W) tensor in [0, 1], got {shape}"
            )
    if reference.shape != distorted.shape:
        raise ConfigError(
            f"{name}: reference {tuple(reference.shape)} and distorted "
            f"{tuple(distorted.shape)} differ in shape"
        )


MetricFactory = Callable[..., PairMetric]
_REGISTRY: dict[str, MetricFactory] = {}
#: The modules that register the built-in metrics on import; the registry imports them on first
#: use, so importing :mod:`compressai_vlic.metrics` stays light and a plugin's later
#: :func:`register_metric` still overrides a built-in name.
_BUILTIN_MODULES = ("compressai_vlic.metrics.deep", "compressai_vlic.metrics.fidelity")
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True  # first: the modules call register_metric while importing
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def register_metric(name: str, factory: MetricFactory) -> None:
    """Add a full-reference metric under ``name`` (lower-case); later plugins may add more."""
    _load_builtins()
    _REGISTRY[name.lower()] = factory


def available_metrics() -> list[str]:
    """Names accepted by :func:`get_metric` (some may still need weights to be constructed)."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_metric(name: str, device: DeviceLike = "cpu", **kwargs: object) -> PairMetric:
    """Build a metric by name; raises MetricUnavailableError when its weights are missing."""
    _load_builtins()
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        hint = ""
        if key in ("fid", "kid", "fd_dino"):
            hint = " (a distribution metric: use get_distribution_metric)"
        raise ConfigError(
            f"unknown metric {name!r}{hint}; choose from {', '.join(available_metrics())}"
        )
    return _REGISTRY[key](device=device, **kwargs)
