"""A 16-bit PNG writer written from the PNG specification (independent of any reader).

Pillow cannot write 16-bit colour PNGs; tests and the image fuzz need them, with every row filter
and Adam7 interlacing, to exercise the readers.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

# Adam7 passes: (row start, column start, row step, column step).
_ADAM7 = (
    (0, 0, 8, 8),
    (0, 4, 8, 8),
    (4, 0, 8, 4),
    (0, 2, 4, 4),
    (2, 0, 4, 2),
    (0, 1, 2, 2),
    (1, 0, 2, 1),
)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_rows(rows: np.ndarray, bpp: int, filters: list[int]) -> bytes:
    """Apply the row filters of the spec (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth)."""
    out = []
    prior = np.zeros(rows.shape[1], np.int32)
    for i, row in enumerate(rows.astype(np.int32)):
        kind = filters[i % len(filters)]
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
        predictor = {
            0: np.zeros_like(row),
            1: left,
            2: prior,
            3: (left + prior) // 2,
            4: _paeth(left, prior, upper_left),
        }[kind]
        out.append(bytes([kind]) + ((row - predictor) % 256).astype(np.uint8).tobytes())
        prior = row
    return b"".join(out)


def png16_bytes(
    arr: np.ndarray, filters: list[int] | None = None, interlace: bool = False
) -> bytes:
    """A 16-bit PNG of an (H, W, C) uint16 array, C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA).

    Args:
        arr: the samples.
        filters: row filter types, cycled over the rows (default: 0 on every row).
        interlace: Adam7 interlacing.
    """
    height, width, planes = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[planes]
    filters = filters or [0]
    bpp = 2 * planes
    big = arr.astype(">u2")
    if interlace:
        raw = b""
        for r0, c0, dr, dc in _ADAM7:
            sub = np.ascontiguousarray(big[r0::dr, c0::dc])
            if sub.size:
                raw += _filter_rows(sub.reshape(sub.shape[0], -1).view(np.uint8), bpp, filters)
    else:
        raw = _filter_rows(big.reshape(height, -1).view(np.uint8), bpp, filters)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def write_png16(
    path: Path, arr: np.ndarray, filters: list[int] | None = None, interlace: bool = False
) -> None:
    """Write :func:`png16_bytes` to ``path``."""
    Path(path).write_bytes(png16_bytes(arr, filters, interlace))
