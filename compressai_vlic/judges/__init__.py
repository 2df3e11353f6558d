"""Perceptual judges: which of two reconstructions is closer to the original?

Importing this package is cheap: names are resolved on first use (PEP 562), so
``from compressai_vlic.judges import make_judge`` does not pull in torch, openai or transformers
until a judge is actually built.
"""

from __future__ import annotations

from compressai_vlic.lazy import lazy_getattr

_EXPORTS = {
    "Choice": "compressai_vlic.judges.types",
    "Judge": "compressai_vlic.judges.types",
    "JudgeRequest": "compressai_vlic.judges.types",
    "Judgment": "compressai_vlic.judges.types",
    "Vote": "compressai_vlic.judges.types",
    "choice_from_score": "compressai_vlic.judges.types",
    "make_judge": "compressai_vlic.judges.factory",
    "JudgeSpec": "compressai_vlic.judges.spec",
    "register_judge": "compressai_vlic.judges.factory",
    "available_judges": "compressai_vlic.judges.factory",
    "CachedJudge": "compressai_vlic.judges.cache",
    "JudgmentCache": "compressai_vlic.judges.cache",
    "PromptTemplate": "compressai_vlic.judges.prompts",
    "get_template": "compressai_vlic.judges.prompts",
    "OpenAIJudge": "compressai_vlic.judges.openai_judge",
    "HFJudge": "compressai_vlic.judges.hf_judge",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
