"""Distribution metrics between reconstructions and originals: FID, KID and FD-DINO.

Codec papers with few high-resolution images (CLIC, Kodak) follow HiFiC: each image is cut into
256x256 patches on a grid, plus a second grid shifted by 128 px, and the patch sets of originals
and reconstructions are compared, on any feature extractor: the FID Inception-v3 (torch-fidelity
port, local weight file: ``compressai-vlic weights fetch``) or DINOv2's CLS token (transformers, local model directory). KID is
torchmetrics' ``KernelInceptionDistance``; the Frechet distance is computed in closed form here.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from compressai_vlic.errors import ConfigError, MetricUnavailableError
from compressai_vlic.extras import require
from compressai_vlic.metrics.base import DeviceLike, check_pair
from compressai_vlic.metrics.weights import cache_dir, load_state_dict_file, resolve_weight_file
from compressai_vlic.options import check_option

PatchType = Literal["hific", "whole"]
DINOV2_DEFAULT = "facebook/dinov2-large"
DINOV2_FOLDER = "dinov2"  # a save_pretrained folder inside the weight cache
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def hific_patches(image: torch.Tensor, size: int = 256) -> torch.Tensor:
    """(N, 3, size, size) patches of a (3, H, W) or (1, 3, H, W) image: a grid plus a half-shifted grid."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ConfigError("hific_patches takes one image at a time")
        image = image[0]
    _, height, width = image.shape
    patches = []
    for offset in (0, size // 2):
        for top in range(offset, height - size + 1, size):
            for left in range(offset, width - size + 1, size):
                patches.append(image[:, top : top + size, left : left + size])
    if not patches:
        return image.new_zeros((0, 3, size, size))
    return torch.stack(patches)


class InceptionFeatures(nn.Module):
    """2048-d pool features of the FID Inception-v3 ([0, 1] input), torch-fidelity's extractor.

    ``torch_fidelity.FeatureExtractorInceptionV3`` on a local weight file (see
    ``compressai-vlic weights fetch inception``), so FID/KID equal torch-fidelity's own.
    """

    def __init__(self, weights: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as exc:  # pragma: no cover - torch-fidelity is a dependency
            raise MetricUnavailableError(
                "fid/kid need the PyPI package 'torch-fidelity' (pip install torch-fidelity)"
            ) from exc
        path = resolve_weight_file("inception", weights)
        # torch-fidelity unpickles the file itself; refuse anything but plain tensors first.
        load_state_dict_file(path, "fid/kid")
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
            )
        except RuntimeError as exc:
            raise MetricUnavailableError(
                f"fid/kid: {path} is not the FID Inception-v3: {exc}"
            ) from exc
        self.num_features = 2048
        self.weights_path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (features,) = self.net((x.clamp(0, 1) * 255).round().to(torch.uint8))
        return features


def dinov2_folder() -> Path | None:
    """The DINOv2 folder in the weight cache, if one was saved there."""
    folder = cache_dir() / DINOV2_FOLDER
    return folder if folder.is_dir() else None


class DinoV2Features(nn.Module):
    """DINOv2 CLS-token features (layer-normed, as in FD-DINO) from a local transformers model."""

    def __init__(
        self, model_path: str | os.PathLike[str] | None = None, resolution: int = 224
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        source = str(model_path or dinov2_folder() or DINOV2_DEFAULT)
        if model_path is not None and not Path(source).exists():
            raise MetricUnavailableError(f"fd_dino: DINOv2 model path {source} does not exist")
        try:
            self.model = AutoModel.from_pretrained(source, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise MetricUnavailableError(
                f"fd_dino needs DINOv2 weights, not found locally at {source!r}. On a connected "
                f"machine run `huggingface-cli download {DINOV2_DEFAULT}` (then it is found in the "
                f"HF cache) or save the model with save_pretrained to {cache_dir() / DINOV2_FOLDER}"
            ) from exc
        if getattr(self.model.config, "model_type", "") not in ("dinov2", "dinov2_with_registers"):
            raise MetricUnavailableError(
                f"fd_dino: {source} is a {self.model.config.model_type!r} model, not DINOv2"
            )
        self.model.requires_grad_(False)
        self.num_features = int(self.model.config.hidden_size)
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.resolution, self.resolution)
        x = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0, 1) - self.mean) / self.std
        return self.model(pixel_values=x).pooler_output


class DistributionMetric(ABC):
    """Accumulates (reference, distorted) images, then compares the two feature distributions."""

    name: str = ""
    higher_is_better: bool = False

    def __init__(
        self,
        features: nn.Module,
        device: DeviceLike = "cpu",
        patch_type: PatchType = "hific",
        patch_size: int = 256,
        batch_size: int = 16,
    ) -> None:
        check_option("patch_type", patch_type, PatchType)
        self.device = torch.device(device)
        self.features = features.eval().to(self.device)
        self.patch_type = patch_type
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.num_samples = 0
        self._metric = self._build(self.features).to(self.device)

    @abstractmethod
    def _build(self, features: nn.Module) -> nn.Module: ...

    @abstractmethod
    def _value(self) -> float: ...

    def _samples(self, images: torch.Tensor) -> torch.Tensor:
        if self.patch_type == "whole":
            return images
        return torch.cat([hific_patches(img, self.patch_size) for img in images])

    def update(self, reference: torch.Tensor, distorted: torch.Tensor) -> None:
        """Add a batch of image pairs ((B, 3, H, W) in [0, 1]); patches are cut here."""
        check_pair(reference, distorted, self.name)
        ref, dist = self._samples(reference), self._samples(distorted)
        with torch.no_grad():
            for start in range(0, ref.shape[0], self.batch_size):
                chunk = slice(start, start + self.batch_size)
                self._metric.update(ref[chunk].to(self.device).float(), real=True)
                self._metric.update(dist[chunk].to(self.device).float(), real=False)
        self.num_samples += int(ref.shape[0])

    def compute(self) -> float:
        """The distance between the accumulated sets (lower is better)."""
        if self.num_samples < 2:
            raise ConfigError(
                f"{self.name}: {self.num_samples} sample(s) accumulated; needs at least 2 "
                f"(images smaller than {self.patch_size} px give no HiFiC patches)"
            )
        with torch.no_grad():
            return self._value()

    def reset(self) -> None:
        self._metric.reset()
        self.num_samples = 0


