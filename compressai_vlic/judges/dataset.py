"""Preference datasets: one JSONL row per judged pair, written so that no judgment is ever lost.

A row holds the three input paths and their content hashes, every vote, the final label and the
judge configuration, so training can read it (:func:`read_preference_dataset`) and anyone can see
how each label was produced.

Crash safety: each row is appended with one ``write`` and ``fsync``-ed before the next pair is
reported done; a run killed with ``kill -9`` leaves at most a torn last line, which
:class:`PreferenceWriter` cuts off before appending, and a rerun skips every pair already present.
One writer per file at a time (a ``filelock`` on ``OUTPUT.lock``, on every platform); a second run
on the same file fails fast.

Only labels are written: a pair whose judge call failed (status ``"failed"``) or whose images
could not be read is reported in the run's :class:`DatasetSummary` and left out of the file, so a
rerun asks for it again. An abstention is a label: by default a rerun does not ask again, even
when it came from an unusable answer (empty, refused, wrong format; at temperature 0 the same
question gets the same answer, and the dataset stays as it was). ``retry_abstentions=True``
(``judge --retry-abstentions``) removes those rows first (atomically) and asks their pairs again;
an abstention the judge decided on (a composition's disagreement, a tie) is kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from filelock import FileLock
from filelock import Timeout as LockTimeout

from compressai_vlic.atomic import atomic_write_bytes
from compressai_vlic.digest import file_sha256
from compressai_vlic.errors import (
    ConfigError,
    DatasetError,
    JudgeError,
    MetricUnavailableError,
    VLICError,
)
from compressai_vlic.image_io import IMAGE_SUFFIXES, find_images, load_image
from compressai_vlic.jsonl import JsonlAppender, intact_length, parse_lines
from compressai_vlic.judges.types import Choice, Judge, Judgment, Vote, add_usage
from compressai_vlic.options import check_option

DATASET_VERSION = 1
MissingType = Literal["error", "skip"]


@dataclass(frozen=True)
class PairInputs:
    """One pair to judge: a reference and two candidate reconstructions (image files)."""

    pair_id: str
    reference: Path
    a: Path
    b: Path
    seeds: tuple[int, int] | None = None  # decode seeds of A and B (codec pairs)
    bitstream: Path | None = None  # the shared bitstream both were decoded from (codec pairs)
    codes: Path | None = None  # its token indices and tile layout (codec pairs, PairCodes JSON)


@dataclass
class PreferenceRow:
    """One judged pair as training reads it."""

    pair_id: str
    reference: str
    a: str
    b: str
    reference_sha256: str
    a_sha256: str
    b_sha256: str
    label: Choice
    judgment: Judgment
    judge: str
    judge_config: dict[str, Any]
    seeds: tuple[int, int] | None = None
    bitstream: str | None = None
    version: int = DATASET_VERSION
    codes: str | None = None  # PairCodes JSON: the tokens both decodes were sampled from

    @property
    def votes(self) -> list[Vote]:
        return self.judgment.votes

    @property
    def winner(self) -> str | None:
        """Path of the preferred image, None on abstention."""
        return {Choice.A: self.a, Choice.B: self.b}.get(self.label)

    @property
    def loser(self) -> str | None:
        return {Choice.A: self.b, Choice.B: self.a}.get(self.label)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pair_id": self.pair_id,
            "reference": self.reference,
            "a": self.a,
            "b": self.b,
            "reference_sha256": self.reference_sha256,
            "a_sha256": self.a_sha256,
            "b_sha256": self.b_sha256,
            "label": self.label.value,
            "score": self.judgment.score,
            "prob_a": self.judgment.prob_a,
            "seeds": list(self.seeds) if self.seeds is not None else None,
            "bitstream": self.bitstream,
            "codes": self.codes,
            "judge": self.judge,
            "judge_config": self.judge_config,
            "judgment": self.judgment.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreferenceRow:
        return cls(
            pair_id=str(d["pair_id"]),
            reference=d["reference"],
            a=d["a"],
            b=d["b"],
            reference_sha256=d["reference_sha256"],
            a_sha256=d["a_sha256"],
            b_sha256=d["b_sha256"],
            label=Choice(d["label"]),
            judgment=Judgment.from_dict(d["judgment"]),
            judge=d["judge"],
            judge_config=d["judge_config"],
            seeds=tuple(d["seeds"]) if d.get("seeds") is not None else None,  # type: ignore[arg-type]
            bitstream=d.get("bitstream"),
            version=int(d.get("version", DATASET_VERSION)),
            codes=d.get("codes"),
        )


def _parse_lines(data: bytes, path: Path) -> tuple[list[PreferenceRow], int]:
    """Rows of a dataset file and the byte length of its intact part (a torn tail is excluded)."""

    def refuse(lineno: int, line: bytes, exc: Exception) -> None:
        raise DatasetError(
            f"{path}:{lineno}: not a preference row ({exc.__class__.__name__}: {exc})"
        ) from exc

    return parse_lines(data, PreferenceRow.from_dict, refuse), intact_length(data)


#: How every row this package writes starts (``PreferenceRow.to_dict``'s first key): a torn
#: last line is cut off only if it could be the start of such a row.
ROW_PREFIX = b'{"version":'


def _is_torn_row(tail: bytes) -> bool:
    """Whether bytes after the last newline can be a row an interrupted writer left half done."""
    return tail[: len(ROW_PREFIX)] == ROW_PREFIX[: len(tail)]


#: Judge keywords that say where or how fast a judge is reached, not who judges: a resumed run may
#: change them (e.g. another --base-url serving the same model, prompt and sampling).
LOCATION_KEYS = frozenset(
    {
        "base_url",
        "api_key_env",
        "concurrency",
        "timeout_s",
        "deadline_s",
        "max_response_bytes",
        "max_answer_chars",
        "max_attempts",
        "backoff_base_s",
        "backoff_max_s",
        "batch_size",
        "local_files_only",
    }
)


def identity_config(config: dict[str, Any]) -> dict[str, Any]:
    """A judge configuration without its location keys (:data:`LOCATION_KEYS`): what must match
    for a resumed run to append to a dataset."""
    out = dict(config)
    args = out.get("judge_args")
    if isinstance(args, dict):
        out["judge_args"] = {
            k: v for k, v in args.items() if k.rpartition(".")[2] not in LOCATION_KEYS
        }
    return out


def read_preference_dataset(path: str | os.PathLike[str]) -> list[PreferenceRow]:
    """All complete rows of a preference dataset; a torn last line (killed writer) is ignored."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such preference dataset")
    data = path.read_bytes()
    rows, end = _parse_lines(data, path)
    if end < len(data):
        warnings.warn(
            f"{path}: ignored a torn last line ({len(data) - end} bytes) left by an interrupted run",
            stacklevel=2,
        )
    return rows


