"""Persistent, content-addressed cache of judgments.

Key = sha256 over the three images' pixel digests (in display order), the prompt version, the
backend, the model and the sampling settings (temperature, seed, token limits, ...): exactly what
determines an answer, and never an API key or URL. Storage is SQLite in WAL mode: every insert is
one atomic transaction, readers never block writers, several threads and processes can write the
same file (``busy_timeout`` serialises them), and a process killed with ``kill -9`` leaves every
committed row intact and the file consistent. Failures are never stored: a judgment whose call
failed or whose answer was unusable is retried next time instead of being frozen as an abstention.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compressai_vlic.errors import JudgeError
from compressai_vlic.judges.encoding import check_triplet, image_digest
from compressai_vlic.judges.types import Judge, JudgeRequest, Judgment

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(digests: tuple[str, str, str], identity: Mapping[str, Any]) -> str:
    """sha256 over image digests (reference, A, B) and the judge's identity (settings)."""
    payload = json.dumps({"images": list(digests), "judge": dict(identity)}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _accepts_on_result(method: Callable[..., Any]) -> bool:
    try:
        return "on_result" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def is_cacheable(judgment: Judgment) -> bool:
    """Only clean outcomes are cached; an abstention caused by an error is not an outcome."""
    return (
        not judgment.failed
        and judgment.error is None
        and all(v.error is None for v in judgment.votes)
    )


class JudgmentCache:
    """SQLite-backed key -> Judgment store, safe for concurrent threads and processes."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread and process (sqlite connections must not be shared)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise JudgeError(f"cannot open judge cache {self.path}: {exc}") from exc
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def get_json(self, key: str) -> Any:
        """The JSON value stored under ``key`` (None when absent or unreadable)."""
        row = self._conn().execute("SELECT value FROM judgments WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            return None

    def put_json(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` in one atomic transaction (callers decide what is
        clean enough to keep)."""
        self._conn().execute(
            "INSERT OR REPLACE INTO judgments (key, value, created) VALUES (?, ?, ?)",
            (key, json.dumps(value), time.time()),
        )

    def get(self, key: str) -> Judgment | None:
        value = self.get_json(key)
        if value is None:
            return None
        try:
            judgment = Judgment.from_dict(value)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # unreadable row from an incompatible version: treat as a miss
        judgment.cached = True
        return judgment

    def put(self, key: str, judgment: Judgment) -> bool:
        """Store a clean judgment; returns False (and stores nothing) for failures."""
        if not is_cacheable(judgment):
            return False
        d = judgment.to_dict()
        d["cached"] = False
        self.put_json(key, d)
        return True

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM judgments").fetchone()[0])

    def keys(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT key FROM judgments ORDER BY key")]

    def integrity_ok(self) -> bool:
        """SQLite's own consistency check (used after crashes)."""
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0


_QUIET_UNCACHED: contextvars.ContextVar[bool] = contextvars.ContextVar("quiet", default=False)


@contextlib.contextmanager
def default_cache() -> Iterator[None]:
    """Within it, :func:`cached` says nothing about judges it cannot cache: for callers that
    pass a cache by default (stage 2's buffer), not because the user asked for one."""
    token = _QUIET_UNCACHED.set(True)
    try:
        yield
    finally:
        _QUIET_UNCACHED.reset(token)


def cached(judge: Judge, cache: JudgmentCache | str | Path | None) -> Judge:
    """The one cache wrapper: ``judge`` behind a persistent cache when a cache is given and the
    judge has a cache identity (a metric judge has none: it is cheaper than a lookup).

    Args:
        judge: any judge (already cached ones come back as they are).
        cache: the cache or its SQLite path; None for no cache.
    """
    if cache is None or isinstance(judge, CachedJudge):
        return judge
    if not callable(getattr(judge, "cache_identity", None)):
        if _QUIET_UNCACHED.get():
            return judge
        print(
            f"notice: --cache: judge {getattr(judge, 'name', judge)!r} cannot be cached (it has no "
            "cache_identity()); it runs uncached",
            file=sys.stderr,
        )
        return judge
    return CachedJudge(judge, cache)


class CachedJudge:
    """Wraps any judge that exposes ``cache_identity()``; hits come back with ``cached=True``."""

    def __init__(self, judge: Judge, cache: JudgmentCache | str | Path) -> None:
        if not callable(getattr(judge, "cache_identity", None)):
            raise JudgeError(
                f"judge {getattr(judge, 'name', judge)!r} has no cache_identity(); it cannot be "
                "cached because its settings would not be part of the key"
            )
        self.judge = judge
        self.cache = cache if isinstance(cache, JudgmentCache) else JudgmentCache(cache)
        self.name = judge.name
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def cache_identity(self) -> dict[str, Any]:
        return dict(self.judge.cache_identity())  # type: ignore[attr-defined]

    @property
    def with_sample_index(self) -> Callable[[int], CachedJudge]:
        """Present only when the wrapped judge samples: the i-th sample, same cache file."""
        inner = getattr(self.judge, "with_sample_index", None)
        if not callable(inner):
            raise AttributeError("with_sample_index")
        return lambda index: CachedJudge(inner(index), self.cache)

    def key(self, reference: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> str:
        ref, ia, ib = check_triplet(reference, a, b)
        ref_digest = "no-reference" if ref is None else image_digest(ref)
        digests = (ref_digest, image_digest(ia), image_digest(ib))
        return cache_key(digests, self.cache_identity())

    def _lookup(self, key: str) -> Judgment | None:
        hit = self.cache.get(key)
        with self._lock:
            if hit is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
        return hit

    def _store(self, key: str, judgment: Judgment) -> None:
        if self.cache.put(key, judgment):
            with self._lock:
                self.stats.stored += 1

    def compare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        key = self.key(reference, a, b)
        hit = self._lookup(key)
        if hit is not None:
            return hit
        judgment = self.judge.compare(reference, a, b)
        self._store(key, judgment)
        return judgment

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        key = self.key(reference, a, b)
        hit = self._lookup(key)
        if hit is not None:
            return hit
        judgment = await self.judge.acompare(reference, a, b)
        self._store(key, judgment)
        return judgment

    def compare_batch(
        self,
        requests: list[JudgeRequest],
        on_result: Callable[[int, Judgment], None] | None = None,
    ) -> list[Judgment]:
        """Hits come from the cache; misses go to the wrapped judge in one batch and are stored
        one by one as they finish when the judge reports progress (``on_result``), so a run
        killed mid-batch keeps everything already judged."""
        keys = [self.key(r.reference, r.a, r.b) for r in requests]
        out: list[Judgment | None] = [self._lookup(k) for k in keys]
        if on_result is not None:
            for i, hit in enumerate(out):
                if hit is not None:
                    on_result(i, hit)
        todo = [i for i, j in enumerate(out) if j is None]
        if todo:
            misses = [requests[i] for i in todo]
            if _accepts_on_result(self.judge.compare_batch):

                def store(k: int, judgment: Judgment) -> None:
                    self._store(keys[todo[k]], judgment)
                    if on_result is not None:
                        on_result(todo[k], judgment)

                fresh = self.judge.compare_batch(misses, on_result=store)  # type: ignore[call-arg]
            else:
                fresh = self.judge.compare_batch(misses)
                for k, judgment in enumerate(fresh):
                    self._store(keys[todo[k]], judgment)
                    if on_result is not None:
                        on_result(todo[k], judgment)
            for i, judgment in zip(todo, fresh, strict=True):
                out[i] = judgment
        return [j for j in out if j is not None]

    def close(self) -> None:
        closer = getattr(self.judge, "close", None)
        if callable(closer):
            closer()
        self.cache.close()
