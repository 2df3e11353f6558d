"""Autoregressive transformer prior over the K FSQ tokens of a tile (the entropy model).

Token i is predicted from tokens < i; its d FSQ digits are predicted jointly from that context
(one head per digit, factorised within the token), so the entropy coder works on d small
alphabets instead of one codebook of prod(levels) entries. The backbone is transformers'
``GPT2Model`` (eager attention, no dropout) fed through ``inputs_embeds``: input i is a learned
start vector for i = 0, else the sum of the per-digit embeddings of token i - 1.

Two paths:

* training / likelihoods: :meth:`ARPrior.forward` runs teacher-forced in the module's own dtype
  and device (float32), all positions at once;
* coding: :meth:`ARPrior.start` / :meth:`ARPrior.step` run one token at a time with a KV cache
  on a float64 CPU copy of the weights, single-threaded (:func:`deterministic_coding`), and the
  encoder uses this same incremental path (not the teacher-forced pass). Same weights, same op
  sequence, same shapes and one thread at both ends gives bit-identical logits whatever the
  caller's thread count or process; float64 plus the logit grid of
  :func:`compressai_vlic.coding.cdf.logits_to_cdf` absorbs the remaining risk across machines.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache, GPT2Config, GPT2Model

from compressai_vlic.coding.context import deterministic_coding
from compressai_vlic.errors import ConfigError, InvalidTokensError

__all__ = ["ARPrior", "PriorOutput", "PriorState", "deterministic_coding"]

# Probabilities reported to CompressAI must be > 0 (it takes -log2 of them).
_MIN_LIKELIHOOD = 1e-9


@dataclass(frozen=True)
class PriorOutput:
    """Teacher-forced logits: one (B, K, L_j) float tensor per FSQ digit j."""

    logits: list[Tensor]


@dataclass
class PriorState:
    """Incremental decoding state of one batch of tiles (advanced in place by ``step``)."""

    model: ARPrior  # the float64 CPU coding copy
    cache: DynamicCache
    batch: int
    position: int = 0


# float64 coding copies (reused buffers), keyed weakly by the prior they were made from.
_CODING_COPIES: weakref.WeakKeyDictionary[ARPrior, ARPrior] = weakref.WeakKeyDictionary()


class ARPrior(nn.Module):
    """Causal transformer prior p(token_i | tokens_<i) with factorised FSQ digits."""

    def __init__(
        self, levels: Sequence[int], num_tokens: int, width: int, depth: int, heads: int
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
        self.levels = levels
        self.num_tokens = num_tokens
        self.width = width
        offsets = torch.tensor((0, *levels[:-1])).cumsum(0)
        self.register_buffer("digit_offsets", offsets, persistent=False)
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
        """Logits of every token given the true previous tokens (training, likelihoods)."""
        self.check_indices(indices)
        batch = indices.shape[0]
        start = self.start_token.expand(batch, 1, -1)
        inputs = torch.cat([start, self._embed(indices[:, :-1])], dim=1)
        hidden = self.transformer(inputs_embeds=inputs, use_cache=False).last_hidden_state
        return PriorOutput(self._split(hidden))

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
    def coding_copy(self) -> ARPrior:
        """A float64 CPU copy of the current weights, refreshed on every call.

        Refreshing (one copy of the weights) is cheap next to K prior steps, and it can never be
        stale: a cache keyed on parameter versions would miss updates made through ``.data``.
        """
        clone = _CODING_COPIES.get(self)
        if clone is None:
            clone = copy.deepcopy(self).to(device="cpu", dtype=torch.float64).eval()
            clone.requires_grad_(False)
            _CODING_COPIES[self] = clone
        else:
            clone.load_state_dict(self.state_dict())
        return clone

    def start(self, batch: int) -> PriorState:
        """Empty KV cache for ``batch`` tiles; the first ``step`` gives token 0's logits."""
        if batch < 1:
            raise InvalidTokensError(f"batch must be >= 1, got {batch}")
        model = self.coding_copy()
        return PriorState(model, DynamicCache(config=model.transformer.config), batch)

    def step(self, state: PriorState, prev: Tensor | None) -> list[Tensor]:
        """float64 logits (B, L_j) of the next token, after appending ``prev`` (B, d).

        ``prev`` is None for the first token. Deterministic: always call it inside
        :func:`deterministic_coding` or let it enter one itself.
        """
        model = state.model
        if state.position >= self.num_tokens:
            raise InvalidTokensError(f"all {self.num_tokens} tokens were already stepped")
        if (prev is None) != (state.position == 0):
            raise InvalidTokensError("prev must be None exactly for the first step")
        with deterministic_coding():
            if prev is None:
                inputs = model.start_token.expand(state.batch, 1, -1)
            else:
                if prev.shape != (state.batch, len(self.levels)):
                    raise InvalidTokensError(
                        f"prev must be ({state.batch}, {len(self.levels)}), got {tuple(prev.shape)}"
                    )
                inputs = model._embed(prev.cpu()[:, None, :])
            hidden = model.transformer(
                inputs_embeds=inputs, cache=state.cache, use_cache=True
            ).last_hidden_state
            state.position += 1
            return [lg[:, 0] for lg in model._split(hidden)]
