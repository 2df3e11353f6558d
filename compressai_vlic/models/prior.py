"""Autoregressive transformer prior over the K FSQ tokens of a tile (the entropy model).

Token i is predicted from tokens < i. The backbone is transformers' ``GPT2Model`` (eager
attention, no dropout) fed through ``inputs_embeds``: input i is a learned start vector for
i = 0, else the sum of the per-digit embeddings of token i - 1. Within a token, the d FSQ digits
are predicted in one of two ways (``digits``):

* ``"factorized"``: one linear head gives all d digit distributions from the token's context,
  independently of each other (the entropy coder works on d small alphabets);
* ``"causal"``: digit j is predicted from the context *and* digits 0..j-1 of the same token, by
  a small causal head (:class:`IntraTokenHead`) whose output is added to the factorised logits.
  Its last layer starts at zero, so a causal prior made from a factorised one starts with the
  same probabilities and refitting can only add what the digits tell about each other.

Two paths:

* training / likelihoods: :meth:`ARPrior.forward` runs teacher-forced in the module's own dtype
  and device (float32), all positions at once (digits teacher-forced too);
* coding: :meth:`ARPrior.start`, then per token :meth:`ARPrior.advance` and per digit
  :meth:`ARPrior.digit_logits` (or :meth:`ARPrior.step` for all digits of a factorised prior).
  These run a float64 copy of the weights with a preallocated KV cache, on the prior's device
  when that is a GPU, else on one CPU thread (:func:`deterministic_coding`). The encoder uses
  this same incremental path (not the teacher-forced pass). Same weights, same op sequence, same
  shapes give bit-identical logits at both ends; float64 plus the logit grid of
  :func:`compressai_vlic.coding.cdf.logits_to_cdf` absorbs the last-bit differences between
  machines and devices, so a stream made on a GPU decodes on a CPU and back.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GPT2Config, GPT2Model

from compressai_vlic.coding.context import deterministic_coding
from compressai_vlic.errors import ConfigError, InvalidTokensError

__all__ = [
    "ARPrior",
    "IntraTokenHead",
    "PriorDigits",
    "PriorOutput",
    "PriorState",
    "deterministic_coding",
]

#: How the d digits of a token are predicted: independently, or each given the earlier ones.
PriorDigits = Literal["factorized", "causal"]
PRIOR_DIGITS: tuple[str, ...] = get_args(PriorDigits)

# Probabilities reported to CompressAI must be > 0 (it takes -log2 of them).
_MIN_LIKELIHOOD = 1e-9


@dataclass(frozen=True)
class PriorOutput:
    """Teacher-forced logits: one (B, K, L_j) float tensor per FSQ digit j."""

    logits: list[Tensor]


class IntraTokenHead(nn.Module):
    """Logit corrections for digit j of a token given its context and digits 0..j-1.

    z_j = h + p_j + sum_{m<j} e_m(x_m); correction_j = W_out(GELU(W_fc(LN(z_j))))[slice of j].
    The sum of earlier-digit embeddings followed by a non-linear layer lets the head model how a
    token's digits depend on each other; ``W_out`` starts at zero (see the module docstring).

    Args:
        levels: FSQ levels (one alphabet per digit).
        width: width of the prior's hidden states (the head works at the same width).
    """

    def __init__(self, levels: Sequence[int], width: int) -> None:
        super().__init__()
        self.levels = tuple(int(v) for v in levels)
        offsets = torch.tensor((0, *self.levels[:-1])).cumsum(0)
        self.register_buffer("digit_offsets", offsets, persistent=False)
        self._starts = [sum(self.levels[:j]) for j in range(len(self.levels))]
        self.embed = nn.Embedding(sum(self.levels), width)
        self.position = nn.Parameter(torch.zeros(len(self.levels), width))
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)
        self.out = nn.Linear(width, sum(self.levels))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden: Tensor, indices: Tensor) -> list[Tensor]:
        """(B, K, W) contexts and (B, K, d) true digits -> one (B, K, L_j) correction per digit."""
        d = len(self.levels)
        emb = self.embed(indices[..., : d - 1].long() + self.digit_offsets[: d - 1])
        prefix = torch.cat([torch.zeros_like(emb[..., :1, :]), emb.cumsum(dim=-2)], dim=-2)
        z = hidden.unsqueeze(-2) + self.position + prefix[..., :d, :]
        out = self.out(F.gelu(self.fc(self.norm(z))))  # (B, K, d, sum L)
        return [out[..., j, o : o + n] for j, (o, n) in enumerate(zip(self._starts, self.levels))]


# --------------------------------------------------------------------------- coding path
@dataclass
class _Layer:
    ln1_w: Tensor
    ln1_b: Tensor
    qkv_w: Tensor  # (W, 3W): fused Q, K, V projection (GPT-2's c_attn)
    qkv_b: Tensor
    proj_w: Tensor
    proj_b: Tensor
    ln2_w: Tensor
    ln2_b: Tensor
    fc_w: Tensor
    fc_b: Tensor
    out_w: Tensor
    out_b: Tensor


class CodingWeights:
    """float64 copies of the prior's weights laid out for one-token steps, on one device.

    The tensors are allocated once per (prior, device) and refreshed in place on every
    :meth:`ARPrior.start`, so they can never be stale (not even after an update through
    ``.data``) and cost one weight copy per image, not an allocation.
    """

    def __init__(self, prior: ARPrior, device: torch.device) -> None:
        kw = {"device": device, "dtype": torch.float64}
        t = prior.transformer
        self.device = device
        self.heads = t.config.n_head
        self.eps = t.config.layer_norm_epsilon
        # (target, parameter, transposed): the parameter object, not a view of its data, so a
        # later ``module.to()`` (which swaps ``.data``) is still followed.
        self.pairs: list[tuple[Tensor, Tensor, bool]] = []

        def own(param: Tensor, transform: str = "") -> Tensor:
            target = torch.empty(param.shape[::-1] if transform == "t" else param.shape, **kw)
            self.pairs.append((target, param, transform == "t"))
            return target

        self.start = own(prior.start_token)
        self.embed = own(prior.digit_embed.weight)
        self.wpe = own(t.wpe.weight)
        self.layers = [
            _Layer(
                own(b.ln_1.weight),
                own(b.ln_1.bias),
                own(b.attn.c_attn.weight),
                own(b.attn.c_attn.bias),
                own(b.attn.c_proj.weight),
                own(b.attn.c_proj.bias),
                own(b.ln_2.weight),
                own(b.ln_2.bias),
                own(b.mlp.c_fc.weight),
                own(b.mlp.c_fc.bias),
                own(b.mlp.c_proj.weight),
                own(b.mlp.c_proj.bias),
            )
            for b in t.h
        ]
        self.lnf_w = own(t.ln_f.weight)
        self.lnf_b = own(t.ln_f.bias)
        self.head_w = own(prior.head.weight, "t")  # (W, sum L): x @ head_w
        self.head_b = own(prior.head.bias)
        intra = prior.intra
        self.intra = intra is not None
        if intra is not None:
            self.i_embed = own(intra.embed.weight)
            self.i_pos = own(intra.position)
            self.i_ln_w = own(intra.norm.weight)
            self.i_ln_b = own(intra.norm.bias)
            self.i_fc_w = own(intra.fc.weight, "t")
            self.i_fc_b = own(intra.fc.bias)
            self.i_out_w = own(intra.out.weight, "t")
            self.i_out_b = own(intra.out.bias)
            self.i_eps = intra.norm.eps
        self.refresh()

    def refresh(self) -> None:
        with torch.no_grad():
            for target, param, transposed in self.pairs:
                target.copy_(param.detach().t() if transposed else param.detach())

    def matrices(self) -> list[Tensor]:
        """The weight matrices one token step multiplies by (what the speed bound counts)."""
        out = [m for layer in self.layers for m in (layer.qkv_w, layer.proj_w, layer.fc_w)]
        out += [layer.out_w for layer in self.layers] + [self.head_w]
        if self.intra:
            out += [self.i_fc_w, self.i_out_w]
        return out


@dataclass
class PriorState:
    """Incremental decoding state of one batch of tiles (advanced in place by ``advance``)."""

    weights: CodingWeights
    cache: Tensor  # (depth, 2, B, heads, K, head_dim) keys and values, preallocated
    batch: int
    position: int = 0
    hidden: Tensor | None = None  # (B, W) context of the token being coded
    base: Tensor | None = None  # (B, sum L) factorised logits of that token
    prefix: Tensor | None = None  # (B, W) sum of the embeddings of its coded digits (causal)
    digit: int = 0  # next digit of the current token (causal)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


# float64 coding copies, keyed weakly by the prior they were made from (one per device).
_CODING_COPIES: weakref.WeakKeyDictionary[ARPrior, dict[torch.device, CodingWeights]] = (
    weakref.WeakKeyDictionary()
)


def coding_device(prior: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """The device coding runs on: ``device`` if given, else the prior's when a GPU, else CPU."""
    if device is not None:
        return torch.device(device)
    param = next(prior.parameters())
    return param.device if param.device.type == "cuda" else torch.device("cpu")


