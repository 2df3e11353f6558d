"""VLIC as a CompressAI ``CompressionModel``: encoder -> FSQ tokens -> AR prior + rANS -> flow decoder.

Two faces:
- typed methods for training (``encode``, ``velocity``, ``flow_matching``, ``token_nll_bits``,
  ``decode_codes``) that work on training-resolution tiles;
- CompressAI's contract (``forward``, ``compress``, ``decompress``, ``update``,
  ``from_state_dict``, ``load_state_dict``) on images of any size, tiled with ``TileLayout``.

``compress`` puts everything the decoder needs (image size, tiling, decode seed, sampler settings,
config hash) in the container bytes, so ``decompress`` reproduces exactly the image that
``decode_codes`` gives with the same seed and settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from compressai.models import CompressionModel
from torch import Tensor

from compressai_vlic.bitstream import StreamHeader, pack, unpack
from compressai_vlic.coding import TokenCoder
from compressai_vlic.errors import (
    BitstreamError,
    CheckpointError,
    ConfigError,
    CorruptStreamError,
)
from compressai_vlic.models.config import VLICConfig
from compressai_vlic.models.decoder import VelocityDecoder
from compressai_vlic.models.encoder import TokenEncoder
from compressai_vlic.models.fsq import FSQ
from compressai_vlic.models.prior import ARPrior
from compressai_vlic.sampling import RectifiedFlowSampler, cfg_combine, seeded_noise
from compressai_vlic.tiling import TileLayout

CONFIG_KEY = "_config_json"


@dataclass
class EncodeOutput:
    """latent: (B, K, d) before FSQ; codes: (B, K, d) in [-1, 1]; indices: (B, K, d) long."""

    latent: Tensor
    codes: Tensor
    indices: Tensor


@dataclass
class FlowMatchingOutput:
    """One flow-matching evaluation.

    ``x_t``, ``noise``, ``v_target`` and ``v_pred`` are in model space ([-1, 1] data scaling);
    ``x0_hat`` (one-step estimate x_t - t v_pred) is mapped back to image space [0, 1] (not
    clamped) so it can be compared with the input directly (e.g. by LPIPS).
    ``loss_per_sample`` is the mean squared velocity error of each sample (B,); ``loss`` its mean.
    """

    loss: Tensor
    x_t: Tensor
    t: Tensor
    noise: Tensor
    v_target: Tensor
    v_pred: Tensor
    x0_hat: Tensor
    loss_per_sample: Tensor
    drop_mask: Tensor | None = None


@dataclass(frozen=True)
class SamplerSettings:
    """The decode-time settings that travel in each stream header."""

    seed: int
    num_steps: int
    guidance_scale: float
    time_shift: float


def config_to_tensor(config: VLICConfig) -> Tensor:
    return torch.tensor(list(config.to_json().encode("utf-8")), dtype=torch.uint8)


def config_from_tensor(buffer: Tensor) -> VLICConfig:
    try:
        text = bytes(buffer.detach().cpu().to(torch.uint8).tolist()).decode("utf-8")
    except (UnicodeDecodeError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's {CONFIG_KEY} buffer is unreadable: {exc}") from exc
    try:
        return VLICConfig.from_json(text)
    except ConfigError as exc:
        raise CheckpointError(f"the checkpoint's model config is invalid: {exc}") from exc


def _checkpoint_block(block: torch.nn.Module, *args: Any) -> Any:
    """diffusers' checkpointing hook, pinned to the non-reentrant implementation."""
    return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)


def _to_model_space(x: Tensor) -> Tensor:
    return x * 2.0 - 1.0


def _to_image_space(x: Tensor) -> Tensor:
    return (x + 1.0) / 2.0


