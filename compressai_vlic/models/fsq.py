"""Finite scalar quantisation (Mentzer et al., 2023): a fixed grid, so no codebook or aux losses.

Each latent dimension j is bounded with tanh to L_j levels and rounded with a straight-through
gradient. The integer indices (one FSQ "digit" per dimension) are what the prior and the entropy
coder see; the codes in [-1, 1] are what the decoder sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from compressai_vlic.errors import ConfigError


@dataclass
class FSQOutput:
    """codes: (B, K, d) float in [-1, 1] (straight-through); indices: (B, K, d) long in [0, L_j)."""

    codes: Tensor
    indices: Tensor


class FSQ(nn.Module):
    """Quantise (B, K, d) latents to the per-dimension levels ``levels``."""

    def __init__(self, levels: Sequence[int], eps: float = 1e-3):
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or min(levels) < 2:
            raise ConfigError(f"FSQ levels must all be >= 2, got {levels}")
        self.levels = levels
        self.eps = eps
        lv = torch.tensor(levels, dtype=torch.float32)
        # Constants, not learnt and derived from ``levels``: keep them out of the state dict.
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer(
            "_half_width", torch.div(lv, 2, rounding_mode="floor"), persistent=False
        )

    @property
    def dim(self) -> int:
        return len(self.levels)

    def bound(self, z: Tensor) -> Tensor:
        """Squash to (-L/2, L/2) so that rounding gives exactly L values (even L offset by 1/2)."""
        levels = self._levels.to(z.device)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(torch.remainder(levels, 2) == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: Tensor) -> FSQOutput:
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ expects last dim {self.dim}, got {tuple(z.shape)}")
        bounded = self.bound(z.float())
        rounded = torch.round(bounded)
        quantised = bounded + (rounded - bounded).detach()  # straight-through estimator
        half_width = self._half_width.to(z.device)
        codes = quantised / half_width
        indices = (rounded.detach() + half_width).long()
        return FSQOutput(codes=codes, indices=indices)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Map integer digits (B, K, d) back to the decoder's codes in [-1, 1]."""
        if indices.shape[-1] != self.dim:
            raise ValueError(f"FSQ expects last dim {self.dim}, got {tuple(indices.shape)}")
        half_width = self._half_width.to(indices.device)
        return (indices.float() - half_width) / half_width
