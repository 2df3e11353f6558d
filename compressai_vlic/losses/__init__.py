"""Training objectives that are also CompressAI criteria (entry point group ``compressai.criteria``)."""

from compressai_vlic.losses.dpo import (
    DEFAULT_BETA,
    DEFAULT_LAMBDA_FLOW,
    DEFAULT_WEIGHTING,
    DPOOutput,
    LabelType,
    VLMRewardLoss,
    WeightingType,
    diffusion_dpo_loss,
    per_sample_error,
    timestep_weight,
)

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_LAMBDA_FLOW",
    "DEFAULT_WEIGHTING",
    "DPOOutput",
    "LabelType",
    "VLMRewardLoss",
    "WeightingType",
    "diffusion_dpo_loss",
    "per_sample_error",
    "timestep_weight",
]