class VLIC(CompressionModel):
    """Diffusion-autoencoder image codec (VLIC / FlowMo style) with real rANS bitstreams."""

    def __init__(self, config: VLICConfig | None = None, **overrides: Any):
        super().__init__()
        config = config if config is not None else VLICConfig()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        self.register_buffer(CONFIG_KEY, config_to_tensor(config))
        self.encoder = TokenEncoder(config)
        self.fsq = FSQ(config.fsq_levels)
        self.decoder = VelocityDecoder(config)
        self.prior = ARPrior(
            levels=config.fsq_levels,
            num_tokens=config.num_tokens,
            width=config.prior_width,
            depth=config.prior_depth,
            heads=config.prior_heads,
        )
        self.token_coder = TokenCoder(config.fsq_levels)

    # ---------------------------------------------------------- memory / speed
    def enable_gradient_checkpointing(self) -> None:
        """Recompute every encoder and decoder block in backward instead of storing activations.

        At the paper width this keeps about a tenth of the activations per sample (see
        docs/training.md, "Memory"); the price is one extra forward pass of each block.
        """
        self.encoder.gradient_checkpointing = True
        self.decoder.transformer.enable_gradient_checkpointing(_checkpoint_block)

    def disable_gradient_checkpointing(self) -> None:
        """Keep every block's activations again (the default)."""
        self.encoder.gradient_checkpointing = False
        self.decoder.transformer.disable_gradient_checkpointing()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(self.encoder.gradient_checkpointing) and bool(
            self.decoder.transformer.gradient_checkpointing
        )

    def compile_blocks(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` each encoder and decoder block in place (regional compilation).

        Compiling blocks rather than whole modules keeps the state-dict keys unchanged, shares
        one compiled graph between identical blocks and composes with gradient checkpointing.
        ``compile_kwargs`` go to ``nn.Module.compile`` (e.g. ``mode="max-autotune-no-cudagraphs"``).
        """
        for block in (*self.encoder.blocks, *self.decoder.transformer.transformer_blocks):
            block.compile(**compile_kwargs)

    # ------------------------------------------------------------ training API
    def _check_tiles(self, x: Tensor) -> None:
        t = self.config.image_size
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[-2:] != (t, t):
            raise ValueError(
                f"expected (B, {self.config.in_channels}, {t}, {t}) training-size tiles, got "
                f"{tuple(x.shape)}; use compress()/forward() for images of any size"
            )

    def encode(self, x: Tensor) -> EncodeOutput:
        """Tokens of (B, 3, T, T) images in [0, 1] (T = config.image_size)."""
        self._check_tiles(x)
        latent = self.encoder(_to_model_space(x))
        q = self.fsq(latent)
        return EncodeOutput(latent=latent, codes=q.codes, indices=q.indices)

    def velocity(
        self,
        x_t: Tensor,
        t: Tensor | float,
        codes: Tensor | None,
        drop_mask: Tensor | None = None,
    ) -> Tensor:
        """v_theta(x_t, t | codes); codes=None or drop_mask rows use the learned null code."""
        return self.decoder(x_t, torch.as_tensor(t), codes, drop_mask)

    def flow_matching(
        self,
        x: Tensor,
        codes: Tensor | None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        drop_mask: Tensor | None = None,
    ) -> FlowMatchingOutput:
        """Rectified-flow loss at (t, noise); defaults: logit-normal t, N(0, I) noise.

        If ``drop_mask`` is None and the module is in training mode, codes are dropped with
        probability ``config.code_dropout`` (CFG training). Pass an explicit mask to share it
        between a policy and a reference model (Diffusion-DPO).
        """
        b = x.shape[0]
        data = _to_model_space(x)
        if t is None:
            t = torch.sigmoid(torch.randn(b, device=x.device))
        t = torch.as_tensor(t, dtype=data.dtype, device=x.device).reshape(-1).expand(b)
        if noise is None:
            noise = torch.randn_like(data)
        if drop_mask is None and self.training and codes is not None and self.config.code_dropout:
            drop_mask = torch.rand(b, device=x.device) < self.config.code_dropout
        tb = t.view(-1, 1, 1, 1)
        x_t = (1 - tb) * data + tb * noise
        v_target = noise - data
        v_pred = self.velocity(x_t, t, codes, drop_mask)
        per_sample = (v_pred - v_target).pow(2).flatten(1).mean(dim=1)
        x0_hat = _to_image_space(x_t - tb * v_pred)
        return FlowMatchingOutput(
            loss=per_sample.mean(),
            x_t=x_t,
            t=t,
            noise=noise,
            v_target=v_target,
            v_pred=v_pred,
            x0_hat=x0_hat,
            loss_per_sample=per_sample,
            drop_mask=drop_mask,
        )

    def token_nll_bits(self, indices: Tensor) -> Tensor:
        """(B,) bits the prior assigns to each tile's tokens (differentiable rate term)."""
        return self.prior.nll_bits(indices)

    def sampler_settings(
        self,
        seed: int | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        time_shift: float | None = None,
    ) -> SamplerSettings:
        """Fill unset decode settings from the config defaults and check them."""
        cfg = self.config
        settings = SamplerSettings(
            seed=cfg.default_seed if seed is None else int(seed),
            num_steps=cfg.num_steps if num_steps is None else int(num_steps),
            guidance_scale=cfg.guidance_scale if guidance_scale is None else float(guidance_scale),
            time_shift=cfg.time_shift if time_shift is None else float(time_shift),
        )
        if not 0 <= settings.seed < 2**32:
            raise ConfigError(f"decode seed must fit in uint32, got {settings.seed}")
        RectifiedFlowSampler(settings.num_steps, settings.guidance_scale, settings.time_shift)
        return settings

    def _as_codes(self, codes_or_indices: Tensor) -> Tensor:
        if codes_or_indices.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            return self.fsq.indices_to_codes(codes_or_indices.long())
        return codes_or_indices

    @torch.no_grad()
    def decode_codes(
        self,
        codes: Tensor,
        seed: int | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        time_shift: float | None = None,
        layout: TileLayout | None = None,
    ) -> Tensor:
        """Sample images in [0, 1] from codes (float) or FSQ indices (integer), (B, K, d).

        Without ``layout`` each row is one training-size tile -> (B, 3, T, T). With a layout the
        rows are the tiles of one image, sampled jointly with MultiDiffusion blending, and the
        result is cropped to the image: (1, 3, H, W). Noise comes from a CPU generator seeded
        with ``seed`` and is drawn once for the whole canvas.
        """
        s = self.sampler_settings(seed, num_steps, guidance_scale, time_shift)
        cfg = self.config
        device = self._config_json.device
        codes = self._as_codes(codes.to(device))
        sampler = RectifiedFlowSampler(s.num_steps, s.guidance_scale, s.time_shift)

        def tile_velocity(x_t: Tensor, t: float, g: float, tile_codes: Tensor) -> Tensor:
            n = x_t.shape[0]
            tt = torch.full((n,), t, device=device)
            if g == 1.0:
                return self.velocity(x_t, tt, tile_codes)
            mask = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
            v = self.velocity(
                torch.cat([x_t, x_t]), tt.repeat(2), tile_codes.repeat(2, 1, 1), mask.to(device)
            )
            return cfg_combine(v[:n], v[n:], g)

        if layout is None:
            b = codes.shape[0]
            noise = seeded_noise((b, cfg.in_channels, cfg.image_size, cfg.image_size), s.seed)
            noise = noise.to(device)

            def velocity_fn(x_t: Tensor, t: float, g: float) -> Tensor:
                parts = [
                    tile_velocity(x_t[i : i + cfg.tile_batch], t, g, codes[i : i + cfg.tile_batch])
                    for i in range(0, b, cfg.tile_batch)
                ]
                return torch.cat(parts)

            x0 = sampler.sample(velocity_fn, noise)
            return _to_image_space(x0).clamp(0, 1)

        if codes.shape[0] != layout.num_tiles:
            raise ValueError(f"layout has {layout.num_tiles} tiles but got {codes.shape[0]} codes")
        noise = seeded_noise(
            (1, cfg.in_channels, layout.padded_height, layout.padded_width), s.seed
        ).to(device)

        def blended_velocity(x_t: Tensor, t: float, g: float) -> Tensor:
            return layout.blend(
                x_t,
                lambda windows, ids: tile_velocity(windows, t, g, codes[ids.to(device)]),
                cfg.tile_batch,
            )

        x0 = sampler.sample(blended_velocity, noise)
        return layout.crop(_to_image_space(x0).clamp(0, 1))

    # ------------------------------------------------------------- image level
    def layout_for(self, height: int, width: int) -> TileLayout:
        return TileLayout.for_image(height, width, self.config.image_size, self.config.tile_overlap)

    def encode_image(self, x: Tensor) -> tuple[TileLayout, EncodeOutput]:
        """Tokens of one (1, 3, H, W) image of any size: one row per tile (row-major)."""
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a (1, {self.config.in_channels}, H, W) image, got {tuple(x.shape)}"
            )
        layout = self.layout_for(int(x.shape[-2]), int(x.shape[-1]))
        tiles = layout.split(layout.pad(x)).to(self._config_json.device)
        outs = [
            self.encode(tiles[i : i + self.config.tile_batch])
            for i in range(0, tiles.shape[0], self.config.tile_batch)
        ]
        return layout, EncodeOutput(
            latent=torch.cat([o.latent for o in outs]),
            codes=torch.cat([o.codes for o in outs]),
            indices=torch.cat([o.indices for o in outs]),
        )

    def token_likelihoods(self, indices: Tensor) -> Tensor:
        """(B, K, d) prior probability of each digit, floored at the coder's 2**-precision.

        The rANS tables give every symbol at least 1/2**precision, so a digit the prior deems
        nearly impossible costs the stream at most ``precision`` bits: the floor makes
        CompressAI's estimated bpp what the coder actually spends, even for an over-confident prior.
        """
        floor = 2.0**-self.token_coder.precision
        return self.prior.likelihoods(indices).clamp_min(floor)

    def forward(self, x: Tensor) -> dict[str, Any]:
        """CompressAI forward on unpadded images: real samples + the prior's token likelihoods."""
        x_hats, likelihoods = [], []
        for img in x.split(1):
            layout, enc = self.encode_image(img)
            likelihoods.append(self.token_likelihoods(enc.indices))
            x_hats.append(self.decode_codes(enc.indices, layout=layout).to(x.device))
        return {"x_hat": torch.cat(x_hats), "likelihoods": {"tokens": torch.cat(likelihoods)}}

    @torch.no_grad()
    def compress(self, x: Tensor, seed: int | None = None) -> dict[str, Any]:
        """Real container bytes per image: {"strings": [[bytes, ...]], "shape": (H, W)}.

        The sampler settings are the config defaults, stored in the header (floats as float16:
        ``stream_settings`` gives the exact values a decoder will use).
        """
        strings = []
        for img in x.split(1):
            layout, enc = self.encode_image(img)
            payload = self.token_coder.encode(enc.indices.cpu(), self.prior)
            strings.append(pack(self.stream_header(layout, seed), payload))
        return {"strings": [strings], "shape": (int(x.shape[-2]), int(x.shape[-1]))}

    def stream_header(self, layout: TileLayout, seed: int | None = None) -> StreamHeader:
        """The container header ``compress`` writes for an image with this layout."""
        s = self.sampler_settings(seed)
        return StreamHeader(
            config_hash=self.config.config_hash(),
            height=layout.height,
            width=layout.width,
            tile_overlap=layout.overlap,
            seed=s.seed,
            num_steps=s.num_steps,
            guidance_scale=s.guidance_scale,
            time_shift=s.time_shift,
        )

    def stream_settings(self, seed: int | None = None) -> SamplerSettings:
        """Decode settings exactly as a stream written with ``seed`` carries them."""
        h = self.stream_header(self.layout_for(1, 1), seed)
        return SamplerSettings(h.seed, h.num_steps, h.guidance_scale, h.time_shift)

    @torch.no_grad()
    def decompress(self, strings: Sequence[Sequence[bytes]], shape: Any = None) -> dict[str, Any]:
        """Decode container bytes (everything needed is inside them) -> {"x_hat": (B, 3, H, W)}."""
        if len(strings) != 1:
            raise BitstreamError(f"VLIC streams have one string list, got {len(strings)}")
        x_hats = []
        for data in strings[0]:
            header, payload = unpack(data)
            header.check_model(self.config.config_hash())
            try:
                layout = header.tile_layout(self.config.image_size)
            except ConfigError as exc:
                raise CorruptStreamError(f"stream has an invalid tiling: {exc}") from exc
            if shape is not None and tuple(int(v) for v in shape) != (header.height, header.width):
                raise BitstreamError(
                    f"stream holds a {header.height}x{header.width} image but shape={tuple(shape)}"
                )
            indices = self.token_coder.decode(
                payload, self.prior, batch=layout.num_tiles, num_tokens=self.config.num_tokens
            )
            x_hats.append(
                self.decode_codes(
                    indices,
                    seed=header.seed,
                    num_steps=header.num_steps,
                    guidance_scale=header.guidance_scale,
                    time_shift=header.time_shift,
                    layout=layout,
                )
            )
        return {"x_hat": torch.cat(x_hats)}

    # ------------------------------------------------------- state handling
    def update(
        self, scale_table: Tensor | None = None, force: bool = False, update_quantiles: bool = False
    ) -> bool:
        """Nothing to rebuild: CDFs are computed from the prior, in integers, at coding time."""
        return False

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load weights after checking that the checkpoint was made for this architecture."""
        if strict and CONFIG_KEY not in state_dict:
            raise CheckpointError(
                f"state dict has no {CONFIG_KEY!r} entry: it was not saved from a VLIC model"
            )
        return torch.nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Runs for direct loads and when VLIC is nested (e.g. inside a LightningModule).
        key = prefix + CONFIG_KEY
        if key in state_dict:
            other = config_from_tensor(state_dict[key])
            if other.config_hash() != self.config.config_hash():
                raise CheckpointError(
                    f"checkpoint config {other.name!r} (hash {other.config_hash().hex()}) does not "
                    f"match this model's config {self.config.name!r} (hash "
                    f"{self.config.config_hash().hex()}); build it with VLIC.from_state_dict(sd)"
                )
            # Keep our own config: sampler defaults may legitimately differ from the checkpoint's.
            state_dict[key] = self._config_json
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> VLIC:
        """Rebuild from a bare state dict: the config is read from its uint8 buffer."""
        if CONFIG_KEY not in state_dict:
            raise CheckpointError(
                f"state dict has no {CONFIG_KEY!r} entry: it was not saved from a VLIC model"
            )
        net = cls(config_from_tensor(state_dict[CONFIG_KEY]))
        net.load_state_dict(state_dict)
        return net
