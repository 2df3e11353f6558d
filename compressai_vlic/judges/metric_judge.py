"""Full-reference metric judges: the offline, deterministic judges (no VLM, no network).

A metric judge answers "which of A and B is closer to the reference?" with the metric itself:
the decision is the sign of the metric difference, and it abstains when the difference is within
``margin`` (in the metric's own units, e.g. 0.5 SSIMULACRA 2 points), because a tiny metric gap is
not a reliable preference. The score is the difference squashed to (-1, 1) by
``tanh(diff / scale)`` with a per-metric ``scale`` (about one "noticeable" step of that metric), so
scores of different metrics can be compared and averaged.

The offline default judge is SSIMULACRA 2: it is calibrated on human quality ratings and is a
pure algorithm, so it needs no download. LPIPS and DISTS need ImageNet backbone weights present
on the machine; without them their constructor raises ``MetricUnavailableError`` saying where to
put them.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.types import Choice, JudgeRequest, Judgment, Vote, choice_from_score

DEFAULT_METRIC_JUDGE = "ssimulacra2"

# One "noticeable" step in each metric's units; the score is tanh(diff / scale).
METRIC_SCALES: dict[str, float] = {
    "psnr": 1.0,  # dB
    "ms_ssim": 0.01,
    "ssimulacra2": 5.0,  # points on its 0..100 scale
    "lpips": 0.02,
    "dists": 0.02,
}


class MetricJudge:
    """A 2AFC judge that prefers the image with the better full-reference metric value."""

    backend = "metric"

    def __init__(
        self,
        metric_type: str = DEFAULT_METRIC_JUDGE,
        margin: float = 0.0,
        scale: float | None = None,
        device: str = "cpu",
        **metric_kwargs: Any,
    ) -> None:
        from compressai_vlic.metrics import get_metric

        if margin < 0:
            raise ConfigError(f"margin must be >= 0 (metric units), got {margin}")
        key = metric_type.lower().replace("-", "_")
        self.metric = get_metric(key, device, **metric_kwargs)
        self.metric_type = key
        self.margin = float(margin)
        self.scale = float(scale if scale is not None else METRIC_SCALES.get(key, 1.0))
        if self.scale <= 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        self.device = device
        self.metric_kwargs = metric_kwargs
        self.name = key
        self._lock = threading.Lock()  # metric modules are not guaranteed thread-safe

    def config(self) -> dict[str, Any]:
        return {
            "kind": "metric",
            "metric_type": self.metric_type,
            "margin": self.margin,
            "scale": self.scale,
            **{k: str(v) for k, v in self.metric_kwargs.items()},
        }

    def _judgment(self, va: float, vb: float, latency: float) -> Judgment:
        if not (math.isfinite(va) and math.isfinite(vb)):
            raw = f"{self.name}: A={va} B={vb}"
            err = f"{self.name} returned a non-finite value"
            vote = Vote(0.0, Choice.ABSTAIN, raw=raw, error=err, source=self.name)
            return Judgment(
                0.0,
                Choice.ABSTAIN,
                votes=[vote],
                latency_s=latency,
                backend=self.backend,
                model=self.name,
                error=err,
            )
        diff = (va - vb) if self.metric.higher_is_better else (vb - va)  # > 0: A is better
        score = math.tanh(diff / self.scale)
        choice = choice_from_score(diff, self.margin)
        if choice is Choice.ABSTAIN:
            score = 0.0
        raw = f"{self.name}: A={va:.6g} B={vb:.6g} better-by={diff:+.6g}"
        rationale = (
            raw
            if choice is not Choice.ABSTAIN
            else f"{raw} (within margin {self.margin:g}: abstain)"
        )
        vote = Vote(score, choice, raw=raw, source=self.name)
        return Judgment(
            score,
            choice,
            votes=[vote],
            rationale=rationale,
            latency_s=latency,
            backend=self.backend,
            model=self.name,
        )

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        """Evaluate the metric on same-sized requests as one batch per size."""
        out: list[Judgment | None] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            shapes = {tuple(r.reference.shape), tuple(r.a.shape), tuple(r.b.shape)}
            if len(shapes) != 1 or r.reference.dim() != 3 or r.reference.shape[0] != 3:
                raise ConfigError(
                    f"{self.name}: reference, A and B must be (3, H, W) tensors of one size, got {sorted(shapes)}"
                )
            groups.setdefault(tuple(r.reference.shape), []).append(i)
        for idx in groups.values():
            t0 = time.perf_counter()
            ref = torch.stack([requests[i].reference for i in idx])
            a = torch.stack([requests[i].a for i in idx])
            b = torch.stack([requests[i].b for i in idx])
            with self._lock:
                va = self.metric(ref, a).tolist()
                vb = self.metric(ref, b).tolist()
            per = (time.perf_counter() - t0) / len(idx)
            for k, i in enumerate(idx):
                out[i] = self._judgment(float(va[k]), float(vb[k]), per)
        return [j for j in out if j is not None]

    def compare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return self.compare_batch([JudgeRequest(reference, a, b)])[0]

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return await asyncio.to_thread(self.compare, reference, a, b)


def metric_judge(metric_type: str = DEFAULT_METRIC_JUDGE, **kwargs: Any) -> MetricJudge:
    """Factory entry (``make_judge("metric", metric_type=...)``)."""
    return MetricJudge(metric_type, **kwargs)


def ssimulacra2_judge(**kwargs: Any) -> MetricJudge:
    """The offline default judge: SSIMULACRA 2 (human-calibrated, no download)."""
    return MetricJudge("ssimulacra2", **kwargs)


def psnr_judge(**kwargs: Any) -> MetricJudge:
    return MetricJudge("psnr", **kwargs)


def ms_ssim_judge(**kwargs: Any) -> MetricJudge:
    return MetricJudge("ms_ssim", **kwargs)


def lpips_judge(**kwargs: Any) -> MetricJudge:
    return MetricJudge("lpips", **kwargs)


def dists_judge(**kwargs: Any) -> MetricJudge:
    return MetricJudge("dists", **kwargs)
