"""Image quality metrics for codec evaluation.

Full-reference metrics (one value per image pair): ``get_metric("psnr" | "ms_ssim" |
"ssimulacra2" | "lpips" | "dists")``. Distribution metrics over HiFiC patches:
``get_distribution_metric("fid" | "kid" | "fd_dino")``. Metrics whose weights are not on this
machine raise :class:`compressai_vlic.errors.MetricUnavailableError` saying how to get them.
"""

from compressai_vlic.metrics import deep as _deep  # noqa: F401  (registers lpips, dists)
from compressai_vlic.metrics import fidelity as _fidelity  # noqa: F401  (registers psnr, ...)
from compressai_vlic.metrics.base import PairMetric, available_metrics, get_metric, register_metric
from compressai_vlic.metrics.distribution import (
    DinoV2Features,
    DistributionMetric,
    FrechetDistance,
    InceptionFeatures,
    KernelDistance,
    distribution_metrics,
    frechet_distance,
    get_distribution_metric,
    hific_patches,
)

__all__ = [
    "DinoV2Features",
    "DistributionMetric",
    "FrechetDistance",
    "InceptionFeatures",
    "KernelDistance",
    "PairMetric",
    "available_metrics",
    "distribution_metrics",
    "frechet_distance",
    "get_distribution_metric",
    "get_metric",
    "hific_patches",
    "register_metric",
]
