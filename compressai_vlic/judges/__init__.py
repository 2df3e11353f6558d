"""Perceptual judges: which of two reconstructions is closer to the original?

Importing this package is cheap: names are resolved on first use (PEP 562), so
``from compressai_vlic.judges import make_judge`` does not pull in torch, openai or transformers
until a judge is actually built.
"""

from __future__ import annotations

from compressai_vlic.lazy import lazy_exports

_MODULES = {
    "types": "Choice Judge JudgeRequest Judgment Vote choice_from_score",
    "factory": "make_judge register_judge available_judges",
    "spec": "JudgeSpec",
    "cache": "CachedJudge JudgmentCache",
    "prompts": "PromptTemplate get_template",
    "openai_judge": "OpenAIJudge",
    "hf_judge": "HFJudge",
}

__getattr__, __all__, _EXPORTS = lazy_exports(__name__, _MODULES)
