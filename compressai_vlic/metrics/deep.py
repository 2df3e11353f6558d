"""Learned perceptual metrics: LPIPS and DISTS on the reference implementations.

LPIPS is the ``lpips`` package's ``LPIPS`` class and DISTS the ``DISTS_pytorch`` package's
``DISTS`` forward pass. Both would download their ImageNet backbone from download.pytorch.org;
here the backbone is built without weights and filled from local files found by
:mod:`compressai_vlic.metrics.weights` (``compressai-vlic weights fetch`` puts them there), so
nothing is ever fetched and the numbers are the reference packages' own.
"""

from __future__ import annotations

import os
import re
from typing import Literal

import torch
from torch import nn

from compressai_vlic.errors import ConfigError, MetricUnavailableError
from compressai_vlic.metrics.base import DeviceLike, PairMetric, register_metric
from compressai_vlic.metrics.weights import load_state_dict_file, resolve_weight_file

LPIPSNetType = Literal["alex", "vgg"]
LPIPS_BACKBONES: dict[str, tuple[str, str]] = {  # net_type -> (backbone weight, heads weight)
    "alex": ("alexnet", "lpips-alex"),
    "vgg": ("vgg16", "lpips-vgg"),
}
PathLike = str | os.PathLike[str]


def _require(module: str, package: str, metric: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise MetricUnavailableError(
            f"{metric} needs the PyPI package '{package}' (pip install {package})"
        ) from exc


def load_features(name: str, path: PathLike | None = None) -> dict[str, torch.Tensor]:
    """``features.*`` tensors of a local torchvision backbone file (full or features-only)."""
    file = resolve_weight_file(name, path)
    state = load_state_dict_file(file, name)
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise MetricUnavailableError(f"{name}: {file} holds no torchvision features.* tensors")
    return features


def _fill_sequential(
    slices: nn.Module, features: dict[str, torch.Tensor], metric: str
) -> list[str]:
    """Copy backbone tensors into slices whose children keep their torchvision feature index."""
    copied = []
    for module in slices.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for idx, child in module.named_children():
            if not idx.isdigit() or not list(child.parameters(recurse=False)):
                continue
            own = child.state_dict()
            try:
                child.load_state_dict({k: features[f"{idx}.{k}"] for k in own})
            except (KeyError, RuntimeError) as exc:
                raise MetricUnavailableError(
                    f"{metric}: backbone file does not fit layer {idx}: {exc}"
                ) from exc
            copied.append(idx)
    if not copied:
        raise MetricUnavailableError(f"{metric}: backbone layout not recognised")
    return copied


class LPIPS(PairMetric):
    """LPIPS distance (lower is better): ``lpips.LPIPS`` v0.1 on a local backbone.

    Args:
        device: torch device (default "cpu").
        net_type: "alex" (default, the paper's training loss) or "vgg".
        weights: backbone file (default: found by ``compressai_vlic.metrics.weights``).
        heads: LPIPS linear-heads file (default: the installed ``lpips`` package's v0.1 file).
    """

    name = "lpips"
    higher_is_better = False

    def __init__(
        self,
        device: DeviceLike = "cpu",
        net_type: LPIPSNetType = "alex",
        weights: PathLike | None = None,
        heads: PathLike | None = None,
    ) -> None:
        super().__init__(device)
        if net_type not in LPIPS_BACKBONES:
            raise ConfigError(f"lpips net_type must be one of {sorted(LPIPS_BACKBONES)}")
        backbone_name, heads_name = LPIPS_BACKBONES[net_type]
        lpips = _require("lpips", "lpips", "lpips")
        features = load_features(backbone_name, weights)
        heads_file = resolve_weight_file(heads_name, heads)
        head_state = load_state_dict_file(heads_file, heads_name)
        # pnet_rand: build the backbone without its download; pretrained=False: heads load below.
        from compressai_vlic.thirdparty import quiet_torchvision_pretrained

        with quiet_torchvision_pretrained():
            net = lpips.LPIPS(pretrained=False, net=net_type, pnet_rand=True, verbose=False)
        _fill_sequential(net.net, features, "lpips")
        missing, unexpected = net.load_state_dict(head_state, strict=False)
        lins = [k for k in net.state_dict() if re.match(r"lin\d", k)]
        if unexpected or any(k in missing for k in lins):
            raise MetricUnavailableError(
                f"lpips: {heads_file} is not the LPIPS {net_type} heads "
                f"(unexpected {unexpected[:1]}, missing {[k for k in missing if k in lins][:1]})"
            )
        self.net_type = net_type
        self.weights_path = resolve_weight_file(backbone_name, weights)
        self.heads_path = heads_file
        self.net = net.eval().requires_grad_(False).to(self.device)

    def _compute(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        return self.net(reference, distorted, normalize=True).reshape(-1)


def build_dists_network(
    weights: PathLike | None = None, alpha_beta: PathLike | None = None
) -> nn.Module:
    """``DISTS_pytorch.DISTS`` with its VGG16 and alpha/beta taken from local files."""
    dists_pt = _require("DISTS_pytorch", "DISTS-pytorch", "dists").DISTS_pt
    features = load_features("vgg16", weights)
    params = load_state_dict_file(resolve_weight_file("dists", alpha_beta), "dists")

    class LocalDISTS(dists_pt.DISTS):
        """The reference DISTS: its own forward, stages built here from a local VGG16.

        The reference ``__init__`` calls ``torchvision.models.vgg16(pretrained=True)`` (a
        download); this builds the same modules with the same names from local tensors.
        """

        def __init__(self) -> None:
            nn.Module.__init__(self)
            import torchvision

            vgg = torchvision.models.vgg16(weights=None).features
            _fill_sequential(nn.Sequential(vgg), features, "dists")
            pools = {4: 64, 9: 128, 16: 256, 23: 512}
            bounds = ((0, 4), (5, 9), (10, 16), (17, 23), (24, 30))
            for stage, (start, stop) in enumerate(bounds, 1):
                seq = nn.Sequential()
                if start - 1 in pools:
                    seq.add_module(str(start - 1), dists_pt.L2pooling(channels=pools[start - 1]))
                for x in range(start, stop):
                    seq.add_module(str(x), vgg[x])
                setattr(self, f"stage{stage}", seq)
            self.requires_grad_(False)
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
            self.chns = [3, 64, 128, 256, 512, 512]
            self.alpha = nn.Parameter(params["alpha"].float().clone(), requires_grad=False)
            self.beta = nn.Parameter(params["beta"].float().clone(), requires_grad=False)

    return LocalDISTS()


class DISTS(PairMetric):
    """DISTS distance (lower is better): the reference ``DISTS_pytorch`` on a local VGG16.

    Args:
        device: torch device (default "cpu").
        weights: VGG16 backbone file (default: found by ``compressai_vlic.metrics.weights``).
        alpha_beta: DISTS alpha/beta file (default: the installed ``DISTS_pytorch`` package's).
    """

    name = "dists"
    higher_is_better = False

    def __init__(
        self,
        device: DeviceLike = "cpu",
        weights: PathLike | None = None,
        alpha_beta: PathLike | None = None,
    ) -> None:
        super().__init__(device)
        self.net = build_dists_network(weights, alpha_beta).eval().to(self.device)
        self.weights_path = resolve_weight_file("vgg16", weights)

    def _compute(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        return self.net(reference, distorted).reshape(-1)


register_metric("lpips", LPIPS)
register_metric("dists", DISTS)
