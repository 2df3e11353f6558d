"""Rectified-flow decoder: velocity network conditioned on the K code tokens.

The velocity network is diffusers' ``SD3Transformer2DModel`` (MMDiT joint blocks, patchify,
timestep embedding, adaLN output head). The code tokens play the role of SD3's text tokens: each
token's d FSQ values are embedded, a learned position is added, and their mean is the "pooled"
vector that joins the timestep embedding. Classifier-free guidance uses a learned null code.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from torch import Tensor, nn

from compressai_vlic.models.config import VLICConfig

# SD3's timestep embedding was designed for t in [0, 1000].
TIMESTEP_SCALE = 1000.0


class VelocityDecoder(nn.Module):
    """v_theta(x_t, t, codes): (B, 3, T, T) model-space image, t in [0, 1] -> velocity."""

    def __init__(self, config: VLICConfig):
        super().__init__()
        width, heads = config.decoder_width, config.decoder_heads
        self.transformer = SD3Transformer2DModel(
            sample_size=config.image_size,
            patch_size=config.patch_size,
            in_channels=config.in_channels,
            num_layers=config.decoder_depth,
            attention_head_dim=width // heads,
            num_attention_heads=heads,
            joint_attention_dim=width,
            caption_projection_dim=width,
            pooled_projection_dim=width,
            out_channels=config.in_channels,
            pos_embed_max_size=config.image_size // config.patch_size,
            qk_norm="rms_norm",
        )
        self.code_embed = nn.Linear(config.code_dim, width)
        self.code_pos = nn.Parameter(torch.randn(config.num_tokens, width) * 0.02)
        self.null_code = nn.Parameter(torch.randn(config.num_tokens, width) * 0.02)

    def context(self, codes: Tensor | None, batch: int, drop_mask: Tensor | None = None) -> Tensor:
        """(B, K, width) conditioning tokens; rows where drop_mask is True get the null code."""
        null = (self.null_code + self.code_pos).unsqueeze(0).expand(batch, -1, -1)
        if codes is None:
            return null
        ctx = self.code_embed(codes.to(self.code_pos.dtype)) + self.code_pos
        if drop_mask is not None:
            ctx = torch.where(drop_mask.view(-1, 1, 1).to(ctx.device), null, ctx)
        return ctx

    def forward(
        self, x_t: Tensor, t: Tensor, codes: Tensor | None, drop_mask: Tensor | None = None
    ) -> Tensor:
        b, dtype = x_t.shape[0], self.code_pos.dtype
        ctx = self.context(codes, b, drop_mask)
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).reshape(-1).expand(b)
        out = self.transformer(
            hidden_states=x_t.to(dtype),
            encoder_hidden_states=ctx,
            pooled_projections=ctx.mean(dim=1),
            timestep=t * TIMESTEP_SCALE,
            return_dict=False,
        )
        return out[0].to(x_t.dtype)
