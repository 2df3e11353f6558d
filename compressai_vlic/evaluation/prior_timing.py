"""Time one coding step of the prior next to its matrix-product bound, side by side.

A coding step (one token for B tiles) is a handful of matrix-vector products on float64
weights, plus what surrounds them (layer norms, attention over the KV cache, activations,
Python). The *bound* is the time of the step's weight-matrix products alone: one
``torch.mm(x, W, out=y)`` per weight matrix the step multiplies by (fused QKV, attention
output, MLP in and out per layer, the digit head, and the intra-token head once per digit for a
causal prior), each on a preallocated (B, in) float64 input, same device, same thread count. No
implementation of the step can beat it without changing the arithmetic, so ``step / bound`` is
the overhead left. The transformers path (GPT-2 with a ``DynamicCache``, the same float64
weights) is timed as a reference.

The *roofline* is what the hardware allows at all: the larger of the step's bytes (float64
weights plus the KV cache read at that position) over the memory bandwidth and its FLOPs over
the float64 peak, both measured in the same run (a 256 MiB reduction, a 1024x1024 float64
product), so ``step / roofline`` also counts what a better product kernel could win.

All are measured in the same run, interleaved, at the middle position of the tile (the
average attention length of a tile's K steps), best of ``repeat``: a shared, loaded machine
slows them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from compressai_vlic.models.prior import ARPrior, deterministic_coding

__all__ = ["PriorStepTiming", "time_prior_step"]


@dataclass(frozen=True)
class PriorStepTiming:
    """One prior's coding step for ``tiles`` tiles (times in milliseconds per token step)."""

    parameters: int
    width: int
    depth: int
    digits: str
    tiles: int
    position: int
    device: str
    step_ms: float
    bound_ms: float
    reference_ms: float | None
    step_over_bound: float
    roofline_ms: float = 0.0
    bandwidth_gb_s: float = 0.0
    peak_gflop_s: float = 0.0
    step_over_roofline: float = 0.0


def _best(fn: Callable[[], None], steps: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps * 1000


def machine_limits(device: torch.device, repeat: int = 3) -> tuple[float, float]:
    """(read bandwidth in GB/s, float64 matrix-product peak in GFLOP/s) of ``device``, measured
    now: a sum over 256 MiB and a 1024x1024 product, best of ``repeat``."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    big = torch.ones(32 * 2**20, dtype=torch.float64, device=device)
    a = torch.randn(1024, 1024, dtype=torch.float64, device=device)
    out = torch.empty_like(a)
    read_s = min(_best(lambda: big.sum(), 1, sync) for _ in range(repeat + 1)) / 1000
    mm_s = min(_best(lambda: torch.mm(a, a, out=out), 1, sync) for _ in range(repeat + 1)) / 1000
    return big.numel() * 8 / read_s / 1e9, 2 * 1024**3 / mm_s / 1e9


def time_prior_step(
    prior: ARPrior,
    tiles: int,
    steps: int = 3,
    repeat: int = 3,
    device: str | torch.device | None = None,
    reference: bool = True,
) -> PriorStepTiming:
    """Time ``prior``'s coding step, its bound and (optionally) the transformers reference.

    Args:
        prior: the prior (any weights: timing does not depend on their values).
        tiles: batch of tiles coded together (B).
        steps: consecutive token steps per measurement (default 3).
        repeat: measurements of each, interleaved; the fastest counts (default 3).
        device: coding device (default: the prior's when a GPU, else the CPU).
        reference: also time transformers' GPT-2 step with a DynamicCache (default True).
    """
    from transformers import DynamicCache

    d = len(prior.levels)
    position = prior.num_tokens // 2
    steps = max(1, min(steps, prior.num_tokens - position - 1))
    state = prior.start(tiles, device)
    dev = state.device
    prev = torch.zeros(tiles, d, dtype=torch.long, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step() -> None:
        prior.advance(state, prev)
        for j in range(d):
            prior.digit_logits(state, j, None if j == 0 else prev[:, j - 1])

    matrices = state.weights.matrices()
    if prior.intra is not None:  # the intra-token head runs once per digit
        matrices += [state.weights.i_fc_w, state.weights.i_out_w] * (d - 1)
    inputs = [torch.randn(tiles, m.shape[0], dtype=torch.float64, device=dev) for m in matrices]
    outputs = [torch.empty(tiles, m.shape[1], dtype=torch.float64, device=dev) for m in matrices]

    def bound() -> None:
        for x, m, y in zip(inputs, matrices, outputs):
            torch.mm(x, m, out=y)

    ref_step: Callable[[], None] | None = None
    cache = None
    if reference:
        model = copy.deepcopy(prior).to(device=dev, dtype=torch.float64).eval()
        cfg = model.transformer.config
        cache = DynamicCache(config=cfg)
        hd = prior.width // cfg.n_head
        for layer in range(cfg.n_layer):
            zeros = torch.zeros(tiles, cfg.n_head, position, hd, dtype=torch.float64, device=dev)
            cache.update(zeros, zeros.clone(), layer)
        embedded = model._embed(prev[:, None, :])

        def ref_step() -> None:
            hidden = model.transformer(
                inputs_embeds=embedded, cache=cache, use_cache=True
            ).last_hidden_state
            model._split(hidden)

    times: dict[str, list[float]] = {"step": [], "bound": [], "reference": []}
    with deterministic_coding():
        for _ in range(max(1, repeat) + 1):  # the first round warms up and is dropped
            state.position = position
            times["step"].append(_best(step, steps, sync))
            times["bound"].append(_best(bound, steps, sync))
            if ref_step is not None and cache is not None:
                extra = cache.get_seq_length() - position
                if extra > 0:
                    cache.crop(-extra)  # drop what the previous round appended
                times["reference"].append(_best(ref_step, steps, sync))
    step_ms, bound_ms = min(times["step"][1:]), min(times["bound"][1:])
    bandwidth, peak = machine_limits(dev, repeat)
    weight_elements = sum(m.numel() for m in matrices)
    depth = prior.transformer.config.n_layer
    kv_elements = depth * 2 * tiles * prior.width * (position + 1)  # keys and values read
    step_bytes = 8 * (weight_elements + kv_elements)
    step_flops = 2 * tiles * weight_elements + 2 * kv_elements  # products and attention
    roofline_ms = 1000 * max(step_bytes / (bandwidth * 1e9), step_flops / (peak * 1e9))
    return PriorStepTiming(
        parameters=sum(p.numel() for p in prior.parameters()),
        width=prior.width,
        depth=prior.transformer.config.n_layer,
        digits=prior.digits,
        tiles=tiles,
        position=position,
        device=str(dev),
        step_ms=step_ms,
        bound_ms=bound_ms,
        reference_ms=min(times["reference"][1:]) if times["reference"] else None,
        step_over_bound=step_ms / bound_ms,
        roofline_ms=roofline_ms,
        bandwidth_gb_s=bandwidth,
        peak_gflop_s=peak,
        step_over_roofline=step_ms / roofline_ms,
    )
