"""The VLIC container: a fixed 20-byte header, the rANS payload, and a CRC32 trailer.

The header stores no tile rows/cols and no tile size (the model's tile size and the image size
determine the grid: ``StreamHeader.tile_layout(tile)``) and uses fixed fields instead of varints,
to keep header + CRC + rANS flush <= 32 bytes in every case (reasons below; docs/entropy-coding.md).

Everything the decoder needs besides the weights travels in the stream (CompressAI's bpp counts
only the bytes in ``strings``), and a stream that is not exactly what an encoder wrote is refused
with a typed :class:`~compressai_vlic.errors.BitstreamError` before any model work starts.

Layout of format version 1 (big-endian, 24 bytes + payload)::

    offset size field
    0      2    magic b"VL"
    2      4    u32: version (4 bits) | height - 1 (14 bits) | width - 1 (14 bits)
    6      4    config hash (first 4 bytes of sha256 of the model config)
    10     1    tile overlap in px (tile size = the config's image_size, inside the hash)
    11     4    decode seed (u32)
    15     1    sampler steps (1..255)
    16     2    guidance scale (IEEE float16)
    18     2    time shift (IEEE float16)
    20     4n   payload: rANS output, whole 32-bit words (n >= 2)
    end-4  4    CRC32 (zlib) over everything before it

Why fixed fields rather than varints: the budget is header + checksum + rANS flush <= 32 bytes
(20 + 4 + 8), and a fixed layout meets it for every seed and every image up to 16384 px a side,
where varints would overflow it for random 32-bit seeds. The tile grid (rows x cols) is not stored:
it follows from (height, width, tile, overlap) via :class:`compressai_vlic.tiling.TileLayout`
(see :meth:`StreamHeader.tile_layout`), and the tile size is part of the hashed config.
Sampler floats are stored as float16; a header rounds them on construction, so the values an
encoder reads back from its own header are exactly the ones the decoder will use.

What is detected: foreign data (magic), unknown versions, any length that is not header +
whole words + CRC (truncation by a non-multiple of 4 bytes), and everything else that changes the
bytes (CRC32: all burst errors up to 32 bits, other corruption with probability 1 - 2**-32),
including truncation by whole words. A different model is caught by the config hash.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compressai_vlic.errors import (
    ChecksumMismatchError,
    ConfigError,
    CorruptStreamError,
    ForeignStreamError,
    ModelMismatchError,
    TruncatedStreamError,
    UnsupportedVersionError,
)

if TYPE_CHECKING:  # pragma: no cover
    from compressai_vlic.tiling import TileLayout

MAGIC = b"VL"
FORMAT_VERSION = 1
HEADER_BYTES = 20
CHECKSUM_BYTES = 4
#: Bytes the rANS coder adds on top of the information content (its 64-bit final state).
RANS_FLUSH_BYTES = 8
#: Header + checksum + rANS flush: the fixed cost of a stream beyond its token bits.
FIXED_OVERHEAD_BYTES = HEADER_BYTES + CHECKSUM_BYTES + RANS_FLUSH_BYTES
MAX_SIDE = 1 << 14

_FIXED = struct.Struct(">2sI4sBIBee")
assert _FIXED.size == HEADER_BYTES

# First bytes of formats a user may pass by mistake, for a helpful message.
_KNOWN_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\xff\x0a", "a JPEG XL image"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
    (b"PK\x03\x04", "a ZIP archive (e.g. a PyTorch checkpoint)"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x80\x02", "a pickle file"),
)


def _float16(value: float, name: str) -> float:
    """Round to the nearest float16 (what the stream stores); refuse what it cannot hold."""
    try:
        rounded = struct.unpack(">e", struct.pack(">e", float(value)))[0]
    except (OverflowError, struct.error) as exc:
        raise ConfigError(f"{name}={value} does not fit a float16 (|x| <= 65504)") from exc
    if not math.isfinite(rounded) or rounded < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
    return rounded


@dataclass(frozen=True)
class StreamHeader:
    """Everything, besides weights and tokens, that decoding a stream needs."""

    config_hash: bytes
    height: int
    width: int
    tile_overlap: int
    seed: int
    num_steps: int
    guidance_scale: float
    time_shift: float
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.config_hash, bytes) or len(self.config_hash) != 4:
            raise ConfigError(f"config_hash must be 4 bytes, got {self.config_hash!r}")
        for name, value, low, high in (
            ("height", self.height, 1, MAX_SIDE),
            ("width", self.width, 1, MAX_SIDE),
            ("tile_overlap", self.tile_overlap, 0, 255),
            ("seed", self.seed, 0, 2**32 - 1),
            ("num_steps", self.num_steps, 1, 255),
            ("version", self.version, 0, 15),
        ):
            if not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        object.__setattr__(self, "guidance_scale", _float16(self.guidance_scale, "guidance_scale"))
        object.__setattr__(self, "time_shift", _float16(self.time_shift, "time_shift"))

    def tile_layout(self, tile: int) -> TileLayout:
        """The tile grid of this stream for a model whose tiles are ``tile`` px."""
        from compressai_vlic.tiling import TileLayout

        return TileLayout.for_image(self.height, self.width, tile, self.tile_overlap)

    def check_model(self, config_hash: bytes) -> None:
        """Raise ModelMismatchError unless the stream was written by a model with this config."""
        if config_hash != self.config_hash:
            raise ModelMismatchError(
                f"stream was written by a model with config hash {self.config_hash.hex()}, "
                f"but this model's is {config_hash.hex()}; decode it with the checkpoint "
                "that encoded it"
            )


def pack(header: StreamHeader, payload: bytes) -> bytes:
    """Header + payload + CRC32. ``payload`` must be whole 32-bit rANS words (>= 8 bytes)."""
    if header.version != FORMAT_VERSION:
        raise ConfigError(f"can only write format version {FORMAT_VERSION}, not {header.version}")
    if len(payload) < 8 or len(payload) % 4:
        raise ConfigError(f"payload must be >= 8 bytes and whole 32-bit words, got {len(payload)}")
    packed_size = (header.version << 28) | ((header.height - 1) << 14) | (header.width - 1)
    head = _FIXED.pack(
        MAGIC,
        packed_size,
        header.config_hash,
        header.tile_overlap,
        header.seed,
        header.num_steps,
        header.guidance_scale,
        header.time_shift,
    )
    body = head + bytes(payload)
    return body + struct.pack(">I", zlib.crc32(body))


def _describe_foreign(data: bytes) -> str:
    for prefix, what in _KNOWN_FORMATS:
        if data.startswith(prefix):
            return f"this looks like {what}, not a VLIC stream"
    return f"it starts with {data[:4].hex() or 'nothing'} instead of the VLIC magic {MAGIC.hex()}"


def unpack(data: bytes) -> tuple[StreamHeader, bytes]:
    """Check and split a stream; every failure is a typed BitstreamError, never a crash."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ForeignStreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC):
        raise TruncatedStreamError(f"stream has {len(data)} bytes; a VLIC stream has >= 32")
    if data[: len(MAGIC)] != MAGIC:
        raise ForeignStreamError(f"not a VLIC stream: {_describe_foreign(data)}")
    minimum = HEADER_BYTES + 8 + CHECKSUM_BYTES
    if len(data) < minimum:
        raise TruncatedStreamError(
            f"stream has {len(data)} bytes but the smallest VLIC stream has {minimum}: truncated"
        )
    if (len(data) - HEADER_BYTES - CHECKSUM_BYTES) % 4:
        raise TruncatedStreamError(
            f"stream length {len(data)} is not header + whole 32-bit words + checksum: "
            "it was truncated or has bytes appended"
        )
    body, (stored_crc,) = data[:-CHECKSUM_BYTES], struct.unpack(">I", data[-CHECKSUM_BYTES:])
    fields = _FIXED.unpack(body[:HEADER_BYTES])
    version = fields[1] >> 28
    if zlib.crc32(body) != stored_crc:
        hint = "" if version == FORMAT_VERSION else f" (its version field reads {version})"
        raise ChecksumMismatchError(
            f"CRC32 mismatch{hint}: the stream is corrupted or truncated; re-encode or re-fetch it"
        )
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"stream format version {version} is not supported (this package reads version "
            f"{FORMAT_VERSION}); upgrade compressai-vlic"
        )
    _, packed_size, config_hash, overlap, seed, steps, cfg, shift = fields
    try:
        header = StreamHeader(
            config_hash=config_hash,
            height=((packed_size >> 14) & (MAX_SIDE - 1)) + 1,
            width=(packed_size & (MAX_SIDE - 1)) + 1,
            tile_overlap=overlap,
            seed=seed,
            num_steps=steps,
            guidance_scale=cfg,
            time_shift=shift,
            version=version,
        )
    except ConfigError as exc:  # a value no encoder writes, under a valid checksum
        raise CorruptStreamError(f"stream header holds an impossible value: {exc}") from exc
    return header, body[HEADER_BYTES:]