class _FeatureStore(nn.Module):
    """Keeps the features of both sets (the Frechet distance below needs them, not just sums)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.real: list[torch.Tensor] = []
        self.fake: list[torch.Tensor] = []

    def update(self, images: torch.Tensor, real: bool) -> None:
        out = self.features(images).reshape(images.shape[0], -1).double().cpu()
        (self.real if real else self.fake).append(out)

    def reset(self) -> None:
        self.real, self.fake = [], []


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) for two (N, d) feature sets.

    With S = F F^T, tr((S1 S2)^1/2) is the nuclear norm of F1^T F2; F is the centred data when
    N <= d (a few hundred HiFiC patches vs 2048 Inception features) and the symmetric square root
    of S otherwise. Exact, symmetric (no complex square roots) and much faster than a d x d
    non-symmetric eigendecomposition when N << d.
    """

    def factor(x: torch.Tensor) -> torch.Tensor:
        centred = (x - x.mean(0)) / (x.shape[0] - 1) ** 0.5  # S = centred^T centred
        if x.shape[0] <= x.shape[1]:
            return centred.T
        evals, evecs = torch.linalg.eigh(centred.T @ centred)
        return evecs * evals.clamp_min(0).sqrt()

    real, fake = real.double(), fake.double()
    f1, f2 = factor(real), factor(fake)
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    trace_term = f1.square().sum() + f2.square().sum()
    cross = torch.linalg.svdvals(f1.T @ f2).sum()
    return float(mean_term + trace_term - 2 * cross)


class FrechetDistance(DistributionMetric):
    """Frechet distance between Gaussian fits of the two feature sets (FID, FD-DINO)."""

    name = "fd"

    def _build(self, features: nn.Module) -> nn.Module:
        return _FeatureStore(features)

    def _value(self) -> float:
        return frechet_distance(torch.cat(self._metric.real), torch.cat(self._metric.fake))


class KernelDistance(DistributionMetric):
    """Kernel (MMD, cubic polynomial kernel) distance; subsets shrink to the sample count."""

    name = "kd"

    def __init__(
        self, features: nn.Module, subsets: int = 100, seed: int = 0, **kwargs: object
    ) -> None:
        self.subsets = subsets
        self.seed = seed
        self.std = float("nan")
        super().__init__(features, **kwargs)  # type: ignore[arg-type]

    def _build(self, features: nn.Module) -> nn.Module:
        kid = require("torchmetrics.image.kid", "eval", "kid", MetricUnavailableError)

        return kid.KernelInceptionDistance(feature=features, subsets=self.subsets, normalize=True)

    def _value(self) -> float:
        self._metric.subset_size = min(1000, self.num_samples)
        with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets from the global RNG
            torch.manual_seed(self.seed)
            mean, std = self._metric.compute()
        self.std = float(std)
        return float(mean)


def _fid(
    device: DeviceLike = "cpu", weights: str | None = None, **kw: object
) -> DistributionMetric:
    metric = FrechetDistance(InceptionFeatures(weights), device=device, **kw)  # type: ignore[arg-type]
    metric.name = "fid"
    return metric


def _kid(
    device: DeviceLike = "cpu", weights: str | None = None, **kw: object
) -> DistributionMetric:
    metric = KernelDistance(InceptionFeatures(weights), device=device, **kw)  # type: ignore[arg-type]
    metric.name = "kid"
    return metric


def _fd_dino(
    device: DeviceLike = "cpu", model_path: str | None = None, resolution: int = 224, **kw: object
) -> DistributionMetric:
    features = DinoV2Features(model_path, resolution=resolution)
    metric = FrechetDistance(features, device=device, **kw)  # type: ignore[arg-type]
    metric.name = "fd_dino"
    return metric


_DISTRIBUTION: dict[str, Callable[..., DistributionMetric]] = {
    "fid": _fid,
    "kid": _kid,
    "fd_dino": _fd_dino,
}


def distribution_metrics() -> list[str]:
    """Names accepted by :func:`get_distribution_metric`."""
    return sorted(_DISTRIBUTION)


def get_distribution_metric(
    name: str, device: DeviceLike = "cpu", **kwargs: object
) -> DistributionMetric:
    """Build FID, KID or FD-DINO; raises MetricUnavailableError when weights are missing."""
    key = name.lower().replace("-", "_")
    if key not in _DISTRIBUTION:
        raise ConfigError(
            f"unknown distribution metric {name!r}; choose from {distribution_metrics()}"
        )
    return _DISTRIBUTION[key](device=device, **kwargs)
