"""Arm-vs-arm statistics of a controlled ablation: paired over images, spread over training seeds.

The input is one value per (arm, training seed, image), already averaged over decode seeds. Arms
trained with the same training seed share their data order, pairs and noise, so differences are
paired both over images and over seeds:

- an arm's mean is the mean over seeds and images;
- ``a - b`` per image is the difference of the two arms' seed means on that image; its interval is
  a percentile bootstrap over images (optionally over groups of images cut from one photo);
- the spread over training seeds is the standard deviation of the per-seed differences
  ``mean_i(a[s, i] - b[s, i])``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.audit.statistics import Estimate, bootstrap_mean

__all__ = ["ArmDifference", "arm_means", "paired_difference"]


@dataclass
class ArmDifference:
    """``a - b`` on one metric: the bootstrap estimate over images and the per-seed values."""

    a: str
    b: str
    mean: float
    low: float
    high: float
    per_seed: list[float]
    seed_sd: float
    num_images: int
    num_seeds: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _matrix(values: Mapping[int, Mapping[str, float]], seeds: Sequence[int], images: Sequence[str]):
    return np.array([[values[s][i] for i in images] for s in seeds], dtype=np.float64)


def arm_means(values: Mapping[int, Mapping[str, float]]) -> tuple[float, float]:
    """(mean over seeds and images, standard deviation of the per-seed means) of one arm.

    Args:
        values: ``{training_seed: {image: value}}``; every seed must hold the same images.
    """
    seeds = sorted(values)
    if not seeds:
        raise ConfigError("no training seeds to average")
    images = sorted(values[seeds[0]])
    m = _matrix(values, seeds, images)
    per_seed = m.mean(axis=1)
    sd = float(per_seed.std(ddof=1)) if len(seeds) > 1 else 0.0
    return float(m.mean()), sd


def paired_difference(
    a: Mapping[int, Mapping[str, float]],
    b: Mapping[int, Mapping[str, float]],
    names: tuple[str, str] = ("a", "b"),
    n_boot: int = 2000,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> ArmDifference:
    """``a - b`` paired over the images and training seeds both arms hold.

    Args:
        a, b: ``{training_seed: {image: value}}`` of the two arms.
        names: the arms' names, for the result.
        n_boot: bootstrap resamples (0: no interval).
        seed: seed of the bootstrap.
        groups: image -> group (e.g. the photo a crop was cut from): resample groups instead of
            images, so crops of one photo do not count as independent.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ConfigError(f"{names[0]} and {names[1]} share no training seed")
    images = sorted(set.intersection(*(set(a[s]) & set(b[s]) for s in seeds)))
    if not images:
        raise ConfigError(f"{names[0]} and {names[1]} share no image")
    diff = _matrix(a, seeds, images) - _matrix(b, seeds, images)  # (seeds, images)
    per_image = diff.mean(axis=0)
    per_seed = diff.mean(axis=1)
    rng = np.random.default_rng(seed)
    if groups is None:
        est: Estimate = bootstrap_mean(per_image, n_boot, rng)
    else:
        keys = sorted({groups[i] for i in images})
        sums = np.array(
            [sum(per_image[k] for k, i in enumerate(images) if groups[i] == g) for g in keys]
        )
        counts = np.array([sum(1 for i in images if groups[i] == g) for g in keys], np.float64)
        point = float(per_image.mean())
        if n_boot <= 0 or len(keys) == 1:
            est = Estimate(point, point, point)
        else:
            idx = rng.integers(0, len(keys), size=(n_boot, len(keys)))
            means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
            lo, hi = np.quantile(means, [0.025, 0.975])
            est = Estimate(point, float(lo), float(hi))
    return ArmDifference(
        a=names[0],
        b=names[1],
        mean=est.value,
        low=est.low,
        high=est.high,
        per_seed=[float(v) for v in per_seed],
        seed_sd=float(per_seed.std(ddof=1)) if len(seeds) > 1 else 0.0,
        num_images=len(images),
        num_seeds=len(seeds),
    )
