"""Defaults the ``compare`` command line needs, in a module that imports no torch (``--help``)."""

from __future__ import annotations

#: Full-reference metrics computed per image by default.
DEFAULT_METRICS = ("psnr", "ms_ssim", "ssimulacra2", "lpips", "dists")
#: Distribution metrics over HiFiC patches computed per rate point by default.
DEFAULT_DISTRIBUTION_METRICS = ("fid", "kid", "fd_dino")
