"""The sha256 of a file, read in blocks: one helper for every file identity the package records."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike[str], length: int | None = None) -> str:
    """Hex sha256 of a file's bytes, read 1 MiB at a time so large checkpoints fit in memory.

    Args:
        path: the file.
        length: keep only this many leading hex digits (default: all 64).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
