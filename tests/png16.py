"""A 16-bit PNG writer for tests, written from the PNG specification (independent of any reader)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def write_png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG written from the format's definition: (H, W, C) uint16, C = 1 (L) to 4 (RGBA)."""
    height, width, planes = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[planes]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = arr.astype(">u2").reshape(height, -1).view(np.uint8)  # big-endian samples
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
