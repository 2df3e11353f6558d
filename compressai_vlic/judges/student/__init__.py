"""A distilled judge: a lightweight full-reference student that learns a teacher judge.

A teacher (a VLM or a metric judge) gives pair-wise preferences (``compressai-vlic judge``
datasets) and point-wise scores; each decision gets a reliability from what the teacher gave
(vote agreement, score size, P(A), order consistency). The student, a small frozen ImageNet
backbone with learned per-channel feature weights (LPIPS-style), is fitted to both jointly, then
mapped to opinion scores by a 4-parameter logistic fitted on a small labelled subset. It serves
as a fast judge (``--judge-type student --judge-arg path=...``) and as a differentiable
perceptual loss (``perceptual_type: student``).

Names resolve on first use, so importing this package pulls in nothing heavy.
"""

from __future__ import annotations

from compressai_vlic.lazy import lazy_getattr

_EXPORTS = {
    "StudentConfig": "compressai_vlic.judges.student.config",
    "StudentModel": "compressai_vlic.judges.student.model",
    "load_student": "compressai_vlic.judges.student.model",
    "TeacherPair": "compressai_vlic.judges.student.teacher",
    "TeacherPoint": "compressai_vlic.judges.student.teacher",
    "TeacherData": "compressai_vlic.judges.student.teacher",
    "read_teacher_pairs": "compressai_vlic.judges.student.teacher",
    "read_teacher_points": "compressai_vlic.judges.student.teacher",
    "write_teacher_points": "compressai_vlic.judges.student.teacher",
    "reliability": "compressai_vlic.judges.student.reliability",
    "ReliabilityType": "compressai_vlic.judges.student.reliability",
    "train_student": "compressai_vlic.judges.student.train",
    "TrainResult": "compressai_vlic.judges.student.train",
    "Calibration": "compressai_vlic.judges.student.calibration",
    "fit_calibration": "compressai_vlic.judges.student.calibration",
    "wilson_interval": "compressai_vlic.judges.student.agreement",
    "agreement": "compressai_vlic.judges.student.agreement",
    "StudentJudge": "compressai_vlic.judges.student.judge",
    "StudentLoss": "compressai_vlic.judges.student.loss",
    "rating_template": "compressai_vlic.judges.student.rating",
    "parse_rating": "compressai_vlic.judges.student.rating",
    "OpenAIRater": "compressai_vlic.judges.student.raters",
    "HFRater": "compressai_vlic.judges.student.raters",
    "MetricRater": "compressai_vlic.judges.student.raters",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