class ARPrior(nn.Module):
    """Causal transformer prior p(token_i | tokens_<i) over FSQ digits.

    Args:
        levels: FSQ levels, one per digit.
        num_tokens: tokens per tile (K).
        width: transformer width.
        depth: transformer layers.
        heads: attention heads.
        digits: "factorized" (default; digits independent given the context) or "causal" (each
            digit also given the token's earlier digits, through :class:`IntraTokenHead`).
    """

    def __init__(
        self,
        levels: Sequence[int],
        num_tokens: int,
        width: int,
        depth: int,
        heads: int,
        digits: PriorDigits = "factorized",
    ) -> None:
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or any(v < 2 for v in levels):
            raise ConfigError(f"FSQ levels must be integers >= 2, got {levels}")
        if num_tokens < 1 or width < 1 or depth < 1 or heads < 1 or width % heads:
            raise ConfigError(
                f"invalid prior shape: num_tokens={num_tokens}, width={width} "
                f"(a multiple of heads={heads}), depth={depth}"
            )
        if digits not in PRIOR_DIGITS:
            raise ConfigError(f"prior digits must be one of {PRIOR_DIGITS}, got {digits!r}")
        self.levels = levels
        self.num_tokens = num_tokens
        self.width = width
        self.digits = digits
        offsets = torch.tensor((0, *levels[:-1])).cumsum(0)
        self.register_buffer("digit_offsets", offsets, persistent=False)
        starts = [sum(levels[:j]) for j in range(len(levels))]  # Python ints: meta-device safe
        self._slices = [(o, o + n) for o, n in zip(starts, levels)]
        self.digit_embed = nn.Embedding(sum(levels), width)
        self.start_token = nn.Parameter(torch.randn(width) * 0.02)
        config = GPT2Config(
            n_embd=width,
            n_layer=depth,
            n_head=heads,
            n_positions=num_tokens,
            vocab_size=1,
            bos_token_id=None,
            eos_token_id=None,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            activation_function="gelu",
            attn_implementation="eager",
        )
        self.transformer = GPT2Model(config)
        # Inputs are given as embeddings; the unused vocabulary table must not get gradients
        # (DDP refuses parameters that never receive one).
        self.transformer.wte.weight.requires_grad_(False)
        self.head = nn.Linear(width, sum(levels))
        self.intra = IntraTokenHead(levels, width) if digits == "causal" else None
        nn.init.normal_(self.digit_embed.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    # ---------------------------------------------------------------- shared
    def check_indices(self, indices: Tensor) -> None:
        """Raise InvalidTokensError unless indices is (B, K, d) integer within the levels."""
        d = len(self.levels)
        if indices.ndim != 3 or indices.shape[1:] != (self.num_tokens, d):
            raise InvalidTokensError(
                f"expected token indices (B, {self.num_tokens}, {d}), got {tuple(indices.shape)}"
            )
        if indices.dtype.is_floating_point or indices.dtype.is_complex:
            raise InvalidTokensError(f"token indices must be integers, got {indices.dtype}")
        limits = torch.tensor(self.levels, device=indices.device)
        if indices.numel() and ((indices < 0).any() or (indices >= limits).any()):
            raise InvalidTokensError(f"token digits must lie in [0, L_j) for levels {self.levels}")

    def _embed(self, tokens: Tensor) -> Tensor:
        """(..., d) digits -> (..., width): sum of the per-digit embeddings."""
        return self.digit_embed(tokens.long() + self.digit_offsets).sum(dim=-2)

    def _split(self, hidden: Tensor) -> list[Tensor]:
        return list(self.head(hidden).split(self.levels, dim=-1))

    # ------------------------------------------------------ teacher forcing
    def forward(self, indices: Tensor) -> PriorOutput:
        """Logits of every digit given the true previous tokens (and, if causal, digits)."""
        self.check_indices(indices)
        batch = indices.shape[0]
        start = self.start_token.expand(batch, 1, -1)
        inputs = torch.cat([start, self._embed(indices[:, :-1])], dim=1)
        hidden = self.transformer(inputs_embeds=inputs, use_cache=False).last_hidden_state
        logits = self._split(hidden)
        if self.intra is not None:
            logits = [lg + c for lg, c in zip(logits, self.intra(hidden, indices))]
        return PriorOutput(logits)

    def log_likelihoods(self, indices: Tensor) -> Tensor:
        """(B, K, d) natural-log probability of each actual digit."""
        logits = self.forward(indices).logits
        per_digit = [
            torch.log_softmax(lg.float(), dim=-1).gather(-1, indices[..., j : j + 1].long())
            for j, lg in enumerate(logits)
        ]
        return torch.cat(per_digit, dim=-1)

    def likelihoods(self, indices: Tensor) -> Tensor:
        """(B, K, d) probability of each actual digit, floored at 1e-9 (CompressAI needs > 0)."""
        return self.log_likelihoods(indices).exp().clamp_min(_MIN_LIKELIHOOD)

    def nll_bits(self, indices: Tensor) -> Tensor:
        """(B,) total bits of each tile's tokens: the rate term, differentiable."""
        log2e = 1.4426950408889634
        return -self.log_likelihoods(indices).sum(dim=(1, 2)) * log2e

    # ----------------------------------------------------------------- coding
    def coding_copy(self, device: str | torch.device | None = None) -> CodingWeights:
        """float64 coding weights on the coding device, refreshed from the current weights."""
        device = coding_device(self, device)
        copies = _CODING_COPIES.setdefault(self, {})
        weights = copies.get(device)
        if weights is None:
            weights = copies[device] = CodingWeights(self, device)
        else:
            weights.refresh()
        return weights

    def start(self, batch: int, device: str | torch.device | None = None) -> PriorState:
        """Empty KV cache for ``batch`` tiles; the first ``advance`` gives token 0's context.

        ``device`` defaults to the prior's own when it is a GPU, else the CPU.
        """
        if batch < 1:
            raise InvalidTokensError(f"batch must be >= 1, got {batch}")
        weights = self.coding_copy(device)
        cfg = self.transformer.config
        cache = torch.zeros(
            cfg.n_layer,
            2,
            batch,
            cfg.n_head,
            self.num_tokens,
            self.width // cfg.n_head,
            dtype=torch.float64,
            device=weights.device,
        )
        return PriorState(weights, cache, batch, device=weights.device)

    def advance(self, state: PriorState, prev: Tensor | None) -> None:
        """Append ``prev`` (B, d) to the context (None for the first token) and run one step.

        Afterwards :meth:`digit_logits` gives the next token's digit distributions. Always
        deterministic: it enters :func:`deterministic_coding` itself.
        """
        if state.position >= self.num_tokens:
            raise InvalidTokensError(f"all {self.num_tokens} tokens were already stepped")
        if (prev is None) != (state.position == 0):
            raise InvalidTokensError("prev must be None exactly for the first step")
        w = state.weights
        with deterministic_coding():
            if prev is None:
                x = w.start.expand(state.batch, -1)
            else:
                if prev.shape != (state.batch, len(self.levels)):
                    raise InvalidTokensError(
                        f"prev must be ({state.batch}, {len(self.levels)}), got {tuple(prev.shape)}"
                    )
                idx = prev.to(state.device, torch.long) + self.digit_offsets.to(state.device)
                x = w.embed[idx].sum(dim=1)
            state.hidden = _forward_step(w, state.cache, x, state.position)
            state.base = torch.addmm(w.head_b, state.hidden, w.head_w)
            state.position += 1
            state.digit = 0
            if w.intra:
                state.prefix = torch.zeros_like(state.hidden)

    def digit_logits(self, state: PriorState, j: int, prev_digit: Tensor | None = None) -> Tensor:
        """float64 logits (B, L_j) of digit j of the current token.

        Causal priors need the digits in order: ``prev_digit`` (B,) is digit j - 1 of this token
        (None for j = 0). Factorised priors ignore it and accept any order.
        """
        if state.hidden is None or state.base is None:
            raise InvalidTokensError("advance() must run before digit_logits()")
        lo, hi = self._slices[j]
        w = state.weights
        if not w.intra:
            return state.base[:, lo:hi]
        if j != state.digit or (prev_digit is None) != (j == 0):
            raise InvalidTokensError(
                f"a causal prior codes digits in order with the previous digit: expected digit "
                f"{state.digit}, got {j} ({'with' if prev_digit is not None else 'without'} one)"
            )
        with deterministic_coding():
            if prev_digit is not None:
                if prev_digit.shape != (state.batch,):
                    raise InvalidTokensError(f"prev_digit must be ({state.batch},)")
                offset = self._slices[j - 1][0]
                state.prefix = state.prefix + w.i_embed[prev_digit.to(state.device).long() + offset]
            z = state.hidden + w.i_pos[j] + state.prefix
            u = F.gelu(
                torch.addmm(
                    w.i_fc_b, F.layer_norm(z, z.shape[-1:], w.i_ln_w, w.i_ln_b, w.i_eps), w.i_fc_w
                )
            )
            state.digit = j + 1
            return state.base[:, lo:hi] + torch.addmm(w.i_out_b[lo:hi], u, w.i_out_w[:, lo:hi])

    def step(self, state: PriorState, prev: Tensor | None) -> list[Tensor]:
        """float64 logits (B, L_j) of every digit of the next token (factorised priors only)."""
        if self.intra is not None:
            raise ConfigError("a causal prior's digits depend on each other: use digit_logits()")
        self.advance(state, prev)
        return [self.digit_logits(state, j) for j in range(len(self.levels))]


def _forward_step(w: CodingWeights, cache: Tensor, x: Tensor, pos: int) -> Tensor:
    """One GPT-2 step (B, W) -> (B, W) at position ``pos``, writing K/V into ``cache``.

    The same function as transformers' eager GPT-2 with a KV cache (layer norm, fused QKV,
    softmax(q k^T / sqrt(d_head)) v, exact GELU MLP), with fewer operations per step: no masks,
    no cache concatenation, matrix-vector products on contiguous float64 weights.
    """
    batch, width = x.shape
    heads = w.heads
    hd = width // heads
    scale = 1.0 / math.sqrt(hd)
    eps = w.eps
    shape = (width,)
    x = x + w.wpe[pos]
    for i, layer in enumerate(w.layers):
        a = F.layer_norm(x, shape, layer.ln1_w, layer.ln1_b, eps)
        qkv = torch.addmm(layer.qkv_b, a, layer.qkv_w).view(batch, 3, heads, hd)
        kv = cache[i]  # (2, B, H, K, hd)
        kv[:, :, :, pos] = qkv[:, 1:].transpose(0, 1)
        keys, values = kv[0, :, :, : pos + 1], kv[1, :, :, : pos + 1]  # (B, H, P, hd)
        scores = torch.matmul(keys, qkv[:, 0].unsqueeze(-1)).mul_(scale)  # (B, H, P, 1)
        probs = torch.softmax(scores, dim=2)
        ctx = torch.matmul(probs.transpose(2, 3), values).view(batch, width)  # (B, H, 1, hd)
        x = torch.addmm(x, ctx, layer.proj_w).add_(layer.proj_b)
        m = F.layer_norm(x, shape, layer.ln2_w, layer.ln2_b, eps)
        h = F.gelu(torch.addmm(layer.fc_b, m, layer.fc_w))
        x = torch.addmm(x, h, layer.out_w).add_(layer.out_b)
    return F.layer_norm(x, shape, w.lnf_w, w.lnf_b, eps)
