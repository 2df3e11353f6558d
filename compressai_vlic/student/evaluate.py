"""Held-out evaluation of a student: agreement with the teacher and with opinion scores.

Agreement is measured on the teacher's labelled pairs against baseline metrics (PSNR by
default) on the very same pairs, each with its Wilson interval, plus a paired bootstrap interval
of the student's advantage that resamples whole reference images. Opinion scores give SRCC and
PLCC after the student's stored calibration (or one fitted on the first ``fit_count`` rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from compressai_vlic.judges.types import Choice
from compressai_vlic.student.agreement import (
    Agreement,
    agreement,
    bootstrap_difference,
    correct,
)
from compressai_vlic.student.calibration import Calibration, correlations, fit_calibration
from compressai_vlic.student.model import StudentModel
from compressai_vlic.student.opinions import Opinion
from compressai_vlic.student.teacher import TeacherPair
from compressai_vlic.student.train import ImageStore, channel_distance_table


@dataclass
class PairReport:
    """Agreement of the student and of each baseline with the teacher on the same pairs."""

    results: list[Agreement]
    advantage: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    abstained: int = 0

    def lines(self) -> list[str]:
        out = [r.line() for r in self.results]
        for name, (mean, lo, hi) in self.advantage.items():
            out.append(
                f"student - {name}: {100 * mean:+.1f} points (95% bootstrap CI over reference images "
                f"{100 * lo:+.1f} to {100 * hi:+.1f})"
            )
        if self.abstained:
            out.append(f"({self.abstained} teacher abstentions carry no label and are not counted)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "agreement": [r.__dict__ for r in self.results],
            "advantage": {k: list(v) for k, v in self.advantage.items()},
            "abstained": self.abstained,
        }


def _unique(couples: Sequence[tuple[Any, Any]]) -> tuple[list[tuple[Any, Any]], list[int]]:
    """Distinct (reference, image) couples and where each input couple is among them."""
    index: dict[tuple[str, str], int] = {}
    keep: list[tuple[Any, Any]] = []
    where = []
    for ref, img in couples:
        key = tuple(x if isinstance(x, str) else f"tensor:{id(x)}" for x in (ref, img))
        if key not in index:
            index[key] = len(keep)
            keep.append((ref, img))
        where.append(index[key])
    return keep, where


def student_distances(
    model: StudentModel, couples: Sequence[tuple[Any, Any]], store: ImageStore | None = None
) -> np.ndarray:
    keep, where = _unique(couples)
    table = channel_distance_table(model, keep, store)
    with torch.no_grad():
        return (table @ model.weights).numpy()[where]


def metric_values(
    metric_type: str, couples: Sequence[tuple[Any, Any]], store: ImageStore
) -> tuple[np.ndarray, bool]:
    """A metric's value per (reference, image), and whether higher is better."""
    from compressai_vlic.metrics import get_metric

    metric = get_metric(metric_type)
    keep, where = _unique(couples)
    out = []
    with torch.inference_mode():
        for ref, img in keep:
            out.append(float(metric(store.get(ref)[None], store.get(img)[None]).reshape(-1)[0]))
    return np.asarray(out)[where], bool(metric.higher_is_better)


def evaluate_pairs(
    model: StudentModel,
    pairs: Sequence[TeacherPair],
    baselines: Sequence[str] = ("psnr",),
    store: ImageStore | None = None,
    seed: int = 0,
) -> PairReport:
    """Student and baselines against the teacher's labels (abstentions left out)."""
    store = store or ImageStore()
    labelled = [p for p in pairs if p.label is not Choice.ABSTAIN]
    targets = [1.0 if p.label is Choice.A else 0.0 for p in labelled]
    groups = [p.group or str(p.reference) for p in labelled]
    couples_a = [(p.reference, p.a) for p in labelled]
    couples_b = [(p.reference, p.b) for p in labelled]
    da = student_distances(model, couples_a, store)
    db = student_distances(model, couples_b, store)
    results = [agreement("student", db - da, targets)]
    ok_student = correct(db - da, targets)
    advantage = {}
    for name in baselines:
        va, higher = metric_values(name, couples_a, store)
        vb, _ = metric_values(name, couples_b, store)
        prefers = (va - vb) if higher else (vb - va)
        results.append(agreement(name, prefers, targets))
        advantage[name] = bootstrap_difference(
            ok_student, correct(prefers, targets), groups, seed=seed
        )
    return PairReport(results, advantage, len(pairs) - len(labelled))


@dataclass
class OpinionReport:
    """SRCC/PLCC of the calibrated student on opinion scores."""

    n: int
    srcc: float
    plcc: float
    calibration: Calibration
    fitted_here: bool

    def line(self) -> str:
        how = (
            f"fitted on {self.calibration.n_fit} labelled images"
            if self.fitted_here
            else "stored calibration"
        )
        return (
            f"opinion scores: SRCC {self.srcc:.3f}, PLCC {self.plcc:.3f} on {self.n} images ({how})"
        )


def evaluate_opinions(
    model: StudentModel,
    opinions: Sequence[Opinion],
    calibration: Calibration | None = None,
    fit_count: int = 0,
    store: ImageStore | None = None,
) -> OpinionReport:
    """Calibrated student vs opinion scores; with ``fit_count`` the first rows fit the map and
    the rest are scored."""
    store = store or ImageStore()
    scores = -student_distances(model, [(o.reference, o.image) for o in opinions], store)
    mos = np.asarray([o.opinion for o in opinions])
    fitted = False
    if fit_count:
        calibration = fit_calibration(scores[:fit_count], mos[:fit_count])
        scores, mos, fitted = scores[fit_count:], mos[fit_count:], True
    if calibration is None:
        raise ValueError("no calibration: fit one (fit_count > 0) or store one with the student")
    srcc, plcc = correlations(scores, mos, calibration)
    return OpinionReport(len(mos), srcc, plcc, calibration, fitted)
