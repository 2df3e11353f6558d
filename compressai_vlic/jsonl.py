"""Append-only JSONL files that survive a kill: one policy for every log and dataset the package keeps.

Each row is one line written with one ``write`` and flushed; with ``sync_each`` (the default) it is
also ``fsync``-ed before :meth:`JsonlAppender.write` returns, so a row reported done is on disk. A
process killed mid-write leaves at most a torn last line (the bytes after the last newline):
readers ignore it, and an appender cuts it off before writing, so a new row never glues onto it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def intact_length(data: bytes) -> int:
    """The byte length of the complete lines of ``data`` (a torn last line excluded)."""
    return data.rfind(b"\n") + 1


def encode_row(row: Any, strict: bool = False) -> bytes:
    """One compact JSON line; ``strict`` refuses NaN and infinities (plain JSON for any reader)."""
    return (json.dumps(row, separators=(",", ":"), allow_nan=not strict) + "\n").encode()


def parse_lines(
    data: bytes,
    parse: Callable[[Any], Any] | None = None,
    on_bad_line: Callable[[int, bytes, Exception], None] | None = None,
) -> list[Any]:
    """The rows of every complete line of ``data`` (a torn last line is not read).

    Args:
        data: the file's bytes.
        parse: turns each decoded JSON value into a row (e.g. ``Row.from_dict``).
        on_bad_line: called with (line number, line, error) for a complete line that is not JSON
            or that ``parse`` refuses (ValueError, KeyError, TypeError); it may raise. Default:
            the line is skipped with a warning (a foreign or damaged line).
    """
    rows = []
    for lineno, line in enumerate(data[: intact_length(data)].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            rows.append(parse(value) if parse is not None else value)
        except (ValueError, KeyError, TypeError) as exc:
            if on_bad_line is None:
                log.warning("line %d: ignoring a line that is not a row (%s)", lineno, exc)
            else:
                on_bad_line(lineno, line, exc)
    return rows


def read_jsonl(
    path: str | os.PathLike[str],
    parse: Callable[[Any], Any] | None = None,
    on_bad_line: Callable[[int, bytes, Exception], None] | None = None,
) -> list[Any]:
    """:func:`parse_lines` of a file ([] when it does not exist)."""
    path = Path(path)
    return parse_lines(path.read_bytes(), parse, on_bad_line) if path.is_file() else []


def cut_torn_tail(path: str | os.PathLike[str]) -> int:
    """Remove a torn last line left by a killed writer; the number of bytes removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    size = path.stat().st_size
    with path.open("r+b") as fh:
        end = intact_length(fh.read())
        if end < size:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
            log.warning("%s: cut off a torn last line (%d bytes)", path, size - end)
    return size - end


class JsonlAppender:
    """Append rows to a JSONL file, one whole line each (thread-safe; a context manager).

    Args:
        path: the file (created with its folder if missing; a torn last line is cut off first).
        sync_each: ``fsync`` after every row (default); otherwise on :meth:`sync` and close.
        strict: refuse NaN and infinities (see :func:`encode_row`).
    """

    def __init__(
        self, path: str | os.PathLike[str], sync_each: bool = True, strict: bool = False
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = cut_torn_tail(self.path)
        self.sync_each, self.strict = sync_each, strict
        self._lock = threading.Lock()
        self._fh = self.path.open("ab")

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def write(self, row: Any) -> bool:
        """Append ``row``; False (nothing written) once the appender is closed."""
        line = encode_row(row, self.strict)
        with self._lock:
            if self._fh.closed:
                return False
            self._fh.write(line)
            self._fh.flush()
            if self.sync_each:
                os.fsync(self._fh.fileno())
        return True

    def sync(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        self.sync()
        with self._lock:
            self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
