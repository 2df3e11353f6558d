"""Pick the post-training checkpoint by a validation metric, the starting point included.

A short post-training on a small model gets a weak preference signal, and a run can end worse
than it started on the very metric the judge's unanimity filter stands for. Scoring every saved
checkpoint and the stage-1 model on validation photos through real bitstreams
(``compress``/``decompress``), and keeping the best, makes "post-training does not worsen the
metric on validation" hold by construction; the held-out photos stay untouched for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from compressai_vlic.errors import ConfigError

#: "val_lpips": the checkpoint with the lowest LPIPS on the validation photos; "last": the
#: final checkpoint, whatever it scores.
SelectionType = Literal["val_lpips", "last"]


@dataclass(frozen=True)
class Candidate:
    """One model to score: a label, its checkpoint and which weights of it to load."""

    label: str
    path: Path
    weights_type: str = "raw"
    step: int = 0


@dataclass
class Selection:
    """Every candidate's validation score and the one kept."""

    metric: str
    photos: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    bpp: dict[str, float] = field(default_factory=dict)
    chosen: str = ""
    chosen_path: str = ""
    chosen_step: int = 0

    @property
    def kept_start(self) -> bool:
        """Whether no post-trained checkpoint beat the starting point."""
        return self.chosen_step == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "photos": self.photos,
            "scores": self.scores,
            "bpp": self.bpp,
            "chosen": self.chosen,
            "chosen_path": self.chosen_path,
            "chosen_step": self.chosen_step,
            "kept_start": self.kept_start,
        }


@torch.no_grad()
def score_codec(
    model: Any, images: Sequence[Tensor], metric: Any, seed: int = 0
) -> tuple[float, float]:
    """Mean metric and bpp of ``model`` over ``images`` through its real bitstreams."""
    values, bits, pixels = [], 0, 0
    for x in images:
        out = model.compress(x[None], seed=seed)
        x_hat = model.decompress(out["strings"], out["shape"])["x_hat"].clamp(0, 1)
        values.append(float(metric(x[None], x_hat).reshape(-1)[0]))
        bits += 8 * sum(len(s) for strings in out["strings"] for s in strings)
        pixels += x.shape[-2] * x.shape[-1]
    return sum(values) / len(values), bits / pixels


def select_checkpoint(
    candidates: Sequence[Candidate],
    images: Sequence[Tensor],
    photo_names: Sequence[str],
    metric_type: str = "lpips",
    seed: int = 0,
) -> Selection:
    """Score each candidate on ``images`` and keep the lowest (a lower-is-better metric).

    Args:
        candidates: the starting point (``step=0``) and the post-trained checkpoints.
        images: validation photos, (3, H, W) in [0, 1]; never the held-out test photos.
        photo_names: their names, for the record.
        metric_type: a ``compressai_vlic.metrics`` name whose lower values are better
            (default "lpips").
        seed: decode seed of every bitstream (the same noise for every candidate).
    """
    from compressai_vlic.metrics import get_metric
    from compressai_vlic_lightning.common import load_codec

    if not candidates:
        raise ConfigError("select_checkpoint needs at least one candidate")
    if not images:
        raise ConfigError("select_checkpoint needs at least one validation image")
    metric = get_metric(metric_type)
    if metric.higher_is_better:
        raise ConfigError(
            f"select_checkpoint keeps the lowest value; {metric_type} is higher-better"
        )
    selection = Selection(metric_type, list(photo_names))
    best = None
    for cand in candidates:
        model = load_codec(cand.path, cand.weights_type).eval()
        value, bpp = score_codec(model, images, metric, seed)
        selection.scores[cand.label] = value
        selection.bpp[cand.label] = bpp
        if best is None or value < best[0]:  # ties keep the earlier (the starting point)
            best = (value, cand)
    assert best is not None
    selection.chosen, selection.chosen_path = best[1].label, str(best[1].path)
    selection.chosen_step = best[1].step
    return selection
