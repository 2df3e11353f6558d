"""Side-by-side codec evaluation: codecs at matched rates, metrics, BD-rates, plots.

Names resolve on first use (PEP 562), so importing this package (or a light module of it, such
as :mod:`.codec_bench` or :mod:`.options`) pulls in nothing heavy.
"""

from __future__ import annotations

from compressai_vlic.lazy import lazy_getattr

_EXPORTS = {
    "BDOverlapWarning": "compressai_vlic.evaluation.bd",
    "BDResult": "compressai_vlic.evaluation.bd",
    "bd_metric": "compressai_vlic.evaluation.bd",
    "bd_rate": "compressai_vlic.evaluation.bd",
    "Codec": "compressai_vlic.evaluation.codecs",
    "CodedImage": "compressai_vlic.evaluation.codecs",
    "CompressAICodec": "compressai_vlic.evaluation.codecs",
    "PillowCodec": "compressai_vlic.evaluation.codecs",
    "VLICCodec": "compressai_vlic.evaluation.codecs",
    "make_codec": "compressai_vlic.evaluation.codecs",
    "pillow_format_available": "compressai_vlic.evaluation.codecs",
    "CompareSettings": "compressai_vlic.evaluation.compare",
    "ComparisonResult": "compressai_vlic.evaluation.compare",
    "CurvePoint": "compressai_vlic.evaluation.compare",
    "ImageRow": "compressai_vlic.evaluation.compare",
    "JudgeScore": "compressai_vlic.evaluation.compare",
    "compressai_json": "compressai_vlic.evaluation.compare",
    "format_table": "compressai_vlic.evaluation.compare",
    "run_comparison": "compressai_vlic.evaluation.compare",
    "write_outputs": "compressai_vlic.evaluation.compare",
    "FolderCodec": "compressai_vlic.evaluation.external",
    "HubCodec": "compressai_vlic.evaluation.external",
    "ReconstructionFolderError": "compressai_vlic.evaluation.external",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
