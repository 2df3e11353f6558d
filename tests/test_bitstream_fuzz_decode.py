"""Fuzz the whole decode path: container checks, then the rANS decoder behind a valid checksum.

The container's CRC stops random corruption before the token decoder, so these tests recompute
the checksum after damaging the payload to reach compressai's rANS decoder (which has no bounds
checks of its own). Every outcome must be a typed BitstreamError or in-range indices: never a
crash, a hang or an out-of-range digit.
"""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressai_vlic.bitstream import StreamHeader, pack, unpack
from compressai_vlic.coding import TokenCoder
from compressai_vlic.errors import BitstreamError, ConfigError
from compressai_vlic.models.prior import ARPrior

LEVELS = (4, 3, 7)
K, B = 8, 2
HEADER = StreamHeader(b"\x01\x02\x03\x04", 100, 60, 8, 99, 4, 1.5, 1.0)

with torch.random.fork_rng():  # do not disturb the global RNG of other test modules
    torch.manual_seed(3)
    PRIOR = ARPrior(LEVELS, num_tokens=K, width=16, depth=1, heads=2)
with torch.no_grad():
    PRIOR.head.weight.mul_(20.0)  # skewed tables, so garbage hits rare symbols too
CODER = TokenCoder(LEVELS)
_GEN = torch.Generator().manual_seed(0)
INDICES = torch.stack([torch.randint(0, n, (B, K), generator=_GEN) for n in LEVELS], dim=-1)
PAYLOAD = CODER.encode(INDICES, PRIOR)
STREAM = pack(HEADER, PAYLOAD)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(stream: bytes) -> torch.Tensor:
    header, payload = unpack(stream)
    header.check_model(HEADER.config_hash)
    return CODER.decode(payload, PRIOR, batch=B, num_tokens=K)


def _decode_or_typed_error(stream: bytes) -> None:
    try:
        out = _decode(stream)
    except BitstreamError:
        return
    assert out.shape == (B, K, len(LEVELS)) and out.dtype == torch.long
    assert ((out >= 0) & (out < torch.tensor(LEVELS))).all()


def _with_payload(payload: bytes) -> bytes:
    """A stream with a valid checksum around ``payload`` (whatever it holds)."""
    try:
        return pack(HEADER, payload)
    except ConfigError:  # not whole words: build it by hand, the container must refuse it
        body = STREAM[:20] + payload
        return body + struct.pack(">I", zlib.crc32(body))


def test_valid_stream_decodes() -> None:
    assert torch.equal(_decode(STREAM), INDICES)


@FUZZ
@given(st.lists(st.integers(0, len(PAYLOAD) * 8 - 1), min_size=1, max_size=6))
def test_fuzz_payload_bit_flips_behind_valid_checksum(positions: list[int]) -> None:
    payload = bytearray(PAYLOAD)
    for pos in positions:
        payload[pos // 8] ^= 1 << (pos % 8)
    _decode_or_typed_error(_with_payload(bytes(payload)))


@FUZZ
@given(st.integers(0, len(PAYLOAD) - 1), st.binary(max_size=64))
def test_fuzz_payload_truncated_or_extended(cut: int, tail: bytes) -> None:
    _decode_or_typed_error(_with_payload(PAYLOAD[:cut]))
    _decode_or_typed_error(_with_payload(PAYLOAD + tail))


@FUZZ
@given(st.binary(min_size=0, max_size=400))
def test_fuzz_random_payloads(payload: bytes) -> None:
    _decode_or_typed_error(_with_payload(payload))
    _decode_or_typed_error(_with_payload(payload[: len(payload) // 4 * 4]))


@pytest.mark.parametrize("word", [0x00000000, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF])
def test_constant_payloads(word: int) -> None:
    """All-ones words would drive compressai's escape path with a non-zero escape slot."""
    for words in (2, 3, 17, 200):
        _decode_or_typed_error(_with_payload(word.to_bytes(4, "little") * words))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_whole_streams(data: bytes) -> None:
    _decode_or_typed_error(data)
    _decode_or_typed_error(STREAM[:20] + data)


def test_damage_behind_a_valid_checksum_is_mostly_detected() -> None:
    """The end-of-stream check refuses nearly all damaged payloads that slip past a forged CRC.

    It cannot be complete (see the token_coder docstring): a flip in the final word may swap
    one of the last symbols for another of equal frequency. Those decode to in-range tokens.
    """
    detected = undetected = 0
    for pos in range(0, len(PAYLOAD) * 8, 3):
        payload = bytearray(PAYLOAD)
        payload[pos // 8] ^= 1 << (pos % 8)
        try:
            out = _decode(_with_payload(bytes(payload)))
        except BitstreamError:
            detected += 1
            continue
        undetected += 1
        assert pos >= (len(PAYLOAD) - 4) * 8  # only ever in the last word
        assert ((out >= 0) & (out < torch.tensor(LEVELS))).all()
    assert undetected <= 0.02 * (detected + undetected)
