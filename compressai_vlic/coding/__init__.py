"""Entropy coding of VLIC tokens: deterministic integer CDFs and the rANS token coder."""

from __future__ import annotations

from compressai_vlic.coding.cdf import check_cdf, logits_to_cdf
from compressai_vlic.coding.token_coder import TokenCoder

__all__ = ["TokenCoder", "check_cdf", "logits_to_cdf"]
