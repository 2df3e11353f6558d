"""Judge audit: how well does a judge agree with human 2AFC labels, and how noisy is it?

Inputs: the BAPPS 2AFC layout (``ref/``, ``p0/``, ``p1/``, ``judge/*.npy`` holding the fraction of
humans who preferred ``p1``; optionally one sub-folder per distortion category) or a plain CSV
with columns ``reference,a,b`` and ``human_b`` (fraction preferring b) or ``human_a``, plus
optional ``n_humans``, ``scene`` and ``category``.

Every judge is asked each pair in both orders, ``repeats`` times. From those raw answers the audit
derives, with the same combination rules the dataset builder uses (:mod:`..compose`):
accuracy against the human majority (abstentions get half credit, as a coin flip would) and the
BAPPS score ``p*h + (1-p)*(1-h)``, both with bootstrap intervals, for a single vote, the
symmetrised vote and majorities of k votes; the human ceiling; the position-bias rate;
self-consistency across repeats; Cohen's kappa between judges; accuracy by perceptual
separability (``|h - 0.5|``, or a metric gap); and, where a scene has three or more stimuli,
per-stimulus scale values (Bradley-Terry or Thurstone Case V) compared with the human scale by
Spearman correlation with scene-bootstrap intervals. Prompt variants for other attributes
(contrast, colorfulness, overall preference) are judges built with another ``attribute`` and use
the same machinery.

One module per concept: :mod:`.readers` (BAPPS layout, CSV), :mod:`.collect` (asking judges),
:mod:`.statistics` (bootstrap intervals, agreement, consistency, separability), :mod:`.scaling`
(Bradley-Terry, Thurstone), :mod:`.report` (table, JSON, plot) and :mod:`.run` (the audit).

Names resolve on first use (PEP 562), so importing this package pulls in nothing heavy.
"""

from __future__ import annotations

from compressai_vlic.lazy import lazy_exports

_MODULES = {
    "collect": "RawAnswers collect derive",
    "readers": "HumanPair load_bapps load_csv",
    "report": "AuditReport JudgeReport format_report plot_report write_report",
    "run": "AuditSettings audit",
    "options": "ScaleType",
    "scaling": "ScalingStats SceneScale fit_scale scaling_stats",
    "statistics": (
        "SEPARABILITY_EDGES AccuracyStats Agreement BinStats Estimate HumanCeiling "
        "PositionBias SelfConsistency accuracy_stats binned_accuracy bootstrap_mean "
        "bootstrap_ratio cohen_kappa majority_credit position_bias prob_b "
        "self_consistency"
    ),
}

__getattr__, __all__, _EXPORTS = lazy_exports(__name__, _MODULES)
