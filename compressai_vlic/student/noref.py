"""A LEAF-style no-reference student: a small quality regressor distilled from a teacher judge.

It scores one image on its own (no original): a frozen ImageNet AlexNet (the same local weights
as the full-reference student, from ``compressai-vlic weights fetch alexnet``) gives conv1..convN
activations, each channel is summarised by its spatial mean and standard deviation, and a fully
trainable head (standardisation, a hidden layer, one output) maps that descriptor to a quality
``q(x)`` (higher is better). It learns jointly from

- the teacher's pair-wise preferences: ``r * CE(sigmoid(q(winner) - q(loser)), (1 + r) / 2)``
  with the pair's reliability ``r`` (:mod:`.reliability`), normalised by the summed reliability;
- the teacher's point-wise scores, standardised: ``point_weight * mean (q(x) - z)^2``;

and is then calibrated on a few opinion scores given as a CSV ``image,mos``: the 4-parameter
logistic of :mod:`.calibration` from ``q`` to the MOS. The backbone runs once per image, so
training costs a forward pass per image plus seconds of head updates.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressai_vlic.errors import CheckpointError, ConfigError, DatasetError
from compressai_vlic.student.backbone import AlexNetStages, alexnet_features
from compressai_vlic.student.calibration import Calibration, fit_calibration
from compressai_vlic.student.config import LAYER_CHANNELS, StudentConfig
from compressai_vlic.student.reliability import ReliabilityType, reliability
from compressai_vlic.student.teacher import ImageRef, TeacherData
from compressai_vlic.student.train import ImageStore, _key

NOREF_WEIGHTS = "noref.safetensors"
NOREF_META = "noref.json"
PathLike = str | os.PathLike[str]


@dataclass
class NoRefConfig:
    """Architecture of a no-reference student.

    Args:
        depth: AlexNet conv layers summarised (1-5, default 3: conv1-conv3).
        hidden: width of the head's hidden layer (default 64).
        input_pool: average pooling of the image before the backbone (default 1).
        init_type: "imagenet" (local weights; random with a loud warning when missing) or "random".
        teacher: what it was distilled from (free text).
        backbone_source: where the backbone weights came from (filled in when built).
    """

    depth: int = 3
    hidden: int = 64
    input_pool: int = 1
    init_type: str = "imagenet"
    teacher: str = ""
    backbone_source: str = ""

    def __post_init__(self) -> None:
        if not 1 <= int(self.depth) <= 5:
            raise ConfigError(f"depth must be 1..5, got {self.depth}")
        if int(self.hidden) < 1 or int(self.input_pool) < 1:
            raise ConfigError("hidden and input_pool must be >= 1")

    @property
    def layers(self) -> list[str]:
        return [f"conv{i}" for i in range(1, int(self.depth) + 1)]

    @property
    def dims(self) -> int:
        return 2 * sum(LAYER_CHANNELS[n] for n in self.layers)


class NoRefStudent(nn.Module):
    """q(x): quality of one image, higher is better (see module docstring)."""

    def __init__(self, config: NoRefConfig | None = None, features: nn.Module | None = None):
        super().__init__()
        self.config = config or NoRefConfig()
        sc = StudentConfig(
            layers=self.config.layers,
            input_pool=self.config.input_pool,
            init_type=self.config.init_type,  # type: ignore[arg-type]
            backbone_source=self.config.backbone_source,
        )
        self.backbone = AlexNetStages(sc, features)
        self.config.backbone_source = sc.backbone_source
        dims = self.config.dims
        self.register_buffer("mu", torch.zeros(dims))
        self.register_buffer("sigma", torch.ones(dims))
        self.head = nn.Sequential(
            nn.Linear(dims, self.config.hidden), nn.GELU(), nn.Linear(self.config.hidden, 1)
        )
        self.meta: dict[str, Any] = {}

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dims): per channel of each stage, the spatial mean and standard deviation."""
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 32:
            raise ConfigError(
                f"no-reference student: expected (B, 3, H, W) images of at least 32 px, "
                f"got {tuple(x.shape)}"
            )
        with torch.no_grad():
            maps = self.backbone(x.float())
        parts = []
        for f in maps.values():
            flat = f.flatten(2)
            parts += [flat.mean(-1), flat.std(-1, unbiased=False)]
        return torch.cat(parts, dim=1)

    def score_descriptor(self, d: torch.Tensor) -> torch.Tensor:
        return self.head((d - self.mu) / self.sigma).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_descriptor(self.descriptor(x))

    def calibration(self) -> Calibration | None:
        cal = self.meta.get("calibration")
        return None if cal is None else Calibration.from_dict(cal)

    def save(self, folder: PathLike, overwrite: bool = False) -> Path:
        """Write ``noref.safetensors`` (head, standardisation and backbone) and ``noref.json``."""
        from safetensors.torch import save_file

        from compressai_vlic.atomic import atomic_write_bytes

        folder = Path(folder)
        targets = [folder / NOREF_WEIGHTS, folder / NOREF_META]
        if not overwrite and any(t.exists() for t in targets):
            raise ConfigError(f"{folder} already holds a no-reference student; pass overwrite")
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = folder / f".tmp-{NOREF_WEIGHTS}"
        save_file(state, str(tmp))
        os.replace(tmp, targets[0])
        meta = {"config": asdict(self.config), **self.meta}
        atomic_write_bytes(targets[1], (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        return folder


def load_noref_student(path: PathLike) -> NoRefStudent:
    """A saved no-reference student (its folder), in eval mode, frozen."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    weights, meta_file = folder / NOREF_WEIGHTS, folder / NOREF_META
    if not weights.is_file() or not meta_file.is_file():
        raise CheckpointError(
            f"{folder}: no no-reference student here (needs {NOREF_WEIGHTS} and {NOREF_META})"
        )
    try:
        meta = json.loads(meta_file.read_text())
        config = NoRefConfig(**meta.pop("config"))
        state = load_file(str(weights))
    except (ValueError, KeyError, TypeError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{folder}: not a readable no-reference student ({exc})") from exc
    model = NoRefStudent(config, alexnet_features())  # the saved backbone replaces these weights
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match its config ({exc})") from exc
    model.meta = meta
    return model.eval().requires_grad_(False)


def descriptors(
    model: NoRefStudent, images: Sequence[ImageRef], store: ImageStore | None = None
) -> torch.Tensor:
    """(N, dims) descriptors, one backbone pass per distinct image."""
    store = store or ImageStore()
    out: dict[str, torch.Tensor] = {}
    for image in images:
        key = _key(image)
        if key not in out:
            out[key] = model.descriptor(store.get(image))[0]
    return torch.stack([out[_key(i)] for i in images])


def noref_scores(
    model: NoRefStudent, images: Sequence[ImageRef], store: ImageStore | None = None
) -> np.ndarray:
    """q(x) of each image (higher is better)."""
    with torch.no_grad():
        return model.score_descriptor(descriptors(model, images, store)).numpy()


def train_noref(
    data: TeacherData,
    model: NoRefStudent,
    reliability_type: ReliabilityType = "all",
    point_weight: float = 0.5,
    steps: int = 500,
    lr: float = 3e-3,
    weight_decay: float = 1e-3,
    store: ImageStore | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the head on teacher pairs (reliability-weighted) and points; returns a summary.

    Args:
        data: teacher pairs (their A and B are scored without the reference) and points.
        model: the student; only its head and standardisation change.
        reliability_type: pair weighting (see :func:`.reliability.reliability`).
        point_weight: weight of the point-wise regression (0: pairs only).
        steps: full-batch AdamW steps.
        lr: learning rate.
        weight_decay: AdamW weight decay of the head.
        store: image loader/cache.
        seed: initialisation seed of the head.
    """
    weights = reliability(data.pairs, reliability_type)
    pairs = [(p, r) for p, r in zip(data.pairs, weights) if p.target is not None and r > 0]
    points = [q for q in data.points if q.value is not None]
    if not pairs and not points:
        raise ConfigError("no labelled teacher pairs or points to train on")
    images = [p.a for p, _ in pairs] + [p.b for p, _ in pairs] + [q.image for q in points]
    keys = {}
    for image in images:
        keys.setdefault(_key(image), image)
    order = list(keys)
    table = descriptors(model, [keys[k] for k in order], store)
    where = {k: i for i, k in enumerate(order)}
    model.mu.copy_(table.mean(0))
    model.sigma.copy_(table.std(0, unbiased=False).clamp_min(1e-6))
    torch.manual_seed(seed)
    for layer in model.head:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    win = torch.tensor([where[_key(p.a if p.target else p.b)] for p, _ in pairs], dtype=torch.long)
    lose = torch.tensor([where[_key(p.b if p.target else p.a)] for p, _ in pairs], dtype=torch.long)
    rel = torch.tensor([r for _, r in pairs], dtype=torch.float32)
    pt_idx = torch.tensor([where[_key(q.image)] for q in points], dtype=torch.long)
    values = torch.tensor(
        [q.value if q.higher_is_better else -q.value for q in points], dtype=torch.float32
    )
    z = (values - values.mean()) / values.std(unbiased=False).clamp_min(1e-8) if points else values
    opt = torch.optim.AdamW(model.head.parameters(), lr=lr, weight_decay=weight_decay)
    model.head.train()
    loss_pair = loss_point = torch.zeros(())
    for _ in range(steps):
        q = model.score_descriptor(table)
        loss = torch.zeros(())
        if len(pairs):
            logits = q[win] - q[lose]
            ce = nn.functional.binary_cross_entropy_with_logits(
                logits, (1 + rel) / 2, reduction="none"
            )
            loss_pair = (rel * ce).sum() / rel.sum()
            loss = loss + loss_pair
        if len(points) and point_weight > 0:
            loss_point = ((q[pt_idx] - z) ** 2).mean()
            loss = loss + point_weight * loss_point
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.head.eval()
    model.requires_grad_(False)
    summary = {
        "pairs": len(pairs),
        "points": len(points),
        "images": len(order),
        "steps": steps,
        "reliability_type": reliability_type,
        "point_weight": point_weight,
        "loss_pair": float(loss_pair.detach()),
        "loss_point": float(loss_point.detach()),
    }
    model.meta["training"] = summary
    return summary


def read_mos_csv(path: PathLike) -> list[tuple[str, float]]:
    """Opinion scores as a CSV with columns ``image,mos`` (paths relative to the CSV)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such MOS file")
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"image", "mos"} <= set(reader.fieldnames or []):
            raise DatasetError(f"{path}: needs columns image,mos; found {reader.fieldnames}")
        for lineno, row in enumerate(reader, start=2):
            try:
                mos = float(row["mos"])
            except ValueError as exc:
                raise DatasetError(f"{path}:{lineno}: {exc}") from exc
            image = (path.parent / row["image"]).resolve()
            if not image.is_file():
                raise DatasetError(f"{path}:{lineno}: {image} does not exist")
            rows.append((str(image), mos))
    if len(rows) < 5:
        raise DatasetError(f"{path}: a 4-parameter calibration needs at least 5 rows")
    return rows


def calibrate_noref(
    model: NoRefStudent, rows: Sequence[tuple[str, float]], store: ImageStore | None = None
) -> Calibration:
    """Fit the logistic from q to the opinion scores and keep it with the student."""
    scores = noref_scores(model, [r[0] for r in rows], store)
    cal = fit_calibration(scores, [r[1] for r in rows])
    model.meta["calibration"] = cal.to_dict()
    return cal


def evaluate_noref_pairs(
    model: NoRefStudent,
    pairs: Sequence[Any],
    baselines: Sequence[str] = ("psnr",),
    store: ImageStore | None = None,
    full_reference: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The no-reference student against the teacher's labels, beside full-reference baselines.

    Agreement (Wilson intervals) of the student (which never sees the reference), of each
    baseline metric and, when given, of a full-reference student; and the student's advantage
    over each, a paired bootstrap that resamples whole reference images.

    Args:
        model: the no-reference student.
        pairs: teacher pairs (abstentions are left out).
        baselines: full-reference metric names (e.g. psnr, ms_ssim).
        store: image loader/cache.
        full_reference: a full-reference :class:`~.model.StudentModel` to compare with.
        seed: bootstrap seed.
    """
    from compressai_vlic.judges.types import Choice
    from compressai_vlic.student.agreement import agreement, bootstrap_difference, correct
    from compressai_vlic.student.evaluate import metric_values, student_distances

    store = store or ImageStore()
    labelled = [p for p in pairs if p.label is not Choice.ABSTAIN]
    if not labelled:
        raise ConfigError("no labelled teacher pairs to evaluate on")
    targets = [1.0 if p.label is Choice.A else 0.0 for p in labelled]
    groups = [p.group or str(p.reference) for p in labelled]
    qa = noref_scores(model, [p.a for p in labelled], store)
    qb = noref_scores(model, [p.b for p in labelled], store)
    mine = correct(qa - qb, targets)
    results = [agreement("no-reference student", qa - qb, targets)]
    others: dict[str, np.ndarray] = {}
    couples_a = [(p.reference, p.a) for p in labelled]
    couples_b = [(p.reference, p.b) for p in labelled]
    if full_reference is not None:
        da = student_distances(full_reference, couples_a, store)
        db = student_distances(full_reference, couples_b, store)
        results.append(agreement("full-reference student", db - da, targets))
        others["full-reference student"] = correct(db - da, targets)
    for name in baselines:
        va, higher = metric_values(name, couples_a, store)
        vb, _ = metric_values(name, couples_b, store)
        prefers = (va - vb) if higher else (vb - va)
        results.append(agreement(name, prefers, targets))
        others[name] = correct(prefers, targets)
    advantage = {
        name: bootstrap_difference(mine, ok, groups, seed=seed) for name, ok in others.items()
    }
    return {
        "n_pairs": len(labelled),
        "agreement": [r.__dict__ for r in results],
        "advantage": {k: list(v) for k, v in advantage.items()},
        "lines": [r.line() for r in results]
        + [
            f"no-reference student - {k}: {100 * m:+.1f} points (95% bootstrap CI over reference "
            f"images {100 * lo:+.1f} to {100 * hi:+.1f})"
            for k, (m, lo, hi) in advantage.items()
        ],
    }


def train_noref_from_files(
    output: PathLike,
    pairs: Sequence[PathLike] = (),
    points: Sequence[PathLike] = (),
    reliability_type: ReliabilityType = "all",
    point_weight: float = 0.5,
    steps: int = 500,
    lr: float = 3e-3,
    metric_points: bool = True,
    mos: PathLike | None = None,
    overwrite: bool = False,
    seed: int = 0,
    init_type: str = "imagenet",
) -> dict[str, Any]:
    """Train a no-reference student on teacher files, calibrate it on a MOS CSV, save it.

    Args:
        output: folder for ``noref.safetensors`` and ``noref.json`` (never overwritten unasked).
        pairs: preference datasets of the teacher.
        points: point-wise score files of the teacher.
        reliability_type: pair weighting.
        point_weight: weight of the point-wise regression.
        steps: training steps.
        lr: learning rate.
        metric_points: use a metric teacher's values as point-wise scores.
        mos: CSV ``image,mos`` to calibrate on.
        overwrite: replace a student already in ``output``.
        seed: head initialisation seed.
        init_type: backbone weights ("imagenet" or "random").
    """
    from compressai_vlic.student.workflow import read_teacher, teacher_name

    out = Path(output)
    if not overwrite and ((out / NOREF_WEIGHTS).exists() or (out / NOREF_META).exists()):
        raise ConfigError(f"{out} already holds a no-reference student; pass --overwrite")
    data = read_teacher(pairs, points, metric_points)
    model = NoRefStudent(NoRefConfig(init_type=init_type, teacher=teacher_name(pairs, points)))
    store = ImageStore()
    summary = train_noref(
        data, model, reliability_type, point_weight, steps, lr, store=store, seed=seed
    )
    if mos is not None:
        cal = calibrate_noref(model, read_mos_csv(mos), store)
        model.meta["calibration"]["mos"] = str(mos)
        summary["calibration"] = cal.to_dict()
    model.save(out, overwrite=overwrite)
    return summary


def evaluate_noref_files(
    student: PathLike,
    pairs: Sequence[PathLike],
    baselines: Sequence[str] = ("psnr",),
    full_reference: PathLike | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_noref_pairs` on held-out preference datasets."""
    from compressai_vlic.student.model import load_student
    from compressai_vlic.student.teacher import read_teacher_pairs

    if not pairs:
        raise ConfigError("student eval needs --pairs (held-out preference datasets)")
    model = load_noref_student(student)
    labelled = [p for path in pairs for p in read_teacher_pairs(path).pairs]
    fr = load_student(full_reference) if full_reference is not None else None
    return evaluate_noref_pairs(model, labelled, baselines, ImageStore(), fr)
