"""Codec benchmark: per-image timings of every coding step, real vs model bits, peak memory.

Timings come from the model's public typed methods, called the way ``compress``/``decompress``
call them: ``encode_image`` (encoder network + FSQ), ``TokenCoder.encode`` (prior + rANS),
``TokenCoder.decode`` (rANS + prior, step by step), ``decode_codes`` (the sampler's steps). The
end-to-end ``compress``/``decompress`` are timed too, and the component path is checked to give
the same tokens and image. ``compressai-vlic bench`` runs it and prints the table.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from compressai_vlic.extras import require

DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image, shipped offline
T = TypeVar("T")


@dataclass
class ImageBench:
    """Measurements for one image (times in milliseconds, memory in MiB)."""

    name: str
    height: int
    width: int
    tiles: int
    compress_ms: float
    decompress_ms: float
    encoder_ms: float
    entropy_encode_ms: float
    entropy_decode_ms: float
    sampler_ms: float
    sampler_step_ms: float
    stream_bytes: int
    payload_bytes: int
    real_bits: int
    cross_entropy_bits: float
    coder_estimate_bits: float
    bits_before_entropy_coding: float
    bpp: float
    real_over_cross_entropy: float
    payload_over_cross_entropy: float
    component_path_matches: bool
    peak_memory_mib: float


@dataclass
class BenchReport:
    """One benchmark run: the environment, the model and per-image results."""

    model: str
    config_hash: str
    parameters: int
    num_steps: int
    guidance_scale: float
    evaluations_per_tile: int
    device: str
    threads: int
    repeat: int
    torch_version: str
    cpu: str
    load_average: float
    memory_type: str
    rss_before_model_mib: float
    rss_after_model_mib: float
    images: list[ImageBench] = field(default_factory=list)
    prior_steps: list[Any] = field(default_factory=list)  # PriorStepTiming per tile count


def _maxrss_mib() -> float:
    # Linux reports KiB, macOS bytes.
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_inputs(images: Sequence[Path] | None) -> list[tuple[str, Any]]:
    """(name, (1, 3, H, W) tensor) pairs; conversions are reported on stderr."""
    import numpy as np
    import torch

    from compressai_vlic.image_io import find_images, load_image

    if not images:
        skimage_data = require("skimage.data", "demo", "The bundled sample photos")

        out = []
        for name in DEFAULT_PHOTOS:
            arr = np.ascontiguousarray(getattr(skimage_data, name)()[..., :3])
            out.append((name, torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255))
        return out
    out = []
    for root in images:
        for path in find_images(root):
            loaded = load_image(path)
            if loaded.conversions:
                print(f"notice: {path}: {'; '.join(loaded.conversions)}", file=sys.stderr)
            out.append((str(path), loaded.tensor[None]))
    return out


def bench_image(model: Any, name: str, x: Any, seed: int | None, repeat: int = 1) -> ImageBench:
    """Time one image through the end-to-end and the component paths (best of ``repeat``)."""
    import torch

    from compressai_vlic.image_io import to_uint8

    device = model._config_json.device
    cuda = device.type == "cuda"

    def timed(fn: Callable[[], T]) -> tuple[T, float]:
        best = float("inf")
        for _ in range(max(1, repeat)):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            result = fn()
            if cuda:
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        return result, best * 1000

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    x = x.to(device)
    settings = model.stream_settings(seed)
    with torch.no_grad():
        out, compress_ms = timed(lambda: model.compress(x, seed=seed))
        stream = b"".join(out["strings"][0])
        dec, decompress_ms = timed(lambda: model.decompress(out["strings"], out["shape"]))
        (layout, enc), encoder_ms = timed(lambda: model.encode_image(x))
        indices = enc.indices.cpu()
        coder, prior, cfg = model.token_coder, model.prior, model.config
        payload, entropy_encode_ms = timed(lambda: coder.encode(indices, prior))
        decoded, entropy_decode_ms = timed(
            lambda: coder.decode(payload, prior, batch=layout.num_tiles, num_tokens=cfg.num_tokens)
        )
        image, sampler_ms = timed(
            lambda: model.decode_codes(decoded, layout=layout, **asdict(settings))
        )
        xent = float(prior.nll_bits(enc.indices).double().sum())
        estimate = float(coder.estimate_bits(indices, prior))
    matches = torch.equal(decoded, indices) and torch.equal(
        to_uint8(image.cpu()), to_uint8(dec["x_hat"].cpu())
    )
    pixels = int(x.shape[-2]) * int(x.shape[-1])
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _maxrss_mib()
    return ImageBench(
        name=name,
        height=int(x.shape[-2]),
        width=int(x.shape[-1]),
        tiles=layout.num_tiles,
        compress_ms=compress_ms,
        decompress_ms=decompress_ms,
        encoder_ms=encoder_ms,
        entropy_encode_ms=entropy_encode_ms,
        entropy_decode_ms=entropy_decode_ms,
        sampler_ms=sampler_ms,
        sampler_step_ms=sampler_ms / settings.num_steps,
        stream_bytes=len(stream),
        payload_bytes=len(payload),
        real_bits=8 * len(stream),
        cross_entropy_bits=xent,
        coder_estimate_bits=estimate,
        bits_before_entropy_coding=layout.num_tiles * cfg.num_tokens * cfg.bits_per_token,
        bpp=8 * len(stream) / pixels,
        real_over_cross_entropy=8 * len(stream) / xent,
        payload_over_cross_entropy=8 * len(payload) / xent,
        component_path_matches=matches,
        peak_memory_mib=memory,
    )


def paper_prior(digits: str = "factorized") -> Any:
    """A randomly initialised prior of the paper's shape (zoo quality 1), for timing."""
    import torch

    from compressai_vlic.models.prior import ARPrior
    from compressai_vlic.zoo import quality_config

    cfg = quality_config(1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ARPrior(
            cfg.fsq_levels,
            cfg.num_tokens,
            cfg.prior_width,
            cfg.prior_depth,
            cfg.prior_heads,
            digits=digits,  # type: ignore[arg-type]
        ).eval()


def bench_prior(prior: Any, tiles: Sequence[int], repeat: int, device: str) -> list[Any]:
    """Prior step vs its bound for each tile count (see compressai_vlic.evaluation.prior_timing)."""
    from compressai_vlic.evaluation.prior_timing import time_prior_step

    return [time_prior_step(prior.to(device), b, repeat=max(2, repeat), device=None) for b in tiles]
