"""Finding metric weights on disk without ever downloading them.

LPIPS, DISTS, FID/KID and FD-DINO need pretrained backbones that their libraries would fetch from
the internet. This package never downloads at run time: a weight file is taken from an explicit
argument, an environment variable, or the cache where the library itself would have stored it
after a download on a connected machine. Otherwise :class:`MetricUnavailableError` says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from compressai_vlic.errors import MetricUnavailableError


@dataclass(frozen=True)
class WeightSpec:
    """Where a metric's backbone weights come from and how a user gets them."""

    metric: str
    env_var: str
    filename: str
    url: str
    how: str


def torchvision_weights(metric: str, filename: str, how: str) -> WeightSpec:
    """A torchvision ImageNet checkpoint: one download folder, one env var per metric."""
    return WeightSpec(
        metric=metric,
        env_var=f"COMPRESSAI_VLIC_{metric.upper()}_WEIGHTS",
        filename=filename,
        url=f"https://download.pytorch.org/models/{filename}",
        how=how,
    )


TORCHVISION_ALEXNET = torchvision_weights(
    "lpips", "alexnet-owt-7be5be79.pth", "torchvision's ImageNet AlexNet (LPIPS 'alex' backbone)"
)
TORCHVISION_VGG16 = torchvision_weights(
    "dists", "vgg16-397923af.pth", "torchvision's ImageNet VGG16 (DISTS backbone)"
)
INCEPTION_FID = WeightSpec(
    metric="fid/kid",
    env_var="COMPRESSAI_VLIC_INCEPTION_WEIGHTS",
    filename="weights-inception-2015-12-05-6726825d.pth",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
    how="torch-fidelity's FID Inception-v3 (TF 2015-12-05 port)",
)


def _hub_cache_file(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_weight_file(spec: WeightSpec, path: str | os.PathLike[str] | None = None) -> Path:
    """Return a local weight file for ``spec``: explicit path, then env var, then the torch hub cache."""
    candidates: list[tuple[str, Path]] = []
    if path is not None:
        candidates.append(("argument", Path(path)))
    env = os.environ.get(spec.env_var)
    if env:
        candidates.append((spec.env_var, Path(env)))
    for origin, candidate in candidates:
        if not candidate.is_file():
            raise MetricUnavailableError(
                f"{spec.metric}: weight file {candidate} (from {origin}) does not exist"
            )
        return candidate
    cached = _hub_cache_file(spec.filename)
    if cached.is_file():
        return cached
    raise MetricUnavailableError(
        f"{spec.metric} needs {spec.how}, which is not on this machine (nothing is downloaded at "
        f"run time). Get {spec.url} once and set {spec.env_var}=/path/to/{spec.filename} "
        f"(or place it in {cached.parent})."
    )


def load_state_dict_file(path: Path, metric: str) -> dict[str, torch.Tensor]:
    """Load a plain tensor state dict safely (``weights_only=True``) or raise a clear error."""
    from compressai_vlic.checkpoints import load_state_dict

    try:
        return load_state_dict(path, keys=("state_dict",), error=MetricUnavailableError)
    except MetricUnavailableError as exc:
        raise MetricUnavailableError(f"{metric}: {exc}") from None
