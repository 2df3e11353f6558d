"""Learned perceptual metrics: LPIPS and DISTS (torchmetrics implementations).

torchmetrics ships the small LPIPS linear heads and DISTS alpha/beta weights, but the ImageNet
backbones come from torchvision, which would download them. Here the backbone is always built
with random weights and then filled from a local torchvision weight file (see
:mod:`compressai_vlic.metrics.weights`), so nothing is ever fetched.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from unittest import mock

import torch
from torch import nn

from compressai_vlic.errors import ConfigError, MetricUnavailableError
from compressai_vlic.extras import require
from compressai_vlic.metrics.base import DeviceLike, PairMetric, register_metric
from compressai_vlic.metrics.weights import (
    TORCHVISION_ALEXNET,
    TORCHVISION_VGG16,
    load_state_dict_file,
    resolve_weight_file,
    torchvision_weights,
)

TORCHVISION_SQUEEZENET = torchvision_weights(
    "lpips",
    "squeezenet1_1-b8a52dc0.pth",
    "torchvision's ImageNet SqueezeNet 1.1 (LPIPS 'squeeze' backbone)",
)
LPIPS_BACKBONES = {
    "alex": ("alexnet", TORCHVISION_ALEXNET),
    "vgg": (
        "vgg16",
        dataclasses.replace(TORCHVISION_VGG16, metric="lpips", env_var=TORCHVISION_ALEXNET.env_var),
    ),
    "squeeze": ("squeezenet1_1", TORCHVISION_SQUEEZENET),
}
_PATCH_LOCK = threading.Lock()


def load_torchvision_features(arch: str, path: os.PathLike[str] | str, metric: str) -> nn.Module:
    """``torchvision.models.<arch>(weights=None).features`` filled from a local weight file."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    state = load_state_dict_file(path, metric)  # type: ignore[arg-type]
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    expected = model.features.state_dict()
    missing = sorted(set(expected) - set(features))
    if missing:
        raise MetricUnavailableError(
            f"{metric}: {path} is not a torchvision {arch} state dict (missing features.{missing[0]})"
        )
    try:
        model.features.load_state_dict({k: features[k] for k in expected})
    except RuntimeError as exc:
        raise MetricUnavailableError(
            f"{metric}: {path} does not fit torchvision {arch}: {exc}"
        ) from exc
    return model.features


class LPIPS(PairMetric):
    """LPIPS distance (lower is better) with torchmetrics' heads on a local torchvision backbone."""

    name = "lpips"
    higher_is_better = False

    def __init__(
        self,
        device: DeviceLike = "cpu",
        net_type: str = "alex",
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(device)
        if net_type not in LPIPS_BACKBONES:
            raise ConfigError(f"lpips net_type must be one of {sorted(LPIPS_BACKBONES)}")
        arch, spec = LPIPS_BACKBONES[net_type]
        path = resolve_weight_file(spec, weights)
        lpips = require(
            "torchmetrics.functional.image.lpips", "eval", "lpips", MetricUnavailableError
        )
        _LPIPS = lpips._LPIPS

        features = load_torchvision_features(arch, path, "lpips")
        # pnet_rand=True: torchmetrics builds the backbone without touching the network.
        net = _LPIPS(pretrained=True, net=net_type, pnet_rand=True)
        _copy_slices(net.net, features)
        self.weights_path = path
        self.net = net.eval().requires_grad_(False).to(self.device)

    def _compute(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        return self.net(reference, distorted, normalize=True).reshape(-1)


def _copy_slices(backbone: nn.Module, features: nn.Module) -> None:
    """torchmetrics splits the backbone into slices whose children keep their feature index."""
    copied = 0
    for module in backbone.modules():
        if isinstance(module, nn.Sequential):
            for idx, child in module.named_children():
                if idx.isdigit():
                    child.load_state_dict(features[int(idx)].state_dict())
                    copied += 1
    if copied == 0:
        raise MetricUnavailableError("lpips: torchmetrics backbone layout not recognised")


class DISTS(PairMetric):
    """DISTS distance (lower is better): torchmetrics' network on a local torchvision VGG16."""

    name = "dists"
    higher_is_better = False

    def __init__(
        self, device: DeviceLike = "cpu", weights: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__(device)
        path = resolve_weight_file(TORCHVISION_VGG16, weights)
        dists_module = require(
            "torchmetrics.functional.image.dists", "eval", "dists", MetricUnavailableError
        )

        features = load_torchvision_features("vgg16", path, "dists")

        def local_vgg16(weights: object = None) -> nn.Module:
            import torchvision

            model = torchvision.models.vgg16(weights=None)
            model.features = features
            return model

        # DISTSNetwork hard-codes vgg16(weights=DEFAULT), a download; swap in the local backbone.
        with _PATCH_LOCK, mock.patch.object(dists_module, "vgg16", local_vgg16):
            net = dists_module.DISTSNetwork(load_weights=True)
        self.weights_path = path
        self.net = net.eval().requires_grad_(False).to(self.device)

    def _compute(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        return self.net(reference, distorted).reshape(-1)


register_metric("lpips", LPIPS)
register_metric("dists", DISTS)
