"""Side-by-side codec evaluation: codecs at matched rates, metrics, BD-rates, plots."""

from compressai_vlic.evaluation.bd import BDOverlapWarning, BDResult, bd_metric, bd_rate
from compressai_vlic.evaluation.codecs import (
    Codec,
    CodedImage,
    CompressAICodec,
    PillowCodec,
    VLICCodec,
    make_codec,
    pillow_format_available,
)
from compressai_vlic.evaluation.compare import (
    CompareSettings,
    ComparisonResult,
    CurvePoint,
    ImageRow,
    JudgeScore,
    compressai_json,
    format_table,
    run_comparison,
    write_outputs,
)
from compressai_vlic.evaluation.external import FolderCodec, HubCodec, ReconstructionFolderError

__all__ = [
    "BDOverlapWarning",
    "BDResult",
    "Codec",
    "CodedImage",
    "CompareSettings",
    "ComparisonResult",
    "CompressAICodec",
    "CurvePoint",
    "FolderCodec",
    "HubCodec",
    "ImageRow",
    "JudgeScore",
    "PillowCodec",
    "ReconstructionFolderError",
    "VLICCodec",
    "bd_metric",
    "bd_rate",
    "compressai_json",
    "format_table",
    "make_codec",
    "pillow_format_available",
    "run_comparison",
    "write_outputs",
]
