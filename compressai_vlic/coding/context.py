"""What the token coder needs from a prior: a deterministic context and the prior's protocol.

Both live with the coder (the lower layer) so that ``coding`` never imports ``models``; the
model's :class:`~compressai_vlic.models.prior.ARPrior` satisfies :class:`CodingPrior`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["CodingPrior", "deterministic_coding"]


@contextlib.contextmanager
def deterministic_coding() -> Iterator[None]:
    """One intra-op thread and no autograd; restores the caller's thread count on exit."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


@runtime_checkable
class CodingPrior(Protocol):
    """An autoregressive prior the coder can drive one token at a time, identically at both ends.

    ``advance(state, prev)`` feeds the previous token's digits ``prev`` (None for the first
    token); ``digit_logits(state, j, prev_digit)`` then gives the (B, L_j) logits of digit j,
    given digit j - 1 of the same token when the prior is causal within a token (``intra`` is
    not None). ``step(state, prev)`` does both for a factorised prior.
    """

    levels: Sequence[int]
    num_tokens: int
    intra: Any

    def check_indices(self, indices: Tensor) -> None: ...

    def start(self, batch: int, device: str | torch.device | None = None) -> Any: ...

    def advance(self, state: Any, prev: Tensor | None) -> None: ...

    def digit_logits(self, state: Any, j: int, prev_digit: Tensor | None = None) -> Tensor: ...

    def step(self, state: Any, prev: Tensor | None) -> list[Tensor]: ...
