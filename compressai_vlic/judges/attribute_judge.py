"""Reference-free attribute judges: which of two images has more contrast / is more colourful /
is preferred overall, answered by the physical attribute itself (offline, deterministic).

They answer reference-free 2AFC questions (``JudgeRequest(reference=None, a, b)``); a reference,
when given, is ignored. ``attribute="overall"`` prefers by a weighted combination of the contrast
and colourfulness differences (each divided by its ``scale``), the model a psychophysical
attribute-weighting fit estimates. Like the metric judges, the score is ``tanh(diff / scale)``
and a difference within ``margin`` abstains. They give the audit's psychophysics statistics
known answers (see :mod:`compressai_vlic.judges.audit.psychophysics`).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Literal

import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.encoding import check_triplet
from compressai_vlic.judges.types import Choice, JudgeRequest, Judgment, Vote, choice_from_score
from compressai_vlic.metrics.attributes import colorfulness, rms_contrast
from compressai_vlic.options import check_option

AttributeType = Literal["contrast", "colorfulness", "overall"]

#: One noticeable step of each attribute (RMS contrast in [0, 1] units, colourfulness 0..255 M).
ATTRIBUTE_SCALES: dict[str, float] = {"contrast": 0.02, "colorfulness": 5.0}


class AttributeJudge:
    """Prefers the image with more of ``attribute`` (see module docstring).

    Args:
        attribute: "contrast" (RMS contrast), "colorfulness" (Hasler-Suesstrunk) or "overall"
            (``weights`` over both, default equal).
        margin: abstain when the (scaled, for "overall") difference is within this.
        scale: the attribute's noticeable step (default :data:`ATTRIBUTE_SCALES`; 1 for overall).
        weights: (contrast, colorfulness) weights of "overall".
        reference: accepted for symmetry with the VLM judges; the answer never uses it.
    """

    backend = "attribute"

    def __init__(
        self,
        attribute: AttributeType = "colorfulness",
        margin: float = 0.0,
        scale: float | None = None,
        weights: tuple[float, float] | list[float] = (0.5, 0.5),
        reference: bool = False,
        name: str | None = None,
    ) -> None:
        check_option("attribute", attribute, AttributeType)
        if margin < 0:
            raise ConfigError(f"margin must be >= 0, got {margin}")
        if len(weights) != 2:
            raise ConfigError(f"weights must be (contrast, colorfulness), got {weights}")
        self.attribute = attribute
        self.margin = float(margin)
        self.scale = float(scale if scale is not None else ATTRIBUTE_SCALES.get(attribute, 1.0))
        if self.scale <= 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        self.weights = (float(weights[0]), float(weights[1]))
        self.name = name or {"contrast": "rms_contrast"}.get(attribute, attribute)
        if attribute == "overall":
            self.name = name or "attribute-overall"

    def config(self) -> dict[str, Any]:
        return {
            "kind": "attribute",
            "attribute": self.attribute,
            "margin": self.margin,
            "scale": self.scale,
            "weights": list(self.weights),
        }

    def values(self, images: torch.Tensor) -> torch.Tensor:
        """The attribute of each image of a (B, 3, H, W) batch (for "overall": the weighted sum
        of both attributes in units of their noticeable steps)."""
        if self.attribute == "contrast":
            return rms_contrast(images)
        if self.attribute == "colorfulness":
            return colorfulness(images)
        wc, wf = self.weights
        return (
            wc * rms_contrast(images) / ATTRIBUTE_SCALES["contrast"]
            + wf * colorfulness(images) / ATTRIBUTE_SCALES["colorfulness"]
        )

    def _judgment(self, va: float, vb: float, latency: float) -> Judgment:
        diff = va - vb
        choice = choice_from_score(diff, self.margin)
        score = 0.0 if choice is Choice.ABSTAIN else math.tanh(diff / self.scale)
        raw = f"{self.name}: A={va:.6g} B={vb:.6g} more-by={diff:+.6g}"
        vote = Vote(score, choice, raw=raw, source=self.name)
        return Judgment(
            score,
            choice,
            votes=[vote],
            rationale=raw,
            latency_s=latency,
            backend=self.backend,
            model=self.name,
        )

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        """Evaluate the attribute of every A and B; one value per image."""
        out = []
        for r in requests:
            t0 = time.perf_counter()
            _, a, b = check_triplet(r.reference, r.a, r.b)
            va, vb = self.values(torch.stack([a, b])).tolist()
            out.append(self._judgment(float(va), float(vb), time.perf_counter() - t0))
        return out

    def compare(self, reference: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return self.compare_batch([JudgeRequest(reference, a, b)])[0]

    async def acompare(
        self, reference: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor
    ) -> Judgment:
        return await asyncio.to_thread(self.compare, reference, a, b)


def colorfulness_judge(**kwargs: Any) -> AttributeJudge:
    """Prefers the more colourful image (Hasler-Suesstrunk M)."""
    return AttributeJudge("colorfulness", **kwargs)


def rms_contrast_judge(**kwargs: Any) -> AttributeJudge:
    """Prefers the image with the higher RMS contrast."""
    return AttributeJudge("contrast", **kwargs)
