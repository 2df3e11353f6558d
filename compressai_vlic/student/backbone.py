"""The student's frozen feature extractor: AlexNet convolutions from local ImageNet weights.

The weights come from this package's weight registry (:mod:`compressai_vlic.metrics.weights`,
``compressai-vlic weights fetch alexnet``), never from a download at run time. When they are not
on the machine the backbone is built with random weights and says so loudly (a warning and a
log line naming the fix), and the student's config records it, so a student trained that way can
never pass for an ImageNet one.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from compressai_vlic.errors import MetricUnavailableError
from compressai_vlic.student.config import StudentConfig

log = logging.getLogger(__name__)

# LPIPS' input scaling for its AlexNet (inputs in [-1, 1])
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def alexnet_features() -> nn.Sequential:
    """torchvision's AlexNet ``features`` layout (same indices), without its 58M-parameter head."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def load_imagenet_features(features: nn.Sequential) -> str:
    """Fill AlexNet ``features`` from the local registry file; returns where it came from."""
    from compressai_vlic.metrics.deep import load_features
    from compressai_vlic.metrics.weights import resolve_weight_file

    state = load_features("alexnet")
    own = features.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise MetricUnavailableError(f"alexnet backbone file lacks {missing[:2]}")
    features.load_state_dict({k: state[k] for k in own})
    return f"imagenet:{resolve_weight_file('alexnet').name}"


class AlexNetStages(nn.Module):
    """The AlexNet feature stack cut at each ReLU, on an optionally pooled image.

    Args:
        config: which layers are used and the pooling of the image before the backbone.
        features: AlexNet ``features`` to take the convolutions from (default: built here, with
            ImageNet weights or the random fallback per ``config.init_type``).
    """

    def __init__(self, config: StudentConfig, features: nn.Sequential | None = None) -> None:
        super().__init__()
        source = config.backbone_source
        if features is None:
            features = alexnet_features()
            source = "random"
            if config.init_type == "imagenet":
                try:
                    source = load_imagenet_features(features)
                except MetricUnavailableError as exc:
                    message = (
                        "STUDENT BACKBONE IS RANDOMLY INITIALISED: the ImageNet AlexNet weights "
                        f"are not on this machine ({exc}). Run `compressai-vlic weights fetch "
                        "alexnet` for a real student; this one learns on random features."
                    )
                    warnings.warn(message, stacklevel=3)
                    log.warning(message)
                    source = "random (ImageNet weights missing)"
        config.backbone_source = source
        self.source = source
        f = features
        stages = {
            "conv1": nn.Sequential(f[0], f[1]),
            "conv2": nn.Sequential(f[2], f[3], f[4]),
            "conv3": nn.Sequential(f[5], f[6], f[7]),
            "conv4": nn.Sequential(f[8], f[9]),
            "conv5": nn.Sequential(f[10], f[11]),
        }
        keep = [n for n in ("conv1", "conv2", "conv3", "conv4", "conv5")][: config.depth]
        self.stages = nn.ModuleDict({n: stages[n] for n in keep})
        shift, scale = torch.tensor(_SHIFT).view(1, 3, 1, 1), torch.tensor(_SCALE).view(1, 3, 1, 1)
        # (2 x - 1 - shift) / scale as one multiply-add: x * gain + offset
        self.register_buffer("gain", 2 / scale, persistent=False)
        self.register_buffer("offset", -(1 + shift) / scale, persistent=False)
        self.input_pool = config.input_pool
        self.requires_grad_(False)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the backbone's input (pooled, LPIPS' AlexNet scaling)."""
        if self.input_pool > 1:
            x = nn.functional.avg_pool2d(x, self.input_pool)
        return torch.addcmul(self.offset, x, self.gain)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations after each kept stage, for images in [0, 1]."""
        h = self.prepare_input(x)
        out = {}
        for name, stage in self.stages.items():
            h = stage(h)
            out[name] = h
        return out
