"""rANS coding of FSQ token grids with the autoregressive prior (compressai.ans underneath).

Symbol order: for token k = 0..K-1, for digit j = 0..d-1, for tile b = 0..B-1. All B tiles of an
image share one stream, so decoding costs K prior steps (each a batch of B tiles with a KV cache)
and K ``decode_stream`` calls, each decoding the B * d digits of one token position at once. With
a causal (intra-token) prior, digit j's tables depend on digit j - 1 of the same token, so the
coder walks the digits in order: K * d ``decode_stream`` calls of B digits each (same symbol
order, so the payload layout is the same for both kinds).

Encoder and decoder run the same code: ``prior.advance`` / ``prior.digit_logits`` (float64, on
the prior's GPU or one CPU thread) ->
:func:`~compressai_vlic.coding.cdf.logits_to_cdf` (integer-only) -> rANS. The encoder does not
use the parallel teacher-forced pass for coding, so both ends see identical tables.

Corrupt input. compressai's ``RansDecoder`` has no bounds checks: its decoder reads one 32-bit
word past its pointer whenever its state runs low, and its escape/bypass path can read an
unbounded number of words. Here:

* the escape symbol has zero width (see :mod:`~compressai_vlic.coding.cdf`), so the bypass path
  is unreachable and every decoded digit is in [0, L_j);
* each decoded symbol reads at most one word, so appending fixed padding words
  (N + FILLER_SYMBOLS + PROBE_SYMBOLS + 2, N = B * K * d) keeps every read inside our buffer,
  whatever the bytes are;
* a payload longer than any valid one or not made of whole words is refused before decoding;
* after the N symbols and the fillers, a valid stream leaves the decoder in its initial state
  (2**31) exactly at the end of the payload. Decoding ``PROBE_SYMBOLS`` more symbols with a
  uniform 8-bit table reads out that state and the next words (our padding); any difference from
  a reference stream (fillers only) means the payload is not what the encoder wrote, and raises
  CorruptStreamError. compressai.ans exposes neither the final state nor the read position, so
  this is how "the decoder consumed the stream exactly" is checked.

What the end check cannot see: rANS decoding maps a state x to (symbol, next state)
bijectively, so a change confined to the bits that select one of the last symbols decoded can
swap that symbol for another of the same frequency and leave the final state untouched (e.g.
two adjacent frequency-1 symbols); it carries no redundancy to detect that. Measured behind a
recomputed CRC (tests/test_bitstream_fuzz_decode.py): random and truncated payloads were always
refused; 2 of 480 single-bit flips (both in the last word) decoded to in-range, different
tokens. A payload that is itself a valid stream (e.g. spliced from another image) decodes to
its own tokens. Accidental damage never gets this far: the container's CRC32 refuses it first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from compressai_vlic._compressai import BufferedRansEncoder, RansDecoder
from compressai_vlic.coding.cdf import (
    DEFAULT_LOGIT_STEP,
    DEFAULT_PRECISION,
    cdf_bits,
    logits_to_cdf,
)
from compressai_vlic.coding.context import CodingPrior, deterministic_coding
from compressai_vlic.errors import (
    ConfigError,
    CorruptStreamError,
    InvalidTokensError,
    TruncatedStreamError,
)

__all__ = ["PROBE_SYMBOLS", "TokenCoder"]

#: Uniform 8-bit symbols decoded after the payload to check the decoder ended where it should.
PROBE_SYMBOLS = 12
_PROBE_CDF = [[256 * i for i in range(257)] + [65536]]
#: Near-free symbols (p = 1 - 2**-16 each) the encoder appends: compressai's
#: ``BufferedRansEncoder.flush`` sizes its output buffer by the symbol count and writes past it
#: for very short streams (it segfaults on an empty one), and decoding them back is one more check.
FILLER_SYMBOLS = 16
_FILLER_CDF = [[0, 65535, 65536, 65536]]
_FILLER_ARGS = ([0] * FILLER_SYMBOLS, _FILLER_CDF, [4], [0])
# Padding words appended to the payload at decode time; arbitrary but fixed and distinct, so a
# decoder that stopped at the wrong word reads different padding than the reference.
_PAD_MULTIPLIER = 0x9E3779B1


def _padding(words: int) -> bytes:
    return b"".join(
        ((i + 1) * _PAD_MULTIPLIER & 0xFFFFFFFF).to_bytes(4, "little") for i in range(words)
    )


def _finish(decoder: RansDecoder) -> tuple[list[int], list[int]]:
    """Decode the fillers and the end probe (what must follow the last token)."""
    return decoder.decode_stream(*_FILLER_ARGS), decoder.decode_stream(
        [0] * PROBE_SYMBOLS, _PROBE_CDF, [258], [0]
    )


def _reference_finish() -> tuple[list[int], list[int]]:
    """What a valid stream decodes to after its tokens: a stream of fillers only, probed."""
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes([0] * FILLER_SYMBOLS, *_FILLER_ARGS)
    decoder = RansDecoder()
    decoder.set_stream(encoder.flush() + _padding(FILLER_SYMBOLS + PROBE_SYMBOLS + 2))
    return _finish(decoder)


def _cached_layout(
    cache: dict[int, tuple[list[int], list[int], list[int]]],
    coder: TokenCoder,
    batch: int,
    digits: list[int],
) -> tuple[list[int], list[int], list[int]]:
    key = digits[0] if len(digits) == 1 else -1
    if key not in cache:
        cache[key] = coder._layout(batch, digits)
    return cache[key]


class TokenCoder:
    """Entropy coder for (B, K, d) FSQ indices driven by a :class:`CodingPrior` (e.g. ``ARPrior``)."""

    def __init__(
        self,
        levels: Sequence[int],
        precision: int = DEFAULT_PRECISION,
        logit_step: float = DEFAULT_LOGIT_STEP,
    ) -> None:
        self.levels = tuple(int(v) for v in levels)
        if not self.levels or any(not 2 <= v <= 1 << 15 for v in self.levels):
            raise ConfigError(f"FSQ levels must be integers in [2, 32768], got {self.levels}")
        if precision != 16:
            raise ConfigError("compressai.ans codes with 16-bit CDFs; precision must be 16")
        self.precision = precision
        self.logit_step = logit_step
        self._reference = _reference_finish()

    # -------------------------------------------------------------- helpers
    def _check_prior(self, prior: CodingPrior) -> None:
        if tuple(prior.levels) != self.levels:
            raise ConfigError(f"prior levels {prior.levels} differ from coder levels {self.levels}")

    def _tables(self, logits: list[Tensor]) -> list[Tensor]:
        """One CDF call per distinct alphabet size (e.g. one for levels (8,) * 6)."""
        tables: list[Tensor | None] = [None] * len(logits)
        for size in sorted(set(self.levels)):
            group = [j for j, level in enumerate(self.levels) if level == size]
            stacked = logits_to_cdf(
                torch.cat([logits[j] for j in group]), self.precision, self.logit_step
            )
            for j, table in zip(group, stacked.split(logits[group[0]].shape[0])):
                tables[j] = table
        return tables  # type: ignore[return-value]

    def _layout(self, batch: int, digits: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """Per-group table indexes, table sizes and offsets (digit-major, then tile)."""
        count = batch * len(digits)
        sizes = [self.levels[j] + 2 for j in digits for _ in range(batch)]
        return list(range(count)), sizes, [0] * count

    def _walk(
        self, prior: CodingPrior, tokens: Tensor, device: str | torch.device | None = None
    ) -> Iterator[tuple[int, list[int], list[Tensor]]]:
        """Step the prior, yielding (k, digits, CDF table per digit) groups in symbol order.

        A factorised prior yields all d digits of token k at once; a causal one yields one digit
        at a time, since digit j's table depends on digit j - 1 of the same token. encode,
        decode and estimate_bits all walk through here, so they see the same tables.
        ``tokens[:, k, j]`` is read only after its group was yielded: the decoder fills it in
        place in between. Run it under :func:`deterministic_coding`.
        """
        state = prior.start(tokens.shape[0], device)
        d = len(self.levels)
        every = list(range(d))
        for k in range(tokens.shape[1]):
            prior.advance(state, None if k == 0 else tokens[:, k - 1, :])
            if prior.intra is None:
                yield k, every, self._tables([prior.digit_logits(state, j) for j in every])
                continue
            for j in every:
                prev = None if j == 0 else tokens[:, k, j - 1]
                table = logits_to_cdf(
                    prior.digit_logits(state, j, prev), self.precision, self.logit_step
                )
                yield k, [j], [table]

    def first_group_bits(self, prior: CodingPrior) -> tuple[float, int]:
        """(bits, digits): what the first group of digits of a tile costs at least, and its size.

        The prior's first step sees no token yet, so this group is coded with the same tables in
        every tile: each digit costs at least -log2(largest frequency / 2**precision) bits. A
        stream of T tiles therefore holds at least T times this, whatever its tokens are, which
        refuses a few-byte stream declaring a large image before the prior runs over it.
        """
        self._check_prior(prior)
        tokens = torch.zeros(1, prior.num_tokens, len(self.levels), dtype=torch.long)
        with deterministic_coding():
            _, digits, tables = next(self._walk(prior, tokens, "cpu"))
        scale = float(2**self.precision)
        bits = 0.0
        for table in tables:
            most = int((table[0, 1:] - table[0, :-1]).max())
            bits += -math.log2(most / scale)
        return bits, len(digits)

    def _check_indices(self, indices: Tensor, prior: CodingPrior) -> Tensor:
        prior.check_indices(indices)
        if indices.shape[0] < 1:
            raise InvalidTokensError("need at least one tile of tokens")
        return indices.detach().cpu().long()

    # ------------------------------------------------------------------ API
    def encode(
        self, indices: Tensor, prior: CodingPrior, device: str | torch.device | None = None
    ) -> bytes:
        """(B, K, d) indices -> rANS payload (whole 32-bit words).

        ``device`` runs the prior there (default: the prior's own when a GPU, else the CPU);
        the payload decodes on either.
        """
        self._check_prior(prior)
        indices = self._check_indices(indices, prior)
        batch = indices.shape[0]
        layouts: dict[int, tuple[list[int], list[int], list[int]]] = {}
        encoder = BufferedRansEncoder()
        with deterministic_coding():
            for k, digits, tables in self._walk(prior, indices, device):
                table_ids, sizes, offsets = _cached_layout(layouts, self, batch, digits)
                cdfs = [row for table in tables for row in table.tolist()]
                symbols = indices[:, k, digits].t().reshape(-1).tolist()
                encoder.encode_with_indexes(symbols, table_ids, cdfs, sizes, offsets)
        encoder.encode_with_indexes([0] * FILLER_SYMBOLS, *_FILLER_ARGS)
        return encoder.flush()

    def decode(
        self,
        data: bytes,
        prior: CodingPrior,
        batch: int,
        num_tokens: int,
        device: str | torch.device | None = None,
    ) -> Tensor:
        """rANS payload -> (B, K, d) long indices; BitstreamError if it is not a valid payload.

        ``device`` as for :meth:`encode` (need not be the encoder's).
        """
        self._check_prior(prior)
        if num_tokens != prior.num_tokens or batch < 1:
            raise ConfigError(
                f"cannot decode {batch} tiles x {num_tokens} tokens with a prior of "
                f"{prior.num_tokens} tokens"
            )
        data = bytes(data)
        d = len(self.levels)
        total = batch * num_tokens * d
        if len(data) < 8 or len(data) % 4:
            raise TruncatedStreamError(
                f"token payload of {len(data)} bytes is not >= 2 whole 32-bit rANS words"
            )
        if len(data) > self.max_payload_bytes(total):
            raise CorruptStreamError(
                f"token payload of {len(data)} bytes is longer than any valid stream of "
                f"{total} symbols ({self.max_payload_bytes(total)} bytes)"
            )
        decoder = RansDecoder()
        decoder.set_stream(data + _padding(total + FILLER_SYMBOLS + PROBE_SYMBOLS + 2))
        layouts: dict[int, tuple[list[int], list[int], list[int]]] = {}
        out = torch.empty(batch, num_tokens, d, dtype=torch.long)
        with deterministic_coding():
            for k, digits, tables in self._walk(prior, out, device):
                table_ids, sizes, offsets = _cached_layout(layouts, self, batch, digits)
                cdfs = [row for table in tables for row in table.tolist()]
                symbols = decoder.decode_stream(table_ids, cdfs, sizes, offsets)
                out[:, k, digits] = torch.tensor(symbols, dtype=torch.long).view(-1, batch).t()
        limits = torch.tensor(self.levels)
        if (out < 0).any() or (out >= limits).any():  # unreachable with zero-width escapes
            raise CorruptStreamError("token payload decoded to digits outside the FSQ levels")
        if _finish(decoder) != self._reference:
            raise CorruptStreamError(
                "token payload does not end where a valid stream would: it is corrupt, or was "
                "written for another model, tile count or token count"
            )
        return out

    def estimate_bits(
        self, indices: Tensor, prior: CodingPrior, device: str | torch.device | None = None
    ) -> float:
        """Ideal code length (bits) under the coder's own integer tables (rANS adds <= 8 bytes)."""
        self._check_prior(prior)
        indices = self._check_indices(indices, prior)
        bits = 0.0
        with deterministic_coding():
            for k, digits, tables in self._walk(prior, indices, device):
                for j, table in zip(digits, tables):
                    bits += float(cdf_bits(table, indices[:, k, j], self.precision).sum())
        return bits

    @staticmethod
    def max_payload_bytes(num_symbols: int) -> int:
        """Upper bound of a payload for ``num_symbols`` digits (<= one word each + flush)."""
        return 4 * (num_symbols + FILLER_SYMBOLS + 2)
