"""Teacher data: the pair-wise preferences and point-wise scores a student learns from.

Pair-wise decisions are the rows ``compressai-vlic judge`` writes (label, every vote, score,
P(A)); abstained rows are kept (they carry no label and get zero weight) so the reliability of
the others can be judged against the whole set. Point-wise scores are one number per
(reference, image): a VLM's rating of one reconstruction (:mod:`.rating`, written by
:mod:`.raters`) or a metric judge's own values, which every metric-judged preference row
already records ("lpips: A=0.12 B=0.31 ...").

An image is a file path or, for data built in memory, a (3, H, W) tensor in [0, 1].
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compressai_vlic.errors import DatasetError
from compressai_vlic.jsonl import read_jsonl
from compressai_vlic.judges.types import Choice, Vote

ImageRef = str | torch.Tensor
POINTS_VERSION = 1

# metric judges' raw vote text, see compressai_vlic.judges.metric_judge.MetricJudge._judgment
_METRIC_RAW = re.compile(
    r"^(?P<name>[\w.\-]+): A=(?P<a>[-+0-9.eE]+|nan|inf|-inf) B=(?P<b>[-+0-9.eE]+|nan|inf|-inf)"
)
#: whether a higher value of a metric judge is better (the metric judges' own convention)
HIGHER_IS_BETTER = {
    "psnr": True,
    "ms_ssim": True,
    "ssimulacra2": True,
    "lpips": False,
    "dists": False,
}


@dataclass
class TeacherPair:
    """One teacher decision: which of ``a`` and ``b`` is closer to ``reference``."""

    reference: ImageRef
    a: ImageRef
    b: ImageRef
    label: Choice
    score: float = 0.0
    prob_a: float | None = None
    votes: list[Vote] = field(default_factory=list)
    pair_id: str = ""
    group: str = ""  # what held-out splits keep together (default: the reference)
    reliability: float | None = None  # filled by compressai_vlic.student.reliability

    @property
    def target(self) -> float | None:
        """1 when A wins, 0 when B wins, None on abstention (no label)."""
        return {Choice.A: 1.0, Choice.B: 0.0}.get(self.label)


@dataclass
class TeacherPoint:
    """One point-wise score of ``image`` against ``reference`` (None: the teacher abstained)."""

    reference: ImageRef
    image: ImageRef
    value: float | None
    higher_is_better: bool = True
    teacher: str = ""
    group: str = ""
    raw: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if not isinstance(self.reference, str) or not isinstance(self.image, str):
            raise DatasetError("only points whose images are files can be written")
        return {
            "version": POINTS_VERSION,
            "reference": self.reference,
            "image": self.image,
            "value": self.value,
            "higher_is_better": self.higher_is_better,
            "teacher": self.teacher,
            "group": self.group,
            "raw": self.raw,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherPoint:
        value = d.get("value")
        return cls(
            reference=str(d["reference"]),
            image=str(d["image"]),
            value=None if value is None else float(value),
            higher_is_better=bool(d.get("higher_is_better", True)),
            teacher=str(d.get("teacher", "")),
            group=str(d.get("group", "")),
            raw=str(d.get("raw", "")),
            error=d.get("error"),
        )


@dataclass
class TeacherData:
    """Everything one teacher gave: pairs and points."""

    pairs: list[TeacherPair] = field(default_factory=list)
    points: list[TeacherPoint] = field(default_factory=list)

    def groups(self) -> list[str]:
        return sorted({_group(p) for p in self.pairs} | {_group(p) for p in self.points})

    def split(self, held_out: Iterable[str]) -> tuple[TeacherData, TeacherData]:
        """(train, test) with every pair/point of a held-out group (image) in test."""
        held = set(held_out)
        train, test = TeacherData(), TeacherData()
        for p in self.pairs:
            (test if _group(p) in held else train).pairs.append(p)
        for q in self.points:
            (test if _group(q) in held else train).points.append(q)
        return train, test


def _group(item: TeacherPair | TeacherPoint) -> str:
    if item.group:
        return item.group
    ref = item.reference
    return ref if isinstance(ref, str) else f"tensor:{id(ref)}"


def metric_values(vote: Vote) -> tuple[str, float, float] | None:
    """(metric, value of A, value of B) from a metric judge's vote, None for other judges."""
    m = _METRIC_RAW.match(vote.raw or "")
    if m is None:
        return None
    a, b = float(m.group("a")), float(m.group("b"))
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    return m.group("name"), a, b


def read_teacher_pairs(path: str | os.PathLike[str]) -> TeacherData:
    """Pairs of a preference dataset, plus the point-wise values of a metric judge's votes.

    A swapped vote ("BA") of a metric judge measured the same two images, so each image's value
    is taken once (from the first vote that has it).
    """
    from compressai_vlic.judges.dataset import read_preference_dataset

    data = TeacherData()
    seen: set[tuple[str, str]] = set()
    for row in read_preference_dataset(path):
        j = row.judgment
        data.pairs.append(
            TeacherPair(
                reference=row.reference,
                a=row.a,
                b=row.b,
                label=row.label,
                score=float(j.score),
                prob_a=j.prob_a,
                votes=list(j.votes),
                pair_id=row.pair_id,
                group=row.reference,
            )
        )
        for vote in j.votes:
            found = metric_values(vote)
            if found is None:
                continue
            name, va, vb = found
            if vote.order == "BA":  # the judge saw B as its "A"
                va, vb = vb, va
            higher = HIGHER_IS_BETTER.get(name, True)
            for image, value in ((row.a, va), (row.b, vb)):
                if (row.reference, image) in seen:
                    continue
                seen.add((row.reference, image))
                data.points.append(
                    TeacherPoint(row.reference, image, value, higher, name, row.reference)
                )
    return data


def read_teacher_points(path: str | os.PathLike[str]) -> list[TeacherPoint]:
    """A point-wise JSONL file (:func:`write_teacher_points`); a torn last line is ignored."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such point-wise score file")

    def refuse(lineno: int, line: bytes, exc: Exception) -> None:
        raise DatasetError(f"{path}:{lineno}: not a point-wise score row ({exc})") from exc

    return read_jsonl(path, TeacherPoint.from_dict, refuse)


def write_teacher_points(
    points: Sequence[TeacherPoint], path: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Write point-wise scores as JSONL (atomically; never over an existing file unasked)."""
    from compressai_vlic.atomic import atomic_write_bytes

    path = Path(path)
    if path.exists() and not overwrite:
        raise DatasetError(f"{path} exists; choose another output or remove it first")
    text = "".join(json.dumps(p.to_dict(), allow_nan=False) + "\n" for p in points)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    return path
