"""The student as a judge: ``make_judge("student", path=...)`` / ``--judge-type student``.

The decision is the sign of ``d(ref, B) - d(ref, A)`` and P(A) is the student's own
``sigmoid(kappa * (d_B - d_A))``; it abstains when the distance gap is within ``margin``.
Its cache identity is the weights file's digest, so a retrained student never reuses answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
from pathlib import Path
from typing import Any

import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.types import Choice, JudgeRequest, Judgment, Vote, choice_from_score
from compressai_vlic.student.model import load_student


class StudentJudge:
    """2AFC judge backed by a trained student.

    Args:
        path: the student's folder (or its ``student.safetensors``); required.
        margin: abstain when ``|d_B - d_A|`` is at most this (student distance units; default 0).
        batch_size: pairs per forward pass (default 32).
        device: torch device (default "cpu").
        threads: torch intra-op threads while judging (default: leave torch's setting).
        precision: "float32" (default; "auto" means the same). The int8 backbone was removed:
            it ran on PyTorch's FX quantisation, deprecated for removal, and "int8" is refused.
    """

    backend = "student"

    def __init__(
        self,
        path: str | None = None,
        margin: float = 0.0,
        batch_size: int = 32,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "float32",
    ) -> None:
        if not path:
            raise ConfigError("the student judge needs path=FOLDER (--judge-arg path=...)")
        if margin < 0 or batch_size < 1:
            raise ConfigError("margin must be >= 0 and batch_size >= 1")
        if precision not in ("auto", "float32"):
            raise ConfigError(
                f"student: precision {precision!r} is not available; the judge runs in float32 "
                "(the int8 backbone was removed with PyTorch's deprecated FX quantisation)"
            )
        self.model = load_student(path, device)
        self.precision = "float32"  # in the cache identity: answers of float32 caches stay valid
        self.path = str(path)
        self.margin = float(margin)
        self.batch_size = int(batch_size)
        self.device = device
        self.threads = threads
        weights = Path(self.model.source_path)  # type: ignore[attr-defined]
        self.digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
        self.name = "student"
        self._lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        return {
            "kind": "student",
            "path": self.path,
            "margin": self.margin,
            "digest": self.digest,
            "precision": self.precision,
        }

    def cache_identity(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": f"student@{self.digest}",
            "margin": self.margin,
            "precision": self.precision,
        }

    def _judgment(self, da: float, db: float, kappa: float, latency: float) -> Judgment:
        gap = db - da  # > 0: A is closer
        if not (math.isfinite(da) and math.isfinite(db)):
            err = "student returned a non-finite distance"
            vote = Vote(
                0.0, Choice.ABSTAIN, raw=f"student: A={da} B={db}", error=err, source="student"
            )
            return Judgment(
                0.0, Choice.ABSTAIN, votes=[vote], backend=self.backend, model=self.name, error=err
            )
        p_a = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, kappa * gap))))
        choice = choice_from_score(gap, self.margin)
        score = 2.0 * p_a - 1.0 if choice is not Choice.ABSTAIN else 0.0
        raw = f"student: dA={da:.6g} dB={db:.6g} gap={gap:+.6g}"
        vote = Vote(score, choice, prob_a=p_a, raw=raw, source="student")
        return Judgment(
            score,
            choice,
            prob_a=p_a,
            votes=[vote],
            rationale=raw,
            latency_s=latency,
            backend=self.backend,
            model=f"student@{self.digest}",
        )

    def distances(self, requests: list[JudgeRequest]) -> list[tuple[float, float]]:
        """(d_A, d_B) per request, batched by image size."""
        out: list[tuple[float, float] | None] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            shapes = {tuple(r.reference.shape), tuple(r.a.shape), tuple(r.b.shape)}
            if len(shapes) != 1:
                raise ConfigError(f"student: reference, A and B differ in size {sorted(shapes)}")
            groups.setdefault(tuple(r.reference.shape), []).append(i)
        previous = torch.get_num_threads()
        with self._lock, torch.inference_mode():
            if self.threads:
                torch.set_num_threads(int(self.threads))
            try:
                for idx in groups.values():
                    for s in range(0, len(idx), self.batch_size):
                        chunk = idx[s : s + self.batch_size]
                        ref = torch.stack([requests[i].reference for i in chunk]).to(self.device)
                        a = torch.stack([requests[i].a for i in chunk]).to(self.device)
                        b = torch.stack([requests[i].b for i in chunk]).to(self.device)
                        da, db = self.model.distance_pair(ref, a, b)
                        for k, i in enumerate(chunk):
                            out[i] = (float(da[k]), float(db[k]))
            finally:
                if self.threads:
                    torch.set_num_threads(previous)
        return [d for d in out if d is not None]

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        t0 = time.perf_counter()
        dist = self.distances(requests)
        per = (time.perf_counter() - t0) / max(1, len(requests))
        kappa = float(self.model.kappa)
        return [self._judgment(da, db, kappa, per) for da, db in dist]

    def compare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return self.compare_batch([JudgeRequest(reference, a, b)])[0]

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return await asyncio.to_thread(self.compare, reference, a, b)


def student_judge(**kwargs: Any) -> StudentJudge:
    """Factory entry (``make_judge("student", path=...)``)."""
    return StudentJudge(**kwargs)
