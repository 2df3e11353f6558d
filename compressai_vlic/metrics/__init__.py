"""Image quality metrics for codec evaluation.

Full-reference metrics (one value per image pair): ``get_metric("psnr" | "ms_ssim" |
"ssimulacra2" | "lpips" | "dists")``. Distribution metrics over HiFiC patches:
``get_distribution_metric("fid" | "kid" | "fd_dino")``. Metrics whose weights are not on this
machine raise :class:`compressai_vlic.errors.MetricUnavailableError` saying how to get them.

Names resolve on first use (PEP 562), so importing this package pulls in nothing heavy; the
built-in metrics register themselves when the registry is first read (:mod:`.base`).
"""

from __future__ import annotations

from compressai_vlic.lazy import lazy_getattr

_EXPORTS = {
    "PairMetric": "compressai_vlic.metrics.base",
    "available_metrics": "compressai_vlic.metrics.base",
    "get_metric": "compressai_vlic.metrics.base",
    "register_metric": "compressai_vlic.metrics.base",
    "DinoV2Features": "compressai_vlic.metrics.distribution",
    "DistributionMetric": "compressai_vlic.metrics.distribution",
    "FrechetDistance": "compressai_vlic.metrics.distribution",
    "InceptionFeatures": "compressai_vlic.metrics.distribution",
    "KernelDistance": "compressai_vlic.metrics.distribution",
    "distribution_metrics": "compressai_vlic.metrics.distribution",
    "frechet_distance": "compressai_vlic.metrics.distribution",
    "get_distribution_metric": "compressai_vlic.metrics.distribution",
    "hific_patches": "compressai_vlic.metrics.distribution",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
