"""Integer CDF tables for compressai.ans, built so encoder and decoder agree bit for bit.

The escape slot of each table has zero width (every real symbol still has frequency >= 1); see
"Escape convention" below for why.

CompressAI users hit decode failures when the decoder recomputes a prior in floating point and
lands on a slightly different table than the encoder (CompressAI issues #279 and #309): one unit
of difference in one CDF entry desynchronises the whole rest of an rANS stream. Here the only
floating-point step is the prior's float64 logit computation (run single-threaded on both sides,
see :mod:`compressai_vlic.models.prior`). Its output is snapped to a coarse grid
(``logit_step``, 1/64 nat by default), and from there on everything is integer arithmetic:

1. ``q = round(logit / step)``; ``q = max(q) - q`` (>= 0, so the most likely symbol has q = 0);
2. ``w = EXP[q]`` with ``EXP[k] = round(2**40 * exp(-k * step))`` computed once with Python's
   ``decimal`` module (correctly rounded, so the same integers on every platform), 0 past the
   table end;
3. ``freq = 1 + floor(w * (2**precision - L) / sum(w))`` (every real symbol gets >= 1), and the
   rounding remainder goes to the most likely symbol (first index on ties);
4. ``cdf = [0, cumsum(freq)..., 2**precision, 2**precision]``.

A float64 difference of ~1e-15 can only matter if it moves a logit across a grid boundary
(probability ~1e-13 per logit); the grid itself costs under 1e-4 bit per symbol.

Escape convention: compressai's tables have L + 2 entries, the last slot being an escape symbol
that switches to bypass coding for out-of-range values. FSQ digits are always in range (the coder
refuses others), so the escape slot gets zero width (``cdf[L] == cdf[L + 1] == 2**precision``):
no probability is wasted on it, and, more importantly, the decoder can never select it. That
keeps compressai's bypass path, which reads an unbounded number of words with no bounds check,
unreachable on corrupt input (see :mod:`compressai_vlic.coding.token_coder`). The tables are
therefore monotone with strictly increasing entries over the L real symbols; compressai's
debug-only ``assert_cdfs`` would reject the zero-width escape, release builds (what pip installs)
accept it and code exactly as described.
"""

from __future__ import annotations

import decimal
from functools import lru_cache

import torch
from torch import Tensor

#: Fixed-point scale of the exp table: weights are < 2**40, so w * 2**16 fits in int64.
EXP_BITS = 40
DEFAULT_PRECISION = 16
DEFAULT_LOGIT_STEP = 1.0 / 64.0


@lru_cache(maxsize=8)
def exp_table(logit_step: float = DEFAULT_LOGIT_STEP) -> Tensor:
    """``round(2**40 * exp(-k * step))`` for k = 0.. until it reaches 0, as int64."""
    if not 0 < logit_step <= 1:
        raise ValueError(f"logit_step must be in (0, 1], got {logit_step}")
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)
    step = decimal.Decimal(logit_step)  # exact value of the float
    scale = decimal.Decimal(2**EXP_BITS)
    values = []
    k = 0
    while True:
        v = int((ctx.multiply(scale, ctx.exp(ctx.multiply(-step, k)))).to_integral_value())
        if v == 0:
            break
        values.append(v)
        k += 1
    return torch.tensor(values, dtype=torch.int64)


def logits_to_cdf(
    logits: Tensor,
    precision: int = DEFAULT_PRECISION,
    logit_step: float = DEFAULT_LOGIT_STEP,
) -> Tensor:
    """float64 logits (N, L) -> int32 CDF tables (N, L + 2) for compressai.ans (see module doc)."""
    if logits.dtype != torch.float64:
        raise TypeError(f"logits must be float64 for deterministic tables, got {logits.dtype}")
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, L) with L >= 2, got {tuple(logits.shape)}")
    num_symbols = logits.shape[1]
    if not 8 <= precision <= 16 or num_symbols > (1 << precision) // 2:
        raise ValueError(f"precision {precision} cannot hold {num_symbols} symbols")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinity")
    table = exp_table(logit_step)
    # Clamping keeps every intermediate an exact float64 integer (|q| < 2**53).
    logits = logits.detach().cpu().clamp(-(2.0**20), 2.0**20)
    q = torch.round(logits / logit_step)
    q = (q.amax(dim=1, keepdim=True) - q).clamp(max=table.numel()).to(torch.int64)  # >= 0
    inside = q < table.numel()
    weights = torch.where(inside, table[q.clamp(max=table.numel() - 1)], torch.zeros_like(q))
    total = weights.sum(dim=1, keepdim=True)  # >= 2**40: the argmax has q = 0
    budget = (1 << precision) - num_symbols
    freq = 1 + (weights * budget) // total
    remainder = (1 << precision) - freq.sum(dim=1)
    top = torch.argmax(weights, dim=1)  # first maximum on ties
    freq[torch.arange(freq.shape[0]), top] += remainder
    cdf = torch.zeros(logits.shape[0], num_symbols + 2, dtype=torch.int64)
    cdf[:, 1 : num_symbols + 1] = torch.cumsum(freq, dim=1)
    cdf[:, num_symbols + 1] = 1 << precision
    return cdf.to(torch.int32)


def cdf_bits(cdf: Tensor, symbols: Tensor, precision: int = DEFAULT_PRECISION) -> Tensor:
    """Ideal code length in bits of ``symbols`` (N,) under integer tables ``cdf`` (N, L + 2)."""
    rows = torch.arange(cdf.shape[0])
    freq = (cdf[rows, symbols + 1] - cdf[rows, symbols]).to(torch.float64)
    return precision - torch.log2(freq)


def check_cdf(cdf: Tensor, precision: int = DEFAULT_PRECISION) -> None:
    """Raise ValueError unless ``cdf`` (N, L + 2) is what compressai.ans needs (see module doc).

    compressai's release build does not validate tables, so a bad one would silently corrupt
    the stream; this is the check it skips (tests and debugging use it).
    """
    if cdf.dtype != torch.int32 or cdf.ndim != 2 or cdf.shape[1] < 3:
        raise ValueError(f"CDF tables must be int32 (N, L + 2), got {cdf.dtype} {tuple(cdf.shape)}")
    if (cdf[:, 0] != 0).any():
        raise ValueError("CDF tables must start at 0")
    if (cdf[:, -1] != 1 << precision).any() or (cdf[:, -2] != 1 << precision).any():
        raise ValueError(f"CDF tables must end at 2**{precision} with a zero-width escape slot")
    if (torch.diff(cdf[:, :-1], dim=1) < 1).any():
        raise ValueError("every real symbol must have frequency >= 1 (strictly increasing CDF)")
