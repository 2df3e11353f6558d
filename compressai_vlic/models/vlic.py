"""VLIC as a CompressAI ``CompressionModel``: encoder -> FSQ tokens -> AR prior + rANS -> flow decoder.

Two faces:
- typed methods for training (``encode``, ``velocity``, ``flow_matching``, ``token_nll_bits``,
  ``decode_codes``) that work on training-resolution tiles;
- CompressAI's contract (``forward``, ``compress``, ``decompress``, ``update``, ``aux_loss``,
  ``from_state_dict``, ``load_state_dict``) on images of any size, tiled with ``TileLayout``;
- the Hugging Face Hub's (``save_pretrained``, ``from_pretrained``, ``push_to_hub``: safetensors
  weights, ``config.json`` and a generated model card), from ``PyTorchModelHubMixin``.

``compress`` puts everything the decoder needs (image size, tiling, decode seed, sampler settings,
config hash) in the container bytes, so ``decompress`` reproduces exactly the image that
``decode_codes`` gives with the same seed and settings.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.utils.checkpoint
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from compressai_vlic._compressai import CompressionModel, register_model
from compressai_vlic.bitstream import (
    CHECKSUM_BYTES,
    HEADER_BYTES,
    HEADER_BYTES_V1,
    StreamHeader,
    declared_size,
    pack,
    unpack,
)
from compressai_vlic.coding import TokenCoder
from compressai_vlic.errors import (
    BitstreamError,
    CheckpointError,
    ConfigError,
    CorruptStreamError,
    DecompressArgumentError,
    ModelMismatchError,
    StreamLimitError,
)
from compressai_vlic.models.config import VLICConfig
from compressai_vlic.models.decoder import VelocityDecoder
from compressai_vlic.models.encoder import TokenEncoder
from compressai_vlic.models.fsq import FSQ
from compressai_vlic.models.hub import (
    MODEL_CARD_TEMPLATE,
    load_weights,
    stored_config_json,
    weights_file,
)
from compressai_vlic.models.prior import ARPrior
from compressai_vlic.options import STREAM_MAX_PIXELS, DecodeDtype, check_option
from compressai_vlic.sampling import (
    MAX_NUM_STEPS,
    RectifiedFlowSampler,
    cfg_combine,
    seeded_noise,
)
from compressai_vlic.tiling import SEAMLESS_FIELD, TileLayout

CONFIG_KEY = "_config_json"
#: Default ``decompress`` limits: a stream may not make the decoder sample more pixels than
#: this (4096 x 4096; pass ``max_pixels=None`` to lift it; ``compress`` refuses larger images
#: under the same limit, so it never writes a stream the default decoder refuses) ...
DEFAULT_MAX_PIXELS = STREAM_MAX_PIXELS
#: ... nor more network evaluations per tile than the costliest stream this model's own encoder
#: writes (``"model"``: :meth:`VLIC.max_evaluations_per_tile`) ...
OWN_LIMIT = "model"
#: ... and no cap on the total by default (pixels x per-tile cost already bound it).
DEFAULT_MAX_EVALUATIONS: int | None = None
#: A per-tile evaluation limit: a count, ``"model"`` (the model's own maximum) or None (none).
PerTileLimit = int | Literal["model"] | None
#: Modules whose tensors the weights fingerprint covers (what decoding depends on).
FINGERPRINT_MODULES = ("decoder", "prior", "fsq")


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
    """The decode-time settings that travel in each stream header.

    The field names are :meth:`VLIC.decode_codes`' keywords: ``decode_codes(i, **asdict(s))``.
    """

    seed: int
    num_steps: int
    guidance_scale: float
    time_shift: float
    schedule: str = "power"
    power: float = 0.25
    cfg_interval: tuple[float, float] = (0.0, 1.0)

    def sampler(self) -> RectifiedFlowSampler:
        """The sampler these settings describe."""
        return RectifiedFlowSampler(
            self.num_steps,
            self.guidance_scale,
            self.time_shift,
            schedule=self.schedule,  # type: ignore[arg-type]
            power=self.power,
            cfg_interval=self.cfg_interval,
        )


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


#: How ``compress`` tiles an image (see :meth:`VLIC.layout_for`).
TilingType = Literal["seamless", "blend", "whole"]
TSampler = Literal["fat_lognormal", "lognormal"]
T_SAMPLERS: tuple[str, ...] = ("fat_lognormal", "lognormal")


def sample_t(
    batch: int,
    kind: TSampler = "fat_lognormal",
    uniform_share: float = 0.1,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    noise_share: float = 0.0,
) -> Tensor:
    """Training noise levels t in (0, 1], (batch,).

    ``"lognormal"``: t = sigmoid(n), n ~ N(0, 1). ``"fat_lognormal"`` (FlowMo's default): the
    same, with each t replaced by a uniform draw with probability ``uniform_share`` (0.1), so
    the low-noise end the sampler's last steps visit is trained too (P(t < 0.02) ~ 0.2 %
    instead of ~ 0.005 %). ``noise_share`` (default 0, FlowMo's) then sets that share of t to
    exactly 1, pure noise: there the decoder sees nothing of the image and must rebuild it from
    the code alone, which teaches a small or briefly trained decoder to use its code.
    """
    if kind not in T_SAMPLERS:
        raise ConfigError(f"t sampler must be one of {', '.join(T_SAMPLERS)}, got {kind!r}")
    if not 0 <= uniform_share <= 1:
        raise ConfigError(f"uniform_share must be in [0, 1], got {uniform_share}")
    if not 0 <= noise_share <= 1:
        raise ConfigError(f"noise_share must be in [0, 1], got {noise_share}")
    t = torch.sigmoid(torch.randn(batch, generator=generator))
    if kind == "fat_lognormal":
        uniform = torch.rand(batch, generator=generator)
        t = torch.where(torch.rand(batch, generator=generator) < uniform_share, uniform, t)
    if noise_share > 0:
        t = torch.where(torch.rand(batch, generator=generator) < noise_share, 1.0, t)
    return t.to(device) if device is not None else t


def _checkpoint_block(block: torch.nn.Module, *args: Any) -> Any:
    """diffusers' checkpointing hook, pinned to the non-reentrant implementation."""
    return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)


