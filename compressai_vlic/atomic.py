"""Atomic file writes: a file is either its old self or completely new, never half written.

Every writer of a user-visible file goes through here: the data goes to a temporary file in the
same folder (same file system, so the final rename is atomic), is ``fsync``-ed, and only then
replaces the target with ``os.replace``. On a full disk or a crash the target is untouched and the
temporary file is removed, so no truncated or 0-byte outputs are left behind.

A process killed mid-write cannot remove its temporary file, so temporaries are named for no
reader to take them as inputs: ``.NAME.HOST-PID.RANDOM.tmp`` (hidden, and ending in ``.tmp``,
never in an input's suffix such as ``.png`` or ``.vlic``; see :func:`is_temporary`). The first
write into a folder removes the temporaries there that were left by dead processes of this host.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import threading
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


TEMP_SUFFIX = ".tmp"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
# .NAME.HOST-PID.RANDOM.tmp (this module), .NAME.RANDOM.tmp.EXT (earlier releases), .tmp-NAME
_TEMP_RE = re.compile(
    r"^\.(?:.+\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.[^.]+\.tmp"  # this module's
    r"|.+\.tmp\.[^.]+"  # earlier releases': .NAME.RANDOM.tmp.EXT
    r"|tmp-.+)$"  # .tmp-NAME
)
_CLEANED: set[str] = set()
_CLEANED_LOCK = threading.Lock()


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """True for the temporary file of an atomic write (this release's or an earlier one's):
    folder readers skip these, so an interrupted write is never read as an input."""
    return _TEMP_RE.match(Path(path).name) is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or no way to tell: keep its file
    return True


def clean_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries in ``folder`` left by processes of this host that no longer run
    (killed mid-write); return them. Files of live processes and of other hosts are kept."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or match["pid"] is None or match["host"] != _HOST:
            continue
        if int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _clean_once(folder: Path) -> None:
    """Clean a folder on the first write into it by this process (not on every write: a folder
    of many outputs would be listed once per file)."""
    key = os.path.abspath(folder)
    with _CLEANED_LOCK:
        if key in _CLEANED:
            return
        _CLEANED.add(key)
    clean_stale_temporaries(folder)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds it is fsync-ed and moved
    onto ``path``, when it fails it is deleted and ``path`` is left as it was.

    The temporary path ends in ``.tmp``, not in ``path``'s suffix: writers that choose the format
    by extension must be told it (``Image.save(tmp, format="PNG")``, ``savefig(tmp, format=...)``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(target.parent)
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.{_HOST}-{os.getpid()}.", suffix=TEMP_SUFFIX, dir=target.parent
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
