"""The VLIC container: layout, size budget, and typed errors for every way a stream can be wrong."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from compressai_vlic import bitstream
from compressai_vlic.bitstream import StreamHeader, pack, unpack
from compressai_vlic.errors import (
    BitstreamError,
    ChecksumMismatchError,
    ConfigError,
    CorruptStreamError,
    ForeignStreamError,
    ModelMismatchError,
    TruncatedStreamError,
    UnsupportedVersionError,
)

HEADER = StreamHeader(
    config_hash=bytes.fromhex("a1b2c3d4"),
    height=333,
    width=517,
    tile_overlap=8,
    seed=0xDEADBEEF,
    num_steps=25,
    guidance_scale=1.5,
    schedule_param=3.0,
    schedule="shift",
    cfg_interval=(0.145, 0.505),
    weights_fingerprint=bytes.fromhex("0badf00d"),
)
PAYLOAD = bytes(range(40))  # 10 whole words


def test_round_trip_keeps_every_field() -> None:
    header, payload = unpack(pack(HEADER, PAYLOAD))
    assert header == HEADER
    assert payload == PAYLOAD


def test_resample_changes_the_seed_and_steps_only() -> None:
    data = pack(HEADER, PAYLOAD)
    header, payload = unpack(bitstream.resample(data, 7))
    assert payload == PAYLOAD and header == StreamHeader(**{**HEADER.__dict__, "seed": 7})
    header, _ = unpack(bitstream.resample(data, 8, num_steps=3))
    assert (header.seed, header.num_steps, header.height) == (8, 3, HEADER.height)
    with pytest.raises(ConfigError):  # a seed the header cannot hold
        bitstream.resample(data, 2**32)
    with pytest.raises(ChecksumMismatchError):  # a damaged stream is refused, not re-packed
        bitstream.resample(data[:-1] + bytes([data[-1] ^ 1]), 7)


@pytest.mark.parametrize(
    ("height", "width", "seed", "steps"),
    [(1, 1, 0, 1), (16384, 16384, 2**32 - 1, 255), (256, 4096, 12345, 7)],
)
def test_size_budget_holds_at_the_extremes(height: int, width: int, seed: int, steps: int) -> None:
    header = StreamHeader(b"\x00" * 4, height, width, 255, seed, min(steps, 100), 20.0, 0.0625)
    data = pack(header, PAYLOAD)
    overhead = len(data) - len(PAYLOAD)
    assert overhead == bitstream.HEADER_BYTES + bitstream.CHECKSUM_BYTES == 33
    assert overhead + bitstream.RANS_FLUSH_BYTES == bitstream.FIXED_OVERHEAD_BYTES == 41
    assert unpack(data)[0] == header


def test_header_layout_is_the_documented_one() -> None:
    data = pack(HEADER, PAYLOAD)
    assert data[:2] == b"VL"
    (packed,) = struct.unpack(">I", data[2:6])
    assert packed >> 28 == bitstream.FORMAT_VERSION
    assert ((packed >> 14) & 0x3FFF) + 1 == 333 and (packed & 0x3FFF) + 1 == 517
    assert data[6:10] == HEADER.config_hash
    assert data[10:14] == HEADER.weights_fingerprint
    assert data[14] == 8
    assert struct.unpack(">I", data[15:19])[0] == 0xDEADBEEF
    assert data[19] == 25
    assert struct.unpack(">e", data[20:22])[0] == 1.5
    assert data[22] == bitstream.SCHEDULE_CODES["shift"]
    assert struct.unpack(">eee", data[23:29]) == (
        3.0,
        HEADER.cfg_interval[0],
        HEADER.cfg_interval[1],
    )
    assert struct.unpack(">I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_sampler_floats_are_rounded_to_what_the_stream_holds() -> None:
    header = StreamHeader(b"abcd", 64, 64, 8, 0, 4, 1.37, 0.3, cfg_interval=(0.1453, 0.505))
    assert header.cfg_interval == tuple(struct.unpack(">ee", struct.pack(">ee", 0.1453, 0.505)))
    assert header.guidance_scale == struct.unpack(">e", struct.pack(">e", 1.37))[0] != 1.37
    assert unpack(pack(header, PAYLOAD))[0].guidance_scale == header.guidance_scale


@pytest.mark.parametrize(
    "changes",
    [
        {"height": 0},
        {"width": 16385},
        {"seed": -1},
        {"seed": 2**32},
        {"num_steps": 0},
        {"num_steps": 256},
        {"tile_overlap": 256},
        {"guidance_scale": float("nan")},
        {"guidance_scale": 1e6},
        {"schedule_param": float("inf")},
        {"schedule_param": -1.0},
        {"config_hash": b"abc"},
        {"weights_fingerprint": b"abcde"},
        {"schedule": "cosine"},
        {"cfg_interval": (0.1,)},
    ],
)
def test_unrepresentable_headers_are_refused(changes: dict) -> None:
    fields = {**HEADER.__dict__, **changes}
    with pytest.raises(ConfigError):
        StreamHeader(**fields)


def test_payload_must_be_whole_words() -> None:
    with pytest.raises(ConfigError):
        pack(HEADER, b"1234567")
    with pytest.raises(ConfigError):
        pack(HEADER, b"123456789")


def test_foreign_data_is_named() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    with pytest.raises(ForeignStreamError, match="PNG"):
        unpack(buffer.getvalue())
    with pytest.raises(ForeignStreamError, match="JPEG"):
        unpack(b"\xff\xd8\xff\xe0" + bytes(100))
    with pytest.raises(ForeignStreamError):
        unpack("VL not bytes")  # type: ignore[arg-type]


def test_truncation_is_reported() -> None:
    data = pack(HEADER, PAYLOAD)
    with pytest.raises(TruncatedStreamError):
        unpack(data[:1])
    with pytest.raises(TruncatedStreamError):
        unpack(data[:4])
    with pytest.raises(TruncatedStreamError):
        unpack(data[:29])
    with pytest.raises(TruncatedStreamError, match="whole 32-bit words"):
        unpack(data[:-3])
    # Cut by whole words: only the checksum can tell.
    with pytest.raises(ChecksumMismatchError, match="truncated"):
        unpack(data[:-8])


def test_unknown_version_with_valid_checksum() -> None:
    data = bytearray(pack(HEADER, PAYLOAD))
    data[2] = (data[2] & 0x0F) | (3 << 4)
    body = bytes(data[:-4])
    with pytest.raises(UnsupportedVersionError, match="version 3"):
        unpack(body + struct.pack(">I", zlib.crc32(body)))


def _forge(data: bytes, offset: int, value: bytes) -> bytes:
    """Overwrite header bytes and recompute the checksum (what a forger would do)."""
    body = bytearray(data[:-4])
    body[offset : offset + len(value)] = value
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (19, b"\x00", "num_steps"),  # 0 steps
        (19, b"\xff", "num_steps"),  # 255 steps: over the documented limit of 100
        (20, struct.pack(">e", 500.0), "guidance_scale"),
        (22, b"\x07", "schedule"),  # unknown schedule code
        (23, struct.pack(">e", 0.0), "time_shift"),  # time shift 0
        (25, struct.pack(">ee", 0.6, 0.2), "cfg_interval"),  # lo > hi
        (25, struct.pack(">e", float("nan")), "cfg_interval"),
    ],
)
def test_impossible_values_under_a_valid_checksum(offset: int, value: bytes, match: str) -> None:
    with pytest.raises(CorruptStreamError, match=match):
        unpack(_forge(pack(HEADER, PAYLOAD), offset, value))


def test_writer_refuses_what_the_reader_would_refuse() -> None:
    for changes in ({"num_steps": 101}, {"schedule_param": 0.0}, {"guidance_scale": 21.0}):
        with pytest.raises(ConfigError):
            pack(StreamHeader(**{**HEADER.__dict__, **changes}), PAYLOAD)


def test_version_1_headers_are_still_read() -> None:
    body = struct.pack(
        ">2sI4sBIBee", b"VL", (1 << 28) | (99 << 14) | 149, b"abcd", 8, 7, 25, 1.5, 0.5
    ) + bytes(PAYLOAD)
    header, payload = unpack(body + struct.pack(">I", zlib.crc32(body)))
    assert payload == PAYLOAD
    assert (header.version, header.height, header.width, header.seed) == (1, 100, 150, 7)
    assert (header.schedule, header.time_shift, header.cfg_interval) == ("shift", 0.5, (0.0, 1.0))
    assert header.sampler_schedule == "shift_v1" and header.weights_fingerprint == bytes(4)
    with pytest.raises(ConfigError):
        pack(header, PAYLOAD)  # only the current version is written


def test_model_mismatch() -> None:
    HEADER.check_model(bytes.fromhex("a1b2c3d4"))
    HEADER.check_model(bytes.fromhex("a1b2c3d4"), bytes.fromhex("0badf00d"))
    with pytest.raises(ModelMismatchError, match="a1b2c3d4"):
        HEADER.check_model(b"\x00\x00\x00\x00")
    with pytest.raises(ModelMismatchError, match="0badf00d"):
        HEADER.check_model(bytes.fromhex("a1b2c3d4"), b"1234")
    HEADER.check_model(bytes.fromhex("a1b2c3d4"), b"1234", allow_mismatch=True)
    with pytest.raises(ModelMismatchError):  # never for another architecture
        HEADER.check_model(b"\x00" * 4, bytes.fromhex("0badf00d"), allow_mismatch=True)


def test_tile_layout_follows_from_the_header() -> None:
    layout = StreamHeader(b"abcd", 333, 517, 8, 0, 4, 1.0, 1.0).tile_layout(64)
    assert (layout.height, layout.width, layout.overlap) == (333, 517, 8)
    assert layout.rows == 6 and layout.cols == 10


# ------------------------------------------------------------------------------ fuzzing

VALID = pack(HEADER, PAYLOAD)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _unpack_or_typed_error(data: bytes) -> None:
    try:
        header, payload = unpack(data)
    except BitstreamError:
        return
    # Accepted: only if it is byte-for-byte a stream an encoder could have written.
    assert pack(header, payload) == data


@FUZZ
@given(st.lists(st.integers(0, len(VALID) * 8 - 1), min_size=1, max_size=8))
def test_fuzz_bit_flips(positions: list[int]) -> None:
    data = bytearray(VALID)
    for pos in positions:
        data[pos // 8] ^= 1 << (pos % 8)
    if bytes(data) == VALID:
        return
    with pytest.raises(BitstreamError):
        unpack(bytes(data))


@FUZZ
@given(st.integers(0, len(VALID) - 1))
def test_fuzz_truncation(length: int) -> None:
    with pytest.raises((TruncatedStreamError, ChecksumMismatchError)):
        unpack(VALID[:length])


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _unpack_or_typed_error(data)
    _unpack_or_typed_error(b"VL" + data)


@FUZZ
@given(
    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"PK\x03\x04", b"VL"]),
    st.binary(max_size=100),
)
def test_fuzz_other_formats(magic: bytes, rest: bytes) -> None:
    _unpack_or_typed_error(magic + rest)