def unusable_abstention(row: PreferenceRow) -> bool:
    """An abstention because an answer was unusable (a vote with an error: empty, refused, wrong
    format), not one the judge decided on; what ``retry_abstentions`` asks again."""
    return row.label is Choice.ABSTAIN and any(v.error is not None for v in row.votes)


class PreferenceWriter:
    """Append-only, crash-safe writer of one dataset file (use as a context manager).

    Args:
        path: the JSONL file (created if missing; refused, untouched, if it is not a dataset).
        judge_config: the run's judge configuration (must match the file's rows).
        retry_abstentions: drop rows that are :func:`unusable_abstention` s on opening (the file
            is rewritten atomically), so their pairs are asked again (default False: final).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        judge_config: dict[str, Any],
        retry_abstentions: bool = False,
    ):
        self.path = Path(path)
        self.judge_config = judge_config
        self.retry_abstentions = retry_abstentions
        self.retried: list[str] = []
        self.done: set[str] = set()
        self.existing: list[PreferenceRow] = []
        self.repaired_bytes = 0
        self._out: JsonlAppender | None = None
        self._lock: FileLock | None = None

    def __enter__(self) -> PreferenceWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock")
        try:
            lock.acquire(timeout=0)
        except LockTimeout as exc:
            raise DatasetError(
                f"{self.path}: another run is writing this dataset; wait for it or use another --output"
            ) from exc
        self._lock = lock
        try:
            data = self.path.read_bytes() if self.path.exists() else b""
            rows, end = _parse_lines(data, self.path)
            if end < len(data) and not _is_torn_row(data[end:]):
                raise DatasetError(
                    f"{self.path}: not a preference dataset (its last line, "
                    f"{data[end : end + 40]!r}..., is neither a row nor a row cut short); it was "
                    "left untouched: choose another --output"
                )
            self._out = JsonlAppender(self.path, strict=True)  # cuts off a torn last line
            self.repaired_bytes = self._out.repaired_bytes
            self._check_config(rows)
            if self.retry_abstentions and any(unusable_abstention(r) for r in rows):
                rows = self._drop_unusable(data[:end], rows)
        except BaseException:
            self.close()
            raise
        self.existing = rows
        self.done = {r.pair_id for r in rows}
        return self

    def _drop_unusable(self, data: bytes, rows: list[PreferenceRow]) -> list[PreferenceRow]:
        """Rewrite the file (atomically, under the lock) without unusable abstentions."""
        lines = [line for line in data.splitlines(keepends=True) if line.strip()]
        keep = [(line, r) for line, r in zip(lines, rows) if not unusable_abstention(r)]
        self.retried = [r.pair_id for r in rows if unusable_abstention(r)]
        assert self._out is not None
        self._out.close()
        atomic_write_bytes(self.path, b"".join(line for line, _ in keep))
        self._out = JsonlAppender(self.path, strict=True)
        return [r for _, r in keep]

    def _check_config(self, rows: Sequence[PreferenceRow]) -> None:
        want = identity_config(json.loads(json.dumps(self.judge_config)))
        for r in rows:
            if identity_config(r.judge_config) != want:
                raise ConfigError(
                    f"{self.path} holds pairs judged by a different judge configuration "
                    f"({json.dumps(r.judge_config, sort_keys=True)}); this run uses "
                    f"{json.dumps(want, sort_keys=True)}. Resume with the same judge options or write "
                    "to another --output."
                )

    def append(self, row: PreferenceRow) -> None:
        if self._out is None:
            raise DatasetError("PreferenceWriter is not open")
        if row.pair_id in self.done:
            raise DatasetError(f"{self.path}: pair {row.pair_id!r} is already present")
        self._out.write(row.to_dict())  # one whole line, fsync-ed
        self.done.add(row.pair_id)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- pairs from folders


def _stem_key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _index(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in find_images(root):
        out.setdefault(_stem_key(p, root), []).append(p)
    return out


def pairs_from_folders(
    originals: Path, recon_a: Path, recon_b: Path, missing_type: MissingType = "error"
) -> tuple[list[PairInputs], list[str]]:
    """Match originals with reconstructions by relative path without suffix (``sub/x.png`` <->
    ``sub/x.webp``). Returns the pairs and the keys that had no match (``missing_type="skip"``)."""
    check_option("missing_type", missing_type, MissingType)
    for label, folder in (("originals", originals), ("A", recon_a), ("B", recon_b)):
        if not Path(folder).is_dir():
            raise DatasetError(f"{label} folder {folder} does not exist")
    refs, idx_a, idx_b = _index(originals), _index(recon_a), _index(recon_b)
    if not refs:
        raise DatasetError(f"{originals}: no images ({', '.join(IMAGE_SUFFIXES)})")
    pairs: list[PairInputs] = []
    missing: list[str] = []
    for key in sorted(refs):
        cands = [refs[key], idx_a.get(key, []), idx_b.get(key, [])]
        for label, c in zip(("originals", "A", "B"), cands):
            if len(c) > 1:
                raise DatasetError(
                    f"{key}: ambiguous {label} files {[str(p) for p in c]}; keep one per stem"
                )
        if not cands[1] or not cands[2]:
            missing.append(key)
            continue
        pairs.append(PairInputs(key, cands[0][0], cands[1][0], cands[2][0]))
    if missing and missing_type == "error":
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{len(missing)} of {len(refs)} originals have no reconstruction in both folders ({shown}); "
            "reconstructions are matched by relative path without suffix; pass --missing-type skip to judge the rest"
        )
    return pairs, missing


# --------------------------------------------------------------------------- judging into a dataset


@dataclass
class DatasetSummary:
    """What one run did: counts by label, token usage, and the pairs that failed or were skipped.

    ``failures`` (judge calls that failed) and ``skipped`` (pairs whose images could not be read or
    judged) map a pair id to its reason; neither is written to the dataset, so a rerun retries
    them. :attr:`ok` is False when there are any.
    """

    total: int = 0
    already_done: int = 0
    judged: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    cached: int = 0
    votes: int = 0
    abstain_votes: int = 0
    retried_abstentions: int = 0  # rows of unusable answers removed to be asked again
    repaired_bytes: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Pairs whose judge call failed in this run (retried by the next run)."""
        return len(self.failures)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.skipped

    def line(self) -> str:
        lab = ", ".join(f"{k}={self.labels.get(k, 0)}" for k in ("A", "B", "abstain"))
        text = (
            f"{self.judged} judged now, {self.already_done} already present, {self.total} pairs in total; "
            f"labels {lab}; {self.votes} votes of which {self.abstain_votes} abstained; "
            f"{self.cached} answered from cache"
        )
        if self.usage:
            text += "; tokens " + ", ".join(f"{k}={v}" for k, v in sorted(self.usage.items()))
        if self.failures:
            text += f"; {self.failed} pairs FAILED (not written; rerun to retry them)"
        if self.skipped:
            text += f"; {len(self.skipped)} pairs skipped (bad input)"
        return text

    def problems(self, limit: int = 20) -> list[str]:
        """One line per failed or skipped pair (the first ``limit``), for the end of a run."""
        lines = [f"failed {k}: {v}" for k, v in self.failures.items()]
        lines += [f"skipped {k}: {v}" for k, v in self.skipped.items()]
        if len(lines) > limit:
            lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
        return lines


