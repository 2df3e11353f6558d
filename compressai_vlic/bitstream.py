"""The VLIC container: a fixed header, the rANS payload, and a CRC32 trailer.

Everything the decoder needs besides the weights travels in the stream (CompressAI's bpp counts
only the bytes in ``strings``), and a stream that is not exactly what an encoder wrote is refused
with a typed :class:`~compressai_vlic.errors.BitstreamError` before any model work starts.

Layout of format version 2 (big-endian, 33 bytes + payload; written by this package)::

    offset size field
    0      2    magic b"VL"
    2      4    u32: version (4 bits) | height - 1 (14 bits) | width - 1 (14 bits)
    6      4    config hash (first 4 bytes of sha256 of the model config)
    10     4    weights fingerprint (first 4 bytes of sha256 of decoder, prior and FSQ tensors)
    14     1    tile overlap in px (tile size = the config's image_size, inside the hash);
                255 = seamless: whole tiles, deblocked at decode time
    15     4    decode seed (u32)
    19     1    sampler steps (1..100)
    20     2    guidance scale (IEEE float16)
    22     1    schedule: 0 = "shift", 1 = "power"
    23     2    schedule parameter: time shift s or power p (IEEE float16)
    25     2    CFG interval low end, t (IEEE float16)
    27     2    CFG interval high end, t (IEEE float16)
    29     4n   payload: rANS output, whole 32-bit words (n >= 2)
    end-4  4    CRC32 (zlib) over everything before it

Format version 1 (still read; 24 bytes + payload) had, after the config hash: tile overlap (1),
seed (4), steps (1), guidance scale (f16), time shift (f16). Its streams decode with the sampler
grid and tile layout rule of that version (``schedule="shift_v1"``, guidance at every step, the
old tile grid), so an old stream gives the image it always gave.

Why fixed fields rather than varints: a fixed layout keeps header + checksum + rANS flush at a
known 41 bytes for every seed and every image up to 16384 px a side. The tile grid is not
stored: it follows from (height, width, tile, overlap, version) via
:meth:`StreamHeader.tile_layout`. Sampler floats are stored as float16; a header rounds them on
construction, so the values an encoder reads back from its own header are exactly the ones the
decoder will use.

What is detected: foreign data (magic), unknown versions, any length that is not header +
whole words + CRC, everything else that changes the bytes (CRC32), header values no encoder
writes (sampler settings outside the documented limits of :mod:`compressai_vlic.sampling`, a
zero time shift, an unknown schedule), a different architecture (config hash) and different
weights (fingerprint, checked by the model).
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
from compressai_vlic.sampling import MAX_GUIDANCE_SCALE, MAX_NUM_STEPS, SCHEDULE_PARAM_RANGE

if TYPE_CHECKING:  # pragma: no cover
    from compressai_vlic.tiling import TileLayout

MAGIC = b"VL"
FORMAT_VERSION = 2
#: Versions this package reads.
READABLE_VERSIONS = (1, 2)
HEADER_BYTES = 29
HEADER_BYTES_V1 = 20
CHECKSUM_BYTES = 4
#: Bytes the rANS coder adds on top of the information content (its 64-bit final state).
RANS_FLUSH_BYTES = 8
#: Header + checksum + rANS flush: the fixed cost of a stream beyond its token bits.
FIXED_OVERHEAD_BYTES = HEADER_BYTES + CHECKSUM_BYTES + RANS_FLUSH_BYTES
MAX_SIDE = 1 << 14
#: Schedule codes of format version 2.
SCHEDULE_CODES: dict[str, int] = {"shift": 0, "power": 1}
_SCHEDULE_NAMES = {v: k for k, v in SCHEDULE_CODES.items()}
NO_FINGERPRINT = bytes(4)

_FIXED = struct.Struct(">2sI4s4sBIBeBeee")
_FIXED_V1 = struct.Struct(">2sI4sBIBee")
assert _FIXED.size == HEADER_BYTES and _FIXED_V1.size == HEADER_BYTES_V1

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
    except (OverflowError, struct.error, TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={value!r} does not fit a float16 (|x| <= 65504)") from exc
    if not math.isfinite(rounded) or rounded < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
    return rounded


@dataclass(frozen=True)
class StreamHeader:
    """Everything, besides weights and tokens, that decoding a stream needs.

    ``schedule_param`` is the time shift of the ``"shift"`` schedule or the power of the
    ``"power"`` one. Version-1 headers read back as ``schedule="shift"``, ``cfg_interval=(0, 1)``
    (guidance at every step) and no weights fingerprint (``NO_FINGERPRINT``).
    """

    config_hash: bytes
    height: int
    width: int
    tile_overlap: int
    seed: int
    num_steps: int
    guidance_scale: float
    schedule_param: float
    schedule: str = "shift"
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    weights_fingerprint: bytes = NO_FINGERPRINT
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in ("config_hash", "weights_fingerprint"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 4:
                raise ConfigError(f"{name} must be 4 bytes, got {value!r}")
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
        if self.schedule not in SCHEDULE_CODES:
            raise ConfigError(f"schedule must be 'shift' or 'power', got {self.schedule!r}")
        object.__setattr__(self, "guidance_scale", _float16(self.guidance_scale, "guidance_scale"))
        object.__setattr__(self, "schedule_param", _float16(self.schedule_param, "schedule_param"))
        try:
            lo, hi = self.cfg_interval
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"cfg_interval must be (lo, hi), got {self.cfg_interval!r}") from exc
        interval = (_float16(lo, "cfg_interval"), _float16(hi, "cfg_interval"))
        object.__setattr__(self, "cfg_interval", interval)

    @property
    def time_shift(self) -> float:
        """The shift of a ``"shift"`` schedule (format-1 name of ``schedule_param``)."""
        if self.schedule != "shift":
            raise AttributeError("a 'power' schedule has no time shift; see schedule_param")
        return self.schedule_param

    @property
    def sampler_schedule(self) -> str:
        """The sampler grid to decode with: format-1 streams keep their own (``"shift_v1"``)."""
        return "shift_v1" if self.version == 1 else self.schedule

    def check_limits(self) -> None:
        """ConfigError unless every sampler setting is within the documented limits.

        Limits: 1 <= num_steps <= MAX_NUM_STEPS, 0 <= guidance_scale <= MAX_GUIDANCE_SCALE,
        schedule_param in SCHEDULE_PARAM_RANGE (a time shift of 0 is refused), and
        0 <= lo <= hi <= 1 for the CFG interval.
        """
        if self.num_steps > MAX_NUM_STEPS:
            raise ConfigError(f"num_steps {self.num_steps} exceeds the limit of {MAX_NUM_STEPS}")
        if self.guidance_scale > MAX_GUIDANCE_SCALE:
            raise ConfigError(
                f"guidance_scale {self.guidance_scale} exceeds the limit of {MAX_GUIDANCE_SCALE}"
            )
        low, high = SCHEDULE_PARAM_RANGE
        if not low <= self.schedule_param <= high:
            name = "time_shift" if self.schedule == "shift" else "power"
            raise ConfigError(f"{name} {self.schedule_param} is outside [{low}, {high}]")
        lo, hi = self.cfg_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"cfg_interval {self.cfg_interval} is not 0 <= lo <= hi <= 1")

    def tile_layout(self, tile: int) -> TileLayout:
        """The tile grid of this stream for a model whose tiles are ``tile`` px.

        Every format version derives it the same way from the stored overlap, so version-1
        streams keep the grid they were written with.
        """
        from compressai_vlic.tiling import TileLayout

        return TileLayout.from_header(self.height, self.width, tile, self.tile_overlap)

    def check_model(
        self,
        config_hash: bytes,
        weights_fingerprint: bytes | None = None,
        allow_mismatch: bool = False,
    ) -> None:
        """Raise ModelMismatchError unless the stream was written by this config (and weights).

        ``weights_fingerprint`` is compared for format-2 streams; ``allow_mismatch`` skips that
        comparison (never the config hash: another architecture cannot decode the tokens).
        """
        if config_hash != self.config_hash:
            raise ModelMismatchError(
                f"stream was written by a model with config hash {self.config_hash.hex()}, "
                f"but this model's is {config_hash.hex()}; decode it with the checkpoint "
                "that encoded it"
            )
        if (
            weights_fingerprint is not None
            and not allow_mismatch
            and self.version >= 2
            and weights_fingerprint != self.weights_fingerprint
        ):
            raise ModelMismatchError(
                f"stream was written by weights with fingerprint {self.weights_fingerprint.hex()}, "
                f"but this model's are {weights_fingerprint.hex()} (same architecture, other "
                "weights); decode it with the checkpoint that encoded it, or pass "
                "allow_model_mismatch=True (--allow-model-mismatch) to decode it anyway"
            )


def pack(header: StreamHeader, payload: bytes) -> bytes:
    """Header + payload + CRC32. ``payload`` must be whole 32-bit rANS words (>= 8 bytes)."""
    if header.version != FORMAT_VERSION:
        raise ConfigError(f"can only write format version {FORMAT_VERSION}, not {header.version}")
    header.check_limits()
    if len(payload) < 8 or len(payload) % 4:
        raise ConfigError(f"payload must be >= 8 bytes and whole 32-bit words, got {len(payload)}")
    packed_size = (header.version << 28) | ((header.height - 1) << 14) | (header.width - 1)
    head = _FIXED.pack(
        MAGIC,
        packed_size,
        header.config_hash,
        header.weights_fingerprint,
        header.tile_overlap,
        header.seed,
        header.num_steps,
        header.guidance_scale,
        SCHEDULE_CODES[header.schedule],
        header.schedule_param,
        *header.cfg_interval,
    )
    body = head + bytes(payload)
    return body + struct.pack(">I", zlib.crc32(body))


def _describe_foreign(data: bytes) -> str:
    for prefix, what in _KNOWN_FORMATS:
        if data.startswith(prefix):
            return f"this looks like {what}, not a VLIC stream"
    return f"it starts with {data[:4].hex() or 'nothing'} instead of the VLIC magic {MAGIC.hex()}"


def _header_fields(version: int, head: bytes) -> dict:
    if version == 1:
        _, packed, config_hash, overlap, seed, steps, cfg, shift = _FIXED_V1.unpack(head)
        extra = {"schedule": "shift", "schedule_param": shift}
    else:
        fields = _FIXED.unpack(head)
        _, packed, config_hash, fingerprint, overlap, seed, steps, cfg, code, param, lo, hi = fields
        if code not in _SCHEDULE_NAMES:
            raise ConfigError(f"unknown schedule code {code}")
        extra = {
            "schedule": _SCHEDULE_NAMES[code],
            "schedule_param": param,
            "cfg_interval": (lo, hi),
            "weights_fingerprint": fingerprint,
        }
    return {
        "config_hash": config_hash,
        "height": ((packed >> 14) & (MAX_SIDE - 1)) + 1,
        "width": (packed & (MAX_SIDE - 1)) + 1,
        "tile_overlap": overlap,
        "seed": seed,
        "num_steps": steps,
        "guidance_scale": cfg,
        "version": version,
        **extra,
    }


def declared_size(head: bytes) -> tuple[int, int, int]:
    """(version, height, width) from a stream's first bytes, before the stream is read whole.

    Used to bound a stream file's size from its header (see ``VLIC.read_stream``); nothing here
    is trusted beyond that, since the checksum is only checked by :func:`unpack`.
    """
    head = bytes(head)
    if len(head) < len(MAGIC):
        raise TruncatedStreamError(f"stream has {len(head)} bytes; a VLIC stream has >= 32")
    if head[: len(MAGIC)] != MAGIC:
        raise ForeignStreamError(f"not a VLIC stream: {_describe_foreign(head)}")
    if len(head) < 6:
        raise TruncatedStreamError(f"stream has {len(head)} bytes: truncated inside its header")
    packed = struct.unpack(">I", head[2:6])[0]
    version = packed >> 28
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersionError(
            f"stream format version {version} is not supported (this package reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade compressai-vlic"
        )
    return version, ((packed >> 14) & (MAX_SIDE - 1)) + 1, (packed & (MAX_SIDE - 1)) + 1


def unpack(data: bytes) -> tuple[StreamHeader, bytes]:
    """Check and split a stream; every failure is a typed BitstreamError, never a crash."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ForeignStreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC):
        raise TruncatedStreamError(f"stream has {len(data)} bytes; a VLIC stream has >= 32")
    if data[: len(MAGIC)] != MAGIC:
        raise ForeignStreamError(f"not a VLIC stream: {_describe_foreign(data)}")
    if len(data) < 6:
        raise TruncatedStreamError(f"stream has {len(data)} bytes: truncated inside its header")
    version = struct.unpack(">I", data[2:6])[0] >> 28
    header_bytes = HEADER_BYTES_V1 if version == 1 else HEADER_BYTES
    minimum = header_bytes + 8 + CHECKSUM_BYTES
    if len(data) < minimum:
        raise TruncatedStreamError(
            f"stream has {len(data)} bytes but the smallest VLIC stream has {minimum}: truncated"
        )
    if (len(data) - header_bytes - CHECKSUM_BYTES) % 4:
        raise TruncatedStreamError(
            f"stream length {len(data)} is not header + whole 32-bit words + checksum: "
            "it was truncated or has bytes appended"
        )
    body, (stored_crc,) = data[:-CHECKSUM_BYTES], struct.unpack(">I", data[-CHECKSUM_BYTES:])
    if zlib.crc32(body) != stored_crc:
        hint = "" if version in READABLE_VERSIONS else f" (its version field reads {version})"
        raise ChecksumMismatchError(
            f"CRC32 mismatch{hint}: the stream is corrupted or truncated; re-encode or re-fetch it"
        )
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersionError(
            f"stream format version {version} is not supported (this package reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade compressai-vlic"
        )
    try:
        header = StreamHeader(**_header_fields(version, body[:header_bytes]))
        header.check_limits()
    except ConfigError as exc:  # a value no encoder writes, under a valid checksum
        raise CorruptStreamError(f"stream header holds an impossible value: {exc}") from exc
    return header, body[header_bytes:]


def resample(data: bytes, seed: int, num_steps: int | None = None) -> bytes:
    """The same stream (same tokens) with another noise seed, and optionally another number of
    sampler steps, in its header: how one code is decoded several times (pairs, decode seeds).

    A stream with more steps than its model writes needs ``max_evaluations_per_tile`` raised
    (or None) when it is decoded.
    """
    from dataclasses import replace

    header, payload = unpack(data)
    changes = {"seed": seed} if num_steps is None else {"seed": seed, "num_steps": num_steps}
    return pack(replace(header, **changes), payload)
