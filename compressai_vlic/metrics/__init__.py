"""Image quality metrics for codec evaluation.

Full-reference metrics (one value per image pair): ``get_metric("psnr" | "ms_ssim" |
"ssimulacra2" | "lpips" | "dists")``. Distribution metrics over HiFiC patches:
``get_distribution_metric("fid" | "kid" | "fd_dino")``. Metrics whose weights are not on this
machine raise :class:`compressai_vlic.errors.MetricUnavailableError` saying how to get them.

Names resolve on first use (PEP 562), so importing this package pulls in nothing heavy; the
built-in metrics register themselves when the registry is first read (:mod:`.base`).
"""

from __future__ import annotations

from compressai_vlic.lazy import lazy_exports

_MODULES = {
    "base": "PairMetric available_metrics get_metric register_metric",
    "distribution": (
        "DinoV2Features DistributionMetric FrechetDistance InceptionFeatures "
        "KernelDistance distribution_metrics frechet_distance get_distribution_metric "
        "hific_patches"
    ),
}

__getattr__, __all__, _EXPORTS = lazy_exports(__name__, _MODULES)
