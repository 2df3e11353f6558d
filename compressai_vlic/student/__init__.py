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

from compressai_vlic.lazy import lazy_exports

_MODULES = {
    "config": "StudentConfig",
    "model": "StudentModel load_student",
    "teacher": (
        "TeacherPair TeacherPoint TeacherData read_teacher_pairs read_teacher_points "
        "write_teacher_points"
    ),
    "reliability": "reliability",
    "options": "ReliabilityType",
    "train": "train_student TrainResult",
    "calibration": "Calibration fit_calibration",
    "agreement": "wilson_interval agreement",
    "judge": "StudentJudge",
    "loss": "StudentLoss",
    "rating": "rating_template parse_rating",
    "raters": "OpenAIRater HFRater MetricRater",
}

__getattr__, __all__, _EXPORTS = lazy_exports(__name__, _MODULES)