def _to_model_space(x: Tensor) -> Tensor:
    return x * 2.0 - 1.0


def _to_image_space(x: Tensor) -> Tensor:
    return (x + 1.0) / 2.0


class _ScaleOutput:
    """Forward hook multiplying a module's output by a constant (picklable, no state-dict keys)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        return output * self.factor


def _use_mup_attention(module: nn.Module) -> None:
    """FlowMo's muP attention: logits q.k * 8 / d instead of q.k / sqrt(d), d = head dim.

    diffusers' joint attention calls SDPA with its default 1/sqrt(d) scale, so both query
    streams (after their QK-norm) are multiplied by 8 / sqrt(d).
    """
    from diffusers.models.attention_processor import Attention

    for attn in module.modules():
        if not isinstance(attn, Attention):
            continue
        factor = 8.0 / math.sqrt(attn.inner_dim // attn.heads)
        for norm in (attn.norm_q, attn.norm_added_q):
            if norm is None:
                raise ConfigError("mup needs the query norms (qk_norm) of every attention")
            norm.register_forward_hook(_ScaleOutput(factor))


@register_model("vlic")
class VLIC(
    CompressionModel,
    PyTorchModelHubMixin,
    library_name="compressai-vlic",
    paper_url="https://arxiv.org/abs/2512.15701",
    license="apache-2.0",
    tags=["image-compression", "compressai", "vlic"],
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """Diffusion-autoencoder image codec (VLIC / FlowMo style) with real rANS bitstreams.

    Args:
        config: the model's :class:`VLICConfig` (or its dict, as in ``config.json``); default
            ``VLICConfig()``.
        **overrides: config fields to change (e.g. ``num_steps=10``).
    """

    def __init__(self, config: VLICConfig | Mapping[str, Any] | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = VLICConfig()
        elif isinstance(config, Mapping):
            config = VLICConfig.from_dict(config)
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        self._hub_mixin_config = config  # what save_pretrained writes to config.json
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
            digits=config.prior_digits,
        )
        self.token_coder = TokenCoder(config.fsq_levels)
        if config.mup:
            _use_mup_attention(self.encoder)
            _use_mup_attention(self.decoder)

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
        """Rectified-flow loss at (t, noise); defaults: ``sample_t`` ("fat_lognormal"), N(0, I) noise.

        If ``drop_mask`` is None and the module is in training mode, codes are dropped with
        probability ``config.code_dropout`` (CFG training). Pass an explicit mask to share it
        between a policy and a reference model (Diffusion-DPO).
        """
        b = x.shape[0]
        data = _to_model_space(x)
        if t is None:
            t = sample_t(b, device=x.device)
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
        schedule: str | None = None,
        power: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
    ) -> SamplerSettings:
        """Fill unset decode settings from the config defaults and check them."""
        cfg = self.config
        settings = SamplerSettings(
            seed=cfg.default_seed if seed is None else int(seed),
            num_steps=cfg.num_steps if num_steps is None else int(num_steps),
            guidance_scale=cfg.guidance_scale if guidance_scale is None else float(guidance_scale),
            time_shift=cfg.time_shift if time_shift is None else float(time_shift),
            schedule=cfg.schedule if schedule is None else str(schedule),
            power=cfg.schedule_power if power is None else float(power),
            cfg_interval=tuple(cfg.cfg_interval if cfg_interval is None else cfg_interval),
        )
        if not 0 <= settings.seed < 2**32:
            raise ConfigError(f"decode seed must fit in uint32, got {settings.seed}")
        settings.sampler()  # validates
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
        schedule: str | None = None,
        power: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
        decode_dtype: DecodeDtype = "float32",
    ) -> Tensor:
        """Sample images in [0, 1] from codes (float) or FSQ indices (integer), (B, K, d).

        Without ``layout`` each row is one training-size tile -> (B, 3, T, T). With a layout the
        rows are the tiles of one image, sampled jointly with MultiDiffusion blending, and the
        result is cropped to the image: (1, 3, H, W). Noise comes from a CPU generator seeded
        with ``seed`` and is drawn once for the whole canvas. Unset sampler settings come from
        the config (``schedule`` may also be ``"shift_v1"``, the grid of format-1 streams).
        ``decode_dtype="bfloat16"`` runs the decoder network under bf16 autocast (see
        :data:`DecodeDtype`); the sampler's state stays float32.
        """
        check_option("decode_dtype", decode_dtype, DecodeDtype)
        s = self.sampler_settings(
            seed, num_steps, guidance_scale, time_shift, schedule, power, cfg_interval
        )
        cfg = self.config
        device = self._config_json.device
        codes = self._as_codes(codes.to(device))
        sampler = s.sampler()
        bf16 = decode_dtype == "bfloat16"

        def network(*args: Tensor) -> Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return self.velocity(*args).float()

        def tile_velocity(x_t: Tensor, t: float, g: float, tile_codes: Tensor) -> Tensor:
            n = x_t.shape[0]
            tt = torch.full((n,), t, device=device)
            if g == 1.0:
                return network(x_t, tt, tile_codes)
            mask = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
            v = network(
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
            v = layout.blend(
                x_t,
                lambda windows, ids: tile_velocity(windows, t, g, codes[ids.to(device)]),
                cfg.tile_batch,
            )
            if not layout.seamless:
                return v
            # Deblock the clean-image estimate x0 = x_t - t v and step towards it instead.
            return (x_t - layout.deblock(x_t - t * v)) / t

        x0 = sampler.sample(blended_velocity, noise)
        return layout.crop(_to_image_space(x0).clamp(0, 1))

    # ------------------------------------------------------------- image level
    def layout_for(
        self, height: int, width: int, tiling_type: TilingType = "seamless"
    ) -> TileLayout:
        """The tile grid ``compress`` uses, with the fewest tiles that cover the image.

        Args:
            tiling_type: "seamless" (default): whole tiles without coded overlap, so the rate is
                that of the image's area rounded up to whole tiles, with the tile borders
                deblocked at every decode step (see :mod:`compressai_vlic.tiling`); "blend": the
                config's ``tile_overlap``, blended (MultiDiffusion) -- the overlap is coded twice,
                so the rate nearly doubles at small overlaps; "whole": no overlap where both sides
                are whole tiles, else as "blend", and no deblocking, so seams can show. The choice
                travels in the stream header's overlap byte.
        """
        check_option("tiling_type", tiling_type, TilingType)
        tile = self.config.image_size
        if tiling_type == "seamless":
            return TileLayout.for_image(height, width, tile, 0, seamless=True)
        whole = height % tile == 0 and width % tile == 0
        overlap = 0 if tiling_type == "whole" and whole else self.config.tile_overlap
        return TileLayout.for_image(height, width, tile, overlap)

    def encode_image(
        self, x: Tensor, tiling_type: TilingType = "seamless"
    ) -> tuple[TileLayout, EncodeOutput]:
        """Tokens of one (1, 3, H, W) image of any size: one row per tile (row-major)."""
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a (1, {self.config.in_channels}, H, W) image, got {tuple(x.shape)}"
            )
        layout = self.layout_for(int(x.shape[-2]), int(x.shape[-1]), tiling_type)
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
    def compress(
        self,
        x: Tensor,
        seed: int | None = None,
        tiling_type: TilingType = "seamless",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> dict[str, Any]:
        """Real container bytes per image: {"strings": [[bytes, ...]], "shape": (H, W)}.

        The sampler settings are the config defaults, stored in the header (floats as float16:
        ``stream_settings`` gives the exact values a decoder will use).

        Args:
            x: (B, 3, H, W) images in [0, 1].
            seed: decode seed stored in the stream (default: ``config.default_seed``).
            tiling_type: see :meth:`layout_for` ("seamless", the default, "blend" or
                "whole").
            max_pixels: refuse images over this many pixels (StreamLimitError, before any
                encoding): the decoder's default limit, so that every stream written here
                decodes with the defaults. None: no limit (decode with a matching
                ``max_pixels``).
        """
        height, width = int(x.shape[-2]), int(x.shape[-1])
        self.check_limits(self.stream_header(self.layout_for(height, width)), max_pixels)
        strings = []
        for img in x.split(1):
            layout, enc = self.encode_image(img, tiling_type)
            payload = self.token_coder.encode(enc.indices.cpu(), self.prior)
            strings.append(pack(self.stream_header(layout, seed), payload))
        return {"strings": [strings], "shape": (int(x.shape[-2]), int(x.shape[-1]))}

    def stream_header(self, layout: TileLayout, seed: int | None = None) -> StreamHeader:
        """The container header ``compress`` writes for an image with this layout."""
        s = self.sampler_settings(seed)
        if s.num_steps > MAX_NUM_STEPS:
            raise ConfigError(f"num_steps {s.num_steps} exceeds the stream limit {MAX_NUM_STEPS}")
        return StreamHeader(
            config_hash=self.config.config_hash(),
            height=layout.height,
            width=layout.width,
            tile_overlap=layout.header_field,
            seed=s.seed,
            num_steps=s.num_steps,
            guidance_scale=s.guidance_scale,
            schedule_param=s.power if s.schedule == "power" else s.time_shift,
            schedule=s.schedule,
            cfg_interval=s.cfg_interval,
            weights_fingerprint=self.weights_fingerprint(),
        )

    def stream_settings(self, seed: int | None = None) -> SamplerSettings:
        """Decode settings exactly as a stream written with ``seed`` carries them."""
        return self._header_settings(self.stream_header(self.layout_for(1, 1), seed))

    def _header_settings(self, h: StreamHeader) -> SamplerSettings:
        power = h.schedule == "power"
        return SamplerSettings(
            seed=h.seed,
            num_steps=h.num_steps,
            guidance_scale=h.guidance_scale,
            time_shift=self.config.time_shift if power else h.schedule_param,
            schedule=h.sampler_schedule,
            power=h.schedule_param if power else self.config.schedule_power,
            cfg_interval=h.cfg_interval,
        )

    def weights_fingerprint(self) -> bytes:
        """First 4 bytes of sha256 over the decoder, prior and FSQ tensors (names, shapes, values).

        Tensors are hashed as float32 in sorted name order, so a model moved to another device
        keeps its fingerprint. Cached; the cache is keyed on the tensors' in-place version
        counters, so training steps and ``load_state_dict`` invalidate it.
        """
        tensors = []
        for module in FINGERPRINT_MODULES:
            for name, tensor in getattr(self, module).state_dict(keep_vars=True).items():
                tensors.append((f"{module}.{name}", tensor))
        tensors.sort(key=lambda item: item[0])
        try:
            key = tuple((name, t.data_ptr(), t._version) for name, t in tensors)
        except RuntimeError:  # inference tensors have no version counter: do not cache
            key = None
        cached = getattr(self, "_fingerprint_cache", None)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        digest = hashlib.sha256()
        for name, tensor in tensors:
            value = tensor.detach()
            value = value.float() if value.is_floating_point() else value.long()
            digest.update(f"{name}:{tuple(value.shape)}:".encode())
            digest.update(value.cpu().contiguous().numpy().tobytes())
        fingerprint = digest.digest()[:4]
        self._fingerprint_cache = (key, fingerprint)
        return fingerprint

    def _min_payload_bytes(self, num_tiles: int) -> int:
        """A lower bound on the rANS payload of ``num_tiles`` tiles, whatever the tokens.

        Every digit costs at least -log2(max frequency / 2**precision) bits, the most likely
        symbol's table entry being at most 2**precision - (L - 1); the first digits of every
        tile are coded with the same tables (:meth:`TokenCoder.first_group_bits`, computed once
        per weights), whose largest frequency is known; 64 bits of slack cover the coder's
        initial state.
        """
        scale = 2**self.token_coder.precision
        per_digit = [-math.log2((scale - (level - 1)) / scale) for level in self.config.fsq_levels]
        first_bits, first_digits = self._first_group_bits()
        rest = self.config.num_tokens * sum(per_digit) - sum(per_digit[:first_digits])
        bits = num_tiles * (first_bits + rest)
        return max(8, math.floor((bits - 64) / 8))

    def _first_group_bits(self) -> tuple[float, int]:
        """:meth:`TokenCoder.first_group_bits` of this prior, cached per weights fingerprint."""
        key = self.weights_fingerprint()
        cached = getattr(self, "_first_bits_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self.token_coder.first_group_bits(self.prior))
            self._first_bits_cache = cached
        return cached[1]

    def max_evaluations_per_tile(self) -> int:
        """Network evaluations per tile of the costliest stream this model's encoder writes.

        The config's steps, each guided (two evaluations) unless the guidance scale is 1: format-1
        streams were guided at every step, format-2 ones only inside the CFG interval, so every
        stream ``compress`` writes with this config, of either format, is within it.
        """
        return self.config.num_steps * (1 if self.config.guidance_scale == 1.0 else 2)

    def check_limits(
        self,
        header: StreamHeader,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_evaluations: int | None = DEFAULT_MAX_EVALUATIONS,
        max_evaluations_per_tile: PerTileLimit = OWN_LIMIT,
    ) -> TileLayout:
        """StreamLimitError unless decoding ``header`` stays within the limits; its tile layout.

        Uses the header alone (no payload, no allocation), so a forged stream costs nothing.

        Args:
            header: the parsed stream header.
            max_pixels: most pixels (None: no limit).
            max_evaluations: most network evaluations in all, tiles x per tile (None: no limit).
            max_evaluations_per_tile: most evaluations per tile; ``"model"`` (default):
                :meth:`max_evaluations_per_tile`, what this model's own encoder writes.
        """
        tile = self.config.image_size
        if not (0 <= header.tile_overlap < tile // 2 or header.tile_overlap == SEAMLESS_FIELD):
            raise CorruptStreamError(
                f"stream declares a tile overlap of {header.tile_overlap} px; this model's tiles "
                f"({tile} px) allow 0..{tile // 2 - 1} (or {SEAMLESS_FIELD}: seamless)"
            )
        pixels = header.height * header.width
        if max_pixels is not None and pixels > max_pixels:
            raise StreamLimitError(
                f"stream declares a {header.height}x{header.width} image ({pixels} pixels), over "
                f"the limit of {max_pixels}; pass a larger max_pixels (--max-pixels) to code it"
            )
        layout = header.tile_layout(tile)
        per_tile = self._header_settings(header).sampler().num_evaluations()
        own = max_evaluations_per_tile == OWN_LIMIT
        per_tile_limit = self.max_evaluations_per_tile() if own else max_evaluations_per_tile
        if per_tile_limit is not None and per_tile > per_tile_limit:
            source = " (this model's own settings)" if own else ""
            raise StreamLimitError(
                f"decoding the stream takes {per_tile} network evaluations per tile "
                f"({header.num_steps} steps, guidance {header.guidance_scale}), over the limit of "
                f"{per_tile_limit}{source}; pass a larger max_evaluations_per_tile "
                "(--max-evaluations-per-tile) to decode it"
            )
        evaluations = layout.num_tiles * per_tile
        if max_evaluations is not None and evaluations > max_evaluations:
            raise StreamLimitError(
                f"decoding the stream takes {evaluations} network evaluations ({layout.num_tiles} "
                f"tiles, {header.num_steps} steps), over the limit of {max_evaluations}; pass a "
                "larger max_evaluations (--max-evaluations) to decode it"
            )
        return layout

    def check_stream(
        self,
        header: StreamHeader,
        payload_bytes: int,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_evaluations: int | None = DEFAULT_MAX_EVALUATIONS,
        allow_model_mismatch: bool = False,
        max_evaluations_per_tile: PerTileLimit = OWN_LIMIT,
    ) -> TileLayout:
        """Check a parsed stream against this model and the limits before any work; its layout.

        A format-1 stream carries no weights fingerprint, so its weights cannot be checked: it
        is refused (ModelMismatchError) unless ``allow_model_mismatch``.
        """
        header.check_model(
            self.config.config_hash(), self.weights_fingerprint(), allow_model_mismatch
        )
        if header.version < 2 and not allow_model_mismatch:
            raise ModelMismatchError(
                f"stream is format version {header.version}, which carries no weights "
                "fingerprint, so it cannot be checked against this model's weights; if it was "
                "written by these weights, pass allow_model_mismatch=True "
                "(--allow-model-mismatch) to decode it"
            )
        layout = self.check_limits(header, max_pixels, max_evaluations, max_evaluations_per_tile)
        least = self._min_payload_bytes(layout.num_tiles)
        most = self.token_coder.max_payload_bytes(
            layout.num_tiles * self.config.num_tokens * self.config.code_dim
        )
        if not least <= payload_bytes <= most:
            raise CorruptStreamError(
                f"stream declares a {header.height}x{header.width} image ({layout.num_tiles} "
                f"tiles), which takes {least}..{most} payload bytes, but holds {payload_bytes}"
            )
        return layout

    def max_stream_bytes(self, height: int, width: int) -> int:
        """The longest valid stream of a ``height`` x ``width`` image for this model (any overlap)."""
        tile = self.config.image_size
        layout = TileLayout.for_image(height, width, tile, max(0, tile // 2 - 1))
        symbols = layout.num_tiles * self.config.num_tokens * self.config.code_dim
        return HEADER_BYTES + self.token_coder.max_payload_bytes(symbols) + CHECKSUM_BYTES

    def read_stream(self, path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bytes:
        """A stream file's bytes, refused from its size and header before it is read whole.

        A file longer than any valid stream of the image its header declares, or declaring more
        than ``max_pixels`` pixels, is a StreamLimitError; a foreign file (not starting like a
        VLIC stream) a ForeignStreamError; either after reading at most its first 29 bytes.

        Args:
            path: the .vlic file.
            max_pixels: as for :meth:`decompress` (None: no limit).
        """
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(HEADER_BYTES)
            version, height, width = declared_size(head)
            if max_pixels is not None and height * width > max_pixels:
                raise StreamLimitError(
                    f"{path}: stream declares a {height}x{width} image ({height * width} pixels), "
                    f"over the limit of {max_pixels}; pass a larger max_pixels (--max-pixels)"
                )
            most = self.max_stream_bytes(height, width)
            most -= (HEADER_BYTES - HEADER_BYTES_V1) if version == 1 else 0
            if size > most:
                raise StreamLimitError(
                    f"{path}: file has {size} bytes, but no valid stream of the {height}x{width} "
                    f"image its header declares is longer than {most}; it is not a VLIC stream "
                    "of this model, or it is corrupted"
                )
            data = head + fh.read(most + 1 - len(head))
        if len(data) > most:  # the file grew while we read it
            raise StreamLimitError(f"{path}: stream is longer than {most} bytes")
        return data

    @torch.no_grad()
    def decompress(
        self,
        strings: Sequence[Sequence[bytes]],
        shape: Any = None,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_evaluations: int | None = DEFAULT_MAX_EVALUATIONS,
        allow_model_mismatch: bool = False,
        max_evaluations_per_tile: PerTileLimit = OWN_LIMIT,
        decode_dtype: DecodeDtype = "float32",
    ) -> dict[str, Any]:
        """Decode container bytes (everything needed is inside them) -> {"x_hat": (B, 3, H, W)}.

        Every stream is checked before any is decoded: against this model's config hash and
        weights fingerprint, the payload length its tile count implies, and the limits. The
        default limits accept every stream ``compress`` writes with this model's config.

        Args:
            strings: ``[[stream, ...]]`` as returned by ``compress``.
            shape: optional (H, W) every stream must hold.
            max_pixels: refuse streams declaring more pixels (default 2**24, as ``compress``;
                None: no limit).
            max_evaluations: refuse streams that need more network evaluations in all, tiles x
                evaluations per tile (default None: no limit beyond pixels x per tile).
            allow_model_mismatch: decode streams written by other weights of the same
                architecture, and format-1 streams, which carry no weights fingerprint
                (default False: ModelMismatchError).
            max_evaluations_per_tile: refuse streams that need more evaluations per tile
                (default ``"model"``: :meth:`max_evaluations_per_tile`, the config's steps,
                doubled if guided; None: no limit), so a forged step count or guidance costs
                no more than this model's own streams.
            decode_dtype: the decoder network's arithmetic, "float32" (default: the same pixels
                on every machine) or "bfloat16" (faster on GPUs and CPUs with bf16 units; the
                tokens are the same, the pixels may differ slightly between machines).
        """
        check_option("decode_dtype", decode_dtype, DecodeDtype)
        if isinstance(strings, (bytes, bytearray, str)) or not isinstance(strings, Sequence):
            raise DecompressArgumentError(
                f"strings must be [[stream, ...]] as compress returns, got {type(strings).__name__}"
            )
        if len(strings) != 1:
            raise DecompressArgumentError(f"VLIC streams have one string list, got {len(strings)}")
        streams = strings[0]
        if isinstance(streams, (bytes, bytearray, str)) or not isinstance(streams, Sequence):
            raise DecompressArgumentError(
                f"strings[0] must be a list of streams (bytes), got {type(streams).__name__}"
            )
        if len(streams) == 0:
            raise DecompressArgumentError("no streams to decode: strings[0] is empty")
        parsed = []
        for data in streams:
            header, payload = unpack(data)
            layout = self.check_stream(
                header,
                len(payload),
                max_pixels,
                max_evaluations,
                allow_model_mismatch,
                max_evaluations_per_tile,
            )
            parsed.append((header, payload, layout))
        sizes = {(h.height, h.width) for h, _, _ in parsed}
        if shape is not None:
            try:
                wanted = tuple(int(v) for v in shape)
            except (TypeError, ValueError) as exc:
                raise DecompressArgumentError(f"shape must be (H, W), got {shape!r}") from exc
            if sizes != {wanted}:
                got = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
                raise BitstreamError(f"streams hold {got} images but shape={tuple(shape)}")
        if len(sizes) > 1:
            got = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
            raise DecompressArgumentError(
                f"streams hold images of different sizes ({got}), which cannot form one batch; "
                "decode them in separate calls"
            )
        x_hats = []
        for header, payload, layout in parsed:
            indices = self.token_coder.decode(
                payload, self.prior, batch=layout.num_tiles, num_tokens=self.config.num_tokens
            )
            s = self._header_settings(header)
            x_hats.append(
                self.decode_codes(indices, layout=layout, decode_dtype=decode_dtype, **asdict(s))
            )
        return {"x_hat": torch.cat(x_hats)}

    # ------------------------------------------------------- state handling
    def update(
        self, scale_table: Tensor | None = None, force: bool = False, update_quantiles: bool = False
    ) -> bool:
        """Nothing to rebuild: CDFs are computed from the prior, in integers, at coding time."""
        return False

    def aux_loss(self) -> Tensor:
        """Zero, as a tensor: there is no ``EntropyBottleneck`` whose quantiles need fitting.

        CompressAI's training loop calls ``model.aux_loss().backward()`` and ``.item()``.
        """
        return torch.zeros((), device=self._config_json.device, requires_grad=True)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load weights after checking that the checkpoint was made for this architecture."""
        if strict and CONFIG_KEY not in state_dict:
            raise CheckpointError(
                f"state dict has no {CONFIG_KEY!r} entry: it was not saved from a VLIC model"
            )
        self._fingerprint_cache = None
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

    # ------------------------------------------------------------ the Hub
    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> VLIC:
        """Build from ``config.json`` (or the weights' own config) and load strictly."""
        path = weights_file(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        if "config" not in model_kwargs:  # no config.json: the weights carry their config
            model_kwargs["config"] = VLICConfig.from_json(stored_config_json(path))
        return load_weights(cls(**model_kwargs), path, strict=strict, device=map_location)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
        """The Hub model card, filled with this model's configuration."""
        c = self.config
        fields = {
            "model_name": c.name,
            "repo_id": "FOLDER_OR_HUB_ID",
            "num_tokens": c.num_tokens,
            "image_size": c.image_size,
            "fsq_levels": c.fsq_levels,
            "bpp": f"{c.bpp_before_entropy_coding:.3f}",
            "num_steps": c.num_steps,
            "guidance_scale": c.guidance_scale,
        }
        return super().generate_model_card(*args, **{**fields, **kwargs})

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
