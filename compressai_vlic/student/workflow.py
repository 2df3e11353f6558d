"""The ``compressai-vlic student train | eval`` workflows, callable from Python as well."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compressai_vlic.errors import ConfigError
from compressai_vlic.student.calibration import Calibration, fit_calibration
from compressai_vlic.student.config import StudentConfig
from compressai_vlic.student.evaluate import (
    PairReport,
    evaluate_opinions,
    evaluate_pairs,
    student_distances,
)
from compressai_vlic.student.model import StudentModel, load_student, student_files
from compressai_vlic.student.opinions import read_opinions
from compressai_vlic.student.reliability import ReliabilityType
from compressai_vlic.student.teacher import (
    TeacherData,
    read_teacher_pairs,
    read_teacher_points,
)
from compressai_vlic.student.train import ImageStore, TrainResult, train_student

PathLike = str | os.PathLike[str]


def read_teacher(
    pairs: Sequence[PathLike] = (), points: Sequence[PathLike] = (), metric_points: bool = True
) -> TeacherData:
    """Teacher data from preference datasets and point-wise files (metric values included
    unless ``metric_points`` is False)."""
    data = TeacherData()
    for path in pairs:
        part = read_teacher_pairs(path)
        data.pairs += part.pairs
        if metric_points:
            data.points += part.points
    for path in points:
        data.points += read_teacher_points(path)
    if not data.pairs and not data.points:
        raise ConfigError("no teacher data: give --pairs and/or --points")
    return data


def train_from_files(
    output: PathLike,
    pairs: Sequence[PathLike] = (),
    points: Sequence[PathLike] = (),
    config: StudentConfig | None = None,
    reliability_type: ReliabilityType = "all",
    point_weight: float = 0.5,
    steps: int = 400,
    lr: float = 0.05,
    metric_points: bool = True,
    opinions: PathLike | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> TrainResult:
    """Train a student on teacher files, optionally calibrate it, and save it to ``output``."""
    out = Path(output)
    if not overwrite:
        try:
            student_files(out)
        except Exception:
            pass
        else:
            raise ConfigError(
                f"{out} already holds a student; pass --overwrite or use another --output"
            )
    data = read_teacher(pairs, points, metric_points)
    model = StudentModel(config or StudentConfig(teacher=teacher_name(pairs, points)))
    store = ImageStore()
    result = train_student(
        data,
        model,
        reliability_type,
        point_weight,
        steps,
        lr,
        store=store,
        seed=seed,
    )
    if opinions is not None:
        rows = read_opinions(opinions)
        scores = -student_distances(model, [(o.reference, o.image) for o in rows], store)
        cal = fit_calibration(scores, [o.opinion for o in rows])
        model.meta["calibration"] = {**cal.to_dict(), "opinions": str(opinions)}
        result.summary["calibration"] = cal.to_dict()
    model.save(out, overwrite=overwrite)
    return result


def teacher_name(pairs: Sequence[PathLike], points: Sequence[PathLike]) -> str:
    """Who taught the student, from the files' judge names (recorded in its config)."""
    names = []
    for path in pairs:
        try:
            with open(path) as f:
                first = f.readline()
            names.append(json.loads(first).get("judge", "?"))
        except (OSError, ValueError):
            names.append("?")
    names += [f"points:{Path(p).name}" for p in points]
    return ", ".join(sorted(set(names)))


def stored_calibration(model: StudentModel) -> Calibration | None:
    cal = model.meta.get("calibration")
    return Calibration.from_dict(cal) if cal else None


def evaluate_files(
    student: PathLike,
    pairs: Sequence[PathLike] = (),
    baselines: Sequence[str] = ("psnr",),
    opinions: PathLike | None = None,
    fit_count: int = 0,
    seed: int = 0,
) -> tuple[list[str], dict[str, Any]]:
    """Report lines and a JSON-able dict: agreement on held-out pairs, SRCC/PLCC on opinions."""
    model = load_student(student)
    store = ImageStore()
    lines: list[str] = [f"student {student} (backbone {model.config.backbone_source})"]
    out: dict[str, Any] = {"student": str(student)}
    if pairs:
        data = read_teacher(pairs, metric_points=False)
        report: PairReport = evaluate_pairs(model, data.pairs, baselines, store, seed)
        lines += ["agreement with the teacher on these pairs:", *("  " + x for x in report.lines())]
        out["pairs"] = report.to_dict()
    if opinions is not None:
        rows = read_opinions(opinions)
        cal = None if fit_count else stored_calibration(model)
        if cal is None and not fit_count:
            raise ConfigError(
                "this student has no stored calibration; pass --fit-count N to fit one on the first N rows"
            )
        rep = evaluate_opinions(model, rows, cal, fit_count, store)
        lines.append(rep.line())
        out["opinions"] = {
            "n": rep.n,
            "srcc": rep.srcc,
            "plcc": rep.plcc,
            "calibration": rep.calibration.to_dict(),
        }
    if len(lines) == 1:
        raise ConfigError("nothing to evaluate: give --pairs and/or --opinions")
    return lines, out
