"""A distilled judge: a lightweight full-reference student that learns a teacher judge.

A teacher (a VLM or a metric judge) gives pair-wise preferences (``compressai-vlic judge``
datasets) and point-wise scores; each decision gets a reliability from what the teacher gave
(vote agreement, score size, P(A), order consistency). The student, a small frozen ImageNet
backbone with learned per-channel feature weights (LPIPS-style), is fitted to both jointly, then
mapped to opinion scores by a 4-parameter logistic fitted on a small labelled subset. It serves
as a fast judge (``--judge-type student --judge-arg path=...``) and as a differentiable
perceptual loss (``perceptual_type: student``). The judge is registered like any third-party one,
through the ``compressai_vlic.judges`` entry point ``student`` (pyproject.toml); ``judges`` itself
never imports this package.

Names resolve on first use, so importing this package pulls in nothing heavy.
"""

from __future__ import annotations

from compressai_vlic.lazy import lazy_getattr

_EXPORTS = {
    "StudentConfig": "compressai_vlic.student.config",
    "StudentModel": "compressai_vlic.student.model",
    "load_student": "compressai_vlic.student.model",
    "TeacherPair": "compressai_vlic.student.teacher",
    "TeacherPoint": "compressai_vlic.student.teacher",
    "TeacherData": "compressai_vlic.student.teacher",
    "read_teacher_pairs": "compressai_vlic.student.teacher",
    "read_teacher_points": "compressai_vlic.student.teacher",
    "write_teacher_points": "compressai_vlic.student.teacher",
    "reliability": "compressai_vlic.student.reliability",
    "ReliabilityType": "compressai_vlic.student.options",
    "train_student": "compressai_vlic.student.train",
    "TrainResult": "compressai_vlic.student.train",
    "Calibration": "compressai_vlic.student.calibration",
    "fit_calibration": "compressai_vlic.student.calibration",
    "wilson_interval": "compressai_vlic.student.agreement",
    "agreement": "compressai_vlic.student.agreement",
    "StudentJudge": "compressai_vlic.student.judge",
    "StudentLoss": "compressai_vlic.student.loss",
    "rating_template": "compressai_vlic.student.rating",
    "parse_rating": "compressai_vlic.student.rating",
    "OpenAIRater": "compressai_vlic.student.raters",
    "HFRater": "compressai_vlic.student.raters",
    "MetricRater": "compressai_vlic.student.raters",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
