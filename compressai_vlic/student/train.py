"""Distillation: fit the student's channel weights to a teacher's pairs and points jointly.

Loss = sum_i r_i * CE(sigmoid(z_i), (1 + r_i) / 2) / sum_i r_i
       + point_weight * mean_j (alpha - beta * d(ref_j, x_j) - q_j)^2,
z_i = kappa * (d(ref, loser_i) - d(ref, winner_i))

a logistic loss on the student's distance difference in which a decision of reliability r
(:mod:`.reliability`; abstentions have r = 0) both weighs r and asks for the probability
(1 + r) / 2 rather than certainty, so doubtful labels neither dominate the fit (a plain logistic
loss concentrates on the hard, i.e. doubtful, pairs) nor push the student to overconfidence;
with ``reliability_type="uniform"`` every label is certain. q are the teacher's point-wise
scores, standardised (higher = better). The backbone is frozen and the distance is linear in the
weights, so every (reference, image) is run through the backbone once and the optimisation
works on its per-channel distances (exactly the same loss, full batch, seconds on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.types import Choice
from compressai_vlic.student.model import StudentModel
from compressai_vlic.student.reliability import ReliabilityType, reliability
from compressai_vlic.student.teacher import ImageRef, TeacherData


def _key(image: ImageRef) -> str:
    return image if isinstance(image, str) else f"tensor:{id(image)}"


class ImageStore:
    """Images by path (loaded once) or tensors as given."""

    def __init__(self, loader: Callable[[str], torch.Tensor] | None = None) -> None:
        self._cache: dict[str, torch.Tensor] = {}
        self._loader = loader

    def get(self, image: ImageRef) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image
        if image not in self._cache:
            if self._loader is not None:
                self._cache[image] = self._loader(image)
            else:
                from compressai_vlic.image_io import load_image

                self._cache[image] = load_image(image).tensor
        return self._cache[image]


def channel_distance_table(
    model: StudentModel,
    couples: Sequence[tuple[ImageRef, ImageRef]],
    store: ImageStore | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """(len(couples), channels) per-channel distances of each (reference, image), no grad."""
    store = store or ImageStore()
    out = torch.empty(len(couples), sum(model.config.channels))
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, (ref, img) in enumerate(couples):
        r, x = store.get(ref), store.get(img)
        if r.shape != x.shape:
            raise ConfigError(
                f"{_key(img)}: size {tuple(x.shape)} differs from its reference {tuple(r.shape)}"
            )
        by_size.setdefault(tuple(r.shape), []).append(i)
    with torch.inference_mode():
        for idx in by_size.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                refs = torch.stack([store.get(couples[i][0]) for i in chunk])
                imgs = torch.stack([store.get(couples[i][1]) for i in chunk])
                out[chunk] = model.channel_distances(refs, imgs)
    return out


class _Adam:
    """Plain Adam on a few tensors (``torch.optim`` would import torch._dynamo: seconds)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            p.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


@dataclass
class TrainResult:
    """The trained student and what its training saw."""

    model: StudentModel
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)


def train_student(
    data: TeacherData,
    model: StudentModel | None = None,
    reliability_type: ReliabilityType = "all",
    point_weight: float = 0.5,
    steps: int = 400,
    lr: float = 0.05,
    logit_decay: float = 1e-3,
    store: ImageStore | None = None,
    seed: int = 0,
) -> TrainResult:
    """Distil ``data`` into a student (see module doc).

    Args:
        data: the teacher's pairs and points (abstained pairs are kept with weight 0).
        model: the student to fit (default: a new :class:`StudentModel`).
        reliability_type: weighting of the pair-wise loss (default "all"; "uniform" = none).
        point_weight: weight of the point-wise regression (default 0.5; 0 = pairs only).
        steps: full-batch Adam steps (default 400).
        lr: Adam learning rate (default 0.05).
        logit_decay: L2 on the weight logits, which keeps unused channels near uniform
            (default 1e-3).
        store: where images come from (default: files by path, tensors as given).
        seed: torch seed (default 0).
    """
    if point_weight < 0 or steps < 1 or lr <= 0:
        raise ConfigError("point_weight must be >= 0, steps >= 1 and lr > 0")
    torch.manual_seed(seed)
    model = model or StudentModel()
    store = store or ImageStore()
    weights = reliability(data.pairs, reliability_type)
    labelled = [(p, w) for p, w in zip(data.pairs, weights) if p.label is not Choice.ABSTAIN]
    points = [q for q in data.points if q.value is not None and math.isfinite(q.value)]
    if not labelled and not points:
        raise ConfigError(
            "no teacher labels: every pair abstained and there are no point-wise scores"
        )
    if labelled and sum(w for _, w in labelled) <= 0:
        raise ConfigError("every labelled pair has reliability 0; use reliability_type='uniform'")

    couples: dict[tuple[str, str], int] = {}
    refs: list[tuple[ImageRef, ImageRef]] = []

    def index(ref: ImageRef, img: ImageRef) -> int:
        k = (_key(ref), _key(img))
        if k not in couples:
            couples[k] = len(refs)
            refs.append((ref, img))
        return couples[k]

    ia = torch.tensor([index(p.reference, p.a) for p, _ in labelled], dtype=torch.long)
    ib = torch.tensor([index(p.reference, p.b) for p, _ in labelled], dtype=torch.long)
    y = torch.tensor([1.0 if p.label is Choice.A else -1.0 for p, _ in labelled])
    r = torch.tensor([w for _, w in labelled])
    target = 0.5 + 0.5 * r  # a decision of reliability r asks for P(choice) = (1 + r) / 2
    ip = torch.tensor([index(q.reference, q.image) for q in points], dtype=torch.long)
    values = torch.tensor([q.value if q.higher_is_better else -q.value for q in points])
    mean = float(values.mean()) if len(points) else 0.0
    std = float(values.std()) if len(points) > 1 else 1.0
    std = std if std > 0 else 1.0
    q = (values - mean) / std

    table = channel_distance_table(model, refs, store)
    params = [model.logits, model.log_kappa, model.alpha, model.log_beta]
    opt = _Adam(params, lr)
    history = []
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        for _ in range(steps):
            d = table @ model.weights
            loss = logit_decay * model.logits.pow(2).mean()
            if len(labelled):
                z = y * model.kappa * (d[ib] - d[ia])  # logit of "the teacher's choice wins"
                # cross-entropy with target 0.5 + r / 2 for the teacher's choice, weighted by r
                nll = target * F.softplus(-z) + (1 - target) * F.softplus(z)
                loss = loss + (r * nll).sum() / r.sum()
            if len(points) and point_weight > 0:
                loss = loss + point_weight * (model.quality(d[ip]) - q).pow(2).mean()
            for p in params:
                p.grad = None
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
    model.requires_grad_(False).eval()
    with torch.no_grad():
        d = table @ model.weights
        train_agree = float(((d[ib] - d[ia]) * y > 0).float().mean()) if len(labelled) else None
    model.meta["points"] = {
        "mean": mean,
        "std": std,
        "teacher": sorted({q.teacher for q in points}),
    }
    summary = {
        "pairs": len(data.pairs),
        "labelled_pairs": len(labelled),
        "abstained_pairs": len(data.pairs) - len(labelled),
        "points": len(points),
        "mean_reliability": float(r.mean()) if len(labelled) else None,
        "reliability_type": reliability_type,
        "point_weight": point_weight,
        "steps": steps,
        "final_loss": history[-1],
        "train_agreement": train_agree,
        "backbone": model.config.backbone_source,
    }
    model.meta["training"] = summary
    return TrainResult(model, summary, history)
