"""FlowMo-style transformer encoder: image patches + K learned latent tokens in MMDiT joint blocks.

Both streams attend jointly (diffusers ``JointTransformerBlock``); only the latent stream leaves
the encoder, so the last block is "context pre-only" for the image stream (no unused weights).
The latent tokens are projected to d = len(fsq_levels) dims and quantised by FSQ.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from diffusers.models.attention import JointTransformerBlock
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.normalization import AdaLayerNormContinuous
from torch import Tensor, nn

from compressai_vlic.models.config import VLICConfig


class TokenEncoder(nn.Module):
    """(B, 3, T, T) image in [-1, 1] -> (B, K, d) continuous latent (before FSQ)."""

    def __init__(self, config: VLICConfig):
        super().__init__()
        width, heads = config.encoder_width, config.encoder_heads
        self.image_size = config.image_size
        self.patch_embed = PatchEmbed(
            height=config.image_size,
            width=config.image_size,
            patch_size=config.patch_size,
            in_channels=config.in_channels,
            embed_dim=width,
        )
        self.latent_tokens = nn.Parameter(torch.randn(config.num_tokens, width) * 0.02)
        # The encoder has no timestep; a learned vector drives the blocks' adaLN modulation.
        self.modulation = nn.Parameter(torch.randn(width) * 0.02)
        self.blocks = nn.ModuleList(
            [
                JointTransformerBlock(
                    dim=width,
                    num_attention_heads=heads,
                    attention_head_dim=width // heads,
                    context_pre_only=i == config.encoder_depth - 1,
                    qk_norm="rms_norm",
                )
                for i in range(config.encoder_depth)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(width, width, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(width, config.code_dim)
        # Recompute each block in backward instead of keeping its activations (diffusers' name).
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        patches = self.patch_embed(x.to(self.latent_tokens.dtype)).contiguous()
        latents = self.latent_tokens.unsqueeze(0).expand(b, -1, -1).to(patches.dtype)
        temb = self.modulation.unsqueeze(0).expand(b, -1).to(patches.dtype)
        checkpointed = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            # Latent tokens are the block's main stream, image patches its context stream.
            if checkpointed:
                patches, latents = torch.utils.checkpoint.checkpoint(
                    block, latents, patches, temb, use_reentrant=False
                )
            else:
                patches, latents = block(
                    hidden_states=latents, encoder_hidden_states=patches, temb=temb
                )
        return self.proj_out(self.norm_out(latents, temb))
