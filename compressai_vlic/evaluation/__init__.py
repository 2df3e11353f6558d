"""Side-by-side codec evaluation: codecs at matched rates, metrics, BD-rates, plots.

Names resolve on first use (PEP 562), so importing this package (or a light module of it, such
as :mod:`.codec_bench` or :mod:`.options`) pulls in nothing heavy.
"""

from __future__ import annotations

from compressai_vlic.lazy import lazy_exports

_MODULES = {
    "bd": "BDOverlapWarning BDResult bd_metric bd_rate",
    "codecs": (
        "Codec CodedImage CompressAICodec PillowCodec VLICCodec make_codec pillow_format_available"
    ),
    "compare": (
        "CompareSettings ComparisonResult CurvePoint ImageRow JudgeScore compressai_json "
        "format_table run_comparison write_outputs"
    ),
    "external": "FolderCodec HubCodec ReconstructionFolderError",
}

__getattr__, __all__, _EXPORTS = lazy_exports(__name__, _MODULES)
