"""No-reference image attributes: colourfulness (Hasler and Suesstrunk 2003) and RMS contrast.

These are the physical correlates that psychophysical studies of contrast and colourfulness
preference scale their stimuli by, so a judge built on them (``judges/attribute_judge.py``) has a
known answer: of two images it prefers the one whose attribute the experimenter set higher.
Both take a (B, 3, H, W) float batch in [0, 1] (gamma-encoded sRGB) and return a (B,) float64
tensor.
"""

from __future__ import annotations

import torch

from compressai_vlic.errors import ConfigError

# Rec. 709 luma weights on the gamma-encoded values (the "intensity" of RMS contrast)
LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)


def _check(images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"{name}: expected a (B, 3, H, W) tensor in [0, 1], got {shape}")
    return images.detach().to(torch.float64)


def colorfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler-Suesstrunk colourfulness M = sigma_rgyb + 0.3 * mu_rgyb on the 0..255 scale.

    With rg = R - G and yb = (R + G) / 2 - B: sigma_rgyb = sqrt(var(rg) + var(yb)) and
    mu_rgyb = sqrt(mean(rg)^2 + mean(yb)^2) over the pixels. 0 for any grey image; about 15
    "slightly", 33 "moderately", 59 "quite", 82 "highly" colourful on their scale.

    Args:
        images: (B, 3, H, W) in [0, 1].
    """
    x = _check(images, "colorfulness") * 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    sigma = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    mu = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return sigma + 0.3 * mu


def rms_contrast(images: torch.Tensor) -> torch.Tensor:
    """RMS contrast: the standard deviation of the luma (Rec. 709 weights) in [0, 1] units.

    An image half black and half white has RMS contrast 0.5; scaling pixel values about their
    mean by k scales it by k.

    Args:
        images: (B, 3, H, W) in [0, 1].
    """
    x = _check(images, "rms_contrast")
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
    luma = (x * w).sum(dim=1).flatten(1)
    return luma.std(dim=1, unbiased=False)
