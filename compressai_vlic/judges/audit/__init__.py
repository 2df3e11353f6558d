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

from compressai_vlic.lazy import lazy_getattr

_EXPORTS = {
    "RawAnswers": "compressai_vlic.judges.audit.collect",
    "collect": "compressai_vlic.judges.audit.collect",
    "derive": "compressai_vlic.judges.audit.collect",
    "HumanPair": "compressai_vlic.judges.audit.readers",
    "load_bapps": "compressai_vlic.judges.audit.readers",
    "load_csv": "compressai_vlic.judges.audit.readers",
    "AuditReport": "compressai_vlic.judges.audit.report",
    "JudgeReport": "compressai_vlic.judges.audit.report",
    "format_report": "compressai_vlic.judges.audit.report",
    "plot_report": "compressai_vlic.judges.audit.report",
    "write_report": "compressai_vlic.judges.audit.report",
    "AuditSettings": "compressai_vlic.judges.audit.run",
    "audit": "compressai_vlic.judges.audit.run",
    "ScaleType": "compressai_vlic.judges.audit.options",
    "ScalingStats": "compressai_vlic.judges.audit.scaling",
    "SceneScale": "compressai_vlic.judges.audit.scaling",
    "fit_scale": "compressai_vlic.judges.audit.scaling",
    "scaling_stats": "compressai_vlic.judges.audit.scaling",
    "SEPARABILITY_EDGES": "compressai_vlic.judges.audit.statistics",
    "AccuracyStats": "compressai_vlic.judges.audit.statistics",
    "Agreement": "compressai_vlic.judges.audit.statistics",
    "BinStats": "compressai_vlic.judges.audit.statistics",
    "Estimate": "compressai_vlic.judges.audit.statistics",
    "HumanCeiling": "compressai_vlic.judges.audit.statistics",
    "PositionBias": "compressai_vlic.judges.audit.statistics",
    "SelfConsistency": "compressai_vlic.judges.audit.statistics",
    "accuracy_stats": "compressai_vlic.judges.audit.statistics",
    "binned_accuracy": "compressai_vlic.judges.audit.statistics",
    "bootstrap_mean": "compressai_vlic.judges.audit.statistics",
    "bootstrap_ratio": "compressai_vlic.judges.audit.statistics",
    "cohen_kappa": "compressai_vlic.judges.audit.statistics",
    "majority_credit": "compressai_vlic.judges.audit.statistics",
    "position_bias": "compressai_vlic.judges.audit.statistics",
    "prob_b": "compressai_vlic.judges.audit.statistics",
    "self_consistency": "compressai_vlic.judges.audit.statistics",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
