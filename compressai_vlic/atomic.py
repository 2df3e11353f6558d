"""Atomic file writes: a file is either its old self or completely new, never half written.

Every writer of a user-visible file goes through here: the data goes to a temporary file in the
same folder (same file system, so the final rename is atomic), is ``fsync``-ed, and only then
replaces the target with ``os.replace``. On a full disk or a crash the target is untouched and the
temporary file is removed, so no truncated or 0-byte outputs are left behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compressai_vlic.errors import VLICError


class OutputExistsError(VLICError, FileExistsError):
    """An output file exists already and overwriting was not asked for (``--overwrite``)."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: mkstemp makes 0600 files, outputs get the usual 0666 & ~umask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so format-by-extension writers such
    as Pillow or matplotlib work); when the block succeeds it is fsync-ed and moved onto ``path``,
    when it fails it is deleted and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def refuse_existing(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` when ``path`` exists and ``overwrite`` is False."""
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(f"{path}: exists already; pass --overwrite to replace it")