def _load_pair(pair: PairInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ref, a, b = (load_image(p).tensor for p in (pair.reference, pair.a, pair.b))
    if not (ref.shape == a.shape == b.shape):
        raise DatasetError(
            f"{pair.pair_id}: sizes differ (reference {tuple(ref.shape[1:])}, A {tuple(a.shape[1:])}, "
            f"B {tuple(b.shape[1:])}); reconstructions must match the original's size"
        )
    return ref, a, b


def _reason(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, VLICError) else f"{exc.__class__.__name__}: {exc}"
    return text[:300]


def make_row(
    pair: PairInputs, judgment: Judgment, judge_name: str, judge_config: dict[str, Any]
) -> PreferenceRow:
    return PreferenceRow(
        pair_id=pair.pair_id,
        reference=str(pair.reference.resolve()),
        a=str(pair.a.resolve()),
        b=str(pair.b.resolve()),
        reference_sha256=file_sha256(pair.reference),
        a_sha256=file_sha256(pair.a),
        b_sha256=file_sha256(pair.b),
        label=judgment.choice,
        judgment=judgment,
        judge=judge_name,
        judge_config=judge_config,
        seeds=pair.seeds,
        bitstream=str(pair.bitstream.resolve()) if pair.bitstream is not None else None,
        codes=str(pair.codes.resolve()) if pair.codes is not None else None,
    )


async def _judge_all(
    pairs: Iterable[PairInputs],
    judge: Judge,
    writer: PreferenceWriter,
    summary: DatasetSummary,
    concurrency: int,
    on_row: Callable[[PreferenceRow | None], None],
    prepare: Callable[[PairInputs], Awaitable[PairInputs]] | None,
) -> None:
    sem = asyncio.Semaphore(max(1, concurrency))
    judge_config = writer.judge_config
    stop = asyncio.Event()  # set by the first Ctrl-C: finish the pairs in flight, start no more

    async def one(pair: PairInputs) -> None:
        async with sem:
            if stop.is_set():
                return
            try:
                if prepare is not None:
                    pair = await prepare(pair)
                ref, a, b = await asyncio.to_thread(_load_pair, pair)
                judgment = await judge.acompare(ref, a, b)
            except (JudgeError, MetricUnavailableError):
                raise  # misconfiguration: every pair would fail the same way
            except (
                VLICError,
                OSError,
                ValueError,
                RuntimeError,
                AssertionError,
                MemoryError,
            ) as exc:
                # one bad item (unreadable image, size mismatch, too small for a metric, too
                # large for memory): reported and skipped, the run goes on
                summary.skipped[pair.pair_id] = _reason(exc)
                on_row(None)
                return
            add_usage(summary.usage, judgment.usage)
            if judgment.failed:  # not a label: left out of the file, retried by the next run
                summary.failures[pair.pair_id] = judgment.error or "failed"
                on_row(None)
                return
            row = await asyncio.to_thread(make_row, pair, judgment, judge.name, judge_config)
        writer.append(row)  # on the event-loop thread: rows never interleave
        summary.judged += 1
        summary.labels[row.label.value] += 1
        summary.cached += judgment.cached
        summary.votes += len(judgment.votes)
        summary.abstain_votes += sum(v.choice is Choice.ABSTAIN for v in judgment.votes)
        on_row(row)

    tasks = [asyncio.create_task(one(p)) for p in pairs]
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if stop.is_set():  # second Ctrl-C: abort the pairs in flight too
            for t in tasks:
                t.cancel()
            return
        stop.set()
        print(
            "\nCtrl-C: finishing the pairs in flight (Ctrl-C again to abort them)", file=sys.stderr
        )

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        handler = True
    except (RuntimeError, NotImplementedError, ValueError):  # not the main thread
        handler = False
    try:
        for fut in asyncio.as_completed(tasks):
            await fut
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        if handler:
            loop.remove_signal_handler(signal.SIGINT)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if stop.is_set():
        raise KeyboardInterrupt


def build_preference_dataset(
    pairs: Sequence[PairInputs],
    judge: Judge,
    output: str | os.PathLike[str],
    judge_config: dict[str, Any],
    concurrency: int = 4,
    progress: bool = True,
    prepare: Callable[[PairInputs], Awaitable[PairInputs]] | None = None,
    retry_abstentions: bool = False,
) -> DatasetSummary:
    """Judge every pair not yet in ``output`` and append one row per pair (resumable).

    ``prepare`` may create a pair's image files just before it is judged (codec decodes), so an
    interrupted run does not redo work for pairs already in the file. ``retry_abstentions``: ask
    again the pairs whose row is an abstention from an unusable answer (see the module doc;
    default False: every row already written is final).
    """
    from tqdm.auto import tqdm

    dups = [k for k, n in Counter(p.pair_id for p in pairs).items() if n > 1]
    if dups:
        raise DatasetError(f"pair id {dups[0]!r} occurs twice; pair ids must be unique")
    summary = DatasetSummary(total=len(pairs))
    with PreferenceWriter(output, judge_config, retry_abstentions) as writer:
        summary.repaired_bytes = writer.repaired_bytes
        summary.retried_abstentions = len(writer.retried)
        todo = [p for p in pairs if p.pair_id not in writer.done]
        summary.already_done = len(pairs) - len(todo)
        with tqdm(
            total=len(pairs),
            initial=summary.already_done,
            unit="pair",
            desc="judging",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:

            def on_row(row: PreferenceRow | None) -> None:
                bar.update(1)
                bad = summary.failed + len(summary.skipped)
                bar.set_postfix_str(
                    f"A={summary.labels['A']} B={summary.labels['B']} abstain={summary.labels['abstain']}"
                    + (f" failed={bad}" if bad else ""),
                    refresh=False,
                )

            asyncio.run(_judge_all(todo, judge, writer, summary, concurrency, on_row, prepare))
    return summary
