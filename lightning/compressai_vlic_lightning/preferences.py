"""Preference pairs for Diffusion-DPO: an online buffer judged in the background, or an offline set.

Online (VLIC): the model decodes each code twice with different noise; the two decodes and the
original go to the judge in a background thread while training continues on the current buffer.
Every ``refresh`` swaps the newest judged pairs in (VLIC: ~2,560 pairs every 250 steps).

Durability (why two JSONL files): a candidate is written to ``pending.jsonl`` (with its PNGs)
*before* it is judged, and its judgment is appended to ``judged.jsonl`` as soon as it arrives,
each line flushed and fsync'ed. After a crash, :meth:`PreferenceBuffer.restore` reloads every
judged pair and re-queues the pending ones; with the judge cache those re-submissions cost
nothing when their answer had been received. Images are stored as 8-bit PNG and the judge sees
exactly those 8-bit pixels, so a resubmitted pair has the same cache key.

Codes: each pair keeps the FSQ indices it was decoded from (``PairCodes``, a JSON file beside its
PNGs, or the ``codes`` file of an offline dataset row), and training conditions winner and loser on
exactly that code, not on a re-encoding of the original: with a trainable encoder (or a crop of a
tiled decode) a re-encoding is another code, and the pair was never a sample given it.

Best-of-N (``candidate_type="best_worst"``): each code is decoded N times, the N decodes are ranked
by the judge's soft reward (:func:`compressai_vlic.judges.rank.rank_images`, N (N - 1) calls) and
the pair is the best (winner) and the worst (loser) of N; a ranking that cannot separate them is
an abstention. All N decodes are persisted before ranking, and ``judged.jsonl`` records which two
were kept.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from compressai_vlic.errors import DatasetError, JudgeError
from compressai_vlic.evaluation.codec_pairs import PairCodes
from compressai_vlic.image_io import quantize_uint8
from compressai_vlic.jsonl import JsonlAppender, read_jsonl
from compressai_vlic.judges.rank import Ranking, best_worst_pair, rank_images
from compressai_vlic.judges.types import Choice, Judge, JudgeRequest, Judgment, add_usage
from compressai_vlic.options import check_option

log = logging.getLogger(__name__)

WorkerType = Literal["thread", "inline"]
CallType = Literal["async", "batch"]
CandidateType = Literal["pair", "best_worst"]


def to_float(images: Tensor) -> Tensor:
    """uint8 -> float in [0, 1]; the single conversion used for judging and training."""
    return images.float() / 255.0


@dataclass
class PreferencePair:
    """Original and two decodes of its code (uint8, (3, H, W)), with the judge's verdict."""

    pair_id: str
    reference: Tensor
    a: Tensor
    b: Tensor
    step: int = 0
    round: int = 0
    judgment: Judgment | None = None
    codes: PairCodes | None = None  # the code both decodes were sampled from (one tile)
    extra: list[Tensor] = field(default_factory=list)  # decodes 3..N of a best-of-N set

    @property
    def candidates(self) -> list[Tensor]:
        """Every decode of the code (``a``, ``b`` and the extra ones of a best-of-N set)."""
        return [self.a, self.b, *self.extra]

    @property
    def usable(self) -> bool:
        return self.judgment is not None and not self.judgment.abstained

    def winner_loser(self) -> tuple[Tensor, Tensor]:
        if not self.usable:
            raise JudgeError(f"pair {self.pair_id} has no winner (abstained or not judged)")
        assert self.judgment is not None
        return (self.a, self.b) if self.judgment.choice is Choice.A else (self.b, self.a)


def prob_winner(judgment: Judgment | None) -> float | None:
    """The judge's probability that the chosen winner is the better image (None if not given)."""
    if judgment is None or judgment.prob_a is None or judgment.abstained:
        return None
    p = float(judgment.prob_a)
    return p if judgment.choice is Choice.A else 1.0 - p


@dataclass
class PreferenceBatch:
    """Float (N, 3, H, W) originals, winners and losers; ``steps`` = when each pair was made.

    ``indices`` (N, K, d) are the FSQ indices each pair was decoded from, valid where
    ``has_codes`` is True (pairs without stored codes, e.g. external reconstructions, are
    conditioned on the encoding of their original). ``prob_winner`` (N,) is the judge's P(winner
    better), NaN where the judge gave no probability.
    """

    reference: Tensor
    winner: Tensor
    loser: Tensor
    steps: Tensor
    indices: Tensor | None = None
    has_codes: Tensor | None = None
    prob_winner: Tensor | None = None

    def __len__(self) -> int:
        return int(self.reference.shape[0])


def _batch_codes(
    codes: Sequence[Tensor | None],
) -> tuple[Tensor | None, Tensor | None]:
    """Stack per-pair (K, d) indices; missing ones become zeros with ``has_codes`` False."""
    known = [c for c in codes if c is not None]
    if not known:
        return None, None
    shape = known[0].shape
    if any(c.shape != shape for c in known):
        raise DatasetError(
            f"pairs carry codes of different shapes ({sorted({tuple(c.shape) for c in known})})"
        )
    zeros = torch.zeros(shape, dtype=torch.long)
    indices = torch.stack([c.long() if c is not None else zeros for c in codes])
    return indices, torch.tensor([c is not None for c in codes], dtype=torch.bool)


def _probs(values: Sequence[float | None]) -> Tensor:
    return torch.tensor([float("nan") if v is None else v for v in values], dtype=torch.float32)


@dataclass
class BufferJudgeStats:
    """The preference buffer's judge health since the previous refresh (rates are None until
    something was judged); the per-judge call counters are ``openai_judge.JudgeStats``."""

    judged: int = 0
    abstained: int = 0
    disagreed: int = 0
    cached: int = 0
    pending: int = 0
    buffer_size: int = 0
    total_judged: int = 0
    latency_s: float = 0.0
    failed: int = 0  # calls that got no answer (counted in ``abstained`` too: no label)
    total_tokens: int = 0  # token usage of every judge call so far (as the backends report it)

    @property
    def abstain_rate(self) -> float | None:
        return self.abstained / self.judged if self.judged else None

    @property
    def disagreement_rate(self) -> float | None:
        return self.disagreed / self.judged if self.judged else None


def votes_disagree(judgment: Judgment) -> bool:
    """True when the judgment's decisive votes point to both images (ensemble/order/unanimity)."""
    choices = {v.choice for v in judgment.votes if v.choice is not Choice.ABSTAIN}
    return len(choices) > 1


def _save_png(image: Tensor, path: Path) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(path)


def _load_png(path: Path) -> Tensor:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def ranked_judgment(ranking: Ranking) -> Judgment:
    """The verdict on the (best, worst) pair of a ranking, best shown as A.

    ``score`` is the reward gap; no gap (e.g. every call abstained) is an abstention, and a
    ranking whose every call failed is a failure (not a label, asked again after a resume).
    """
    best, worst = best_worst_pair(ranking)
    gap = ranking.rewards[best] - ranking.rewards[worst]
    calls = ranking.judgments
    usage: dict[str, int] = {}
    for j in calls:
        add_usage(usage, j.usage)
    failed = bool(calls) and ranking.n_failed == len(calls)
    rewards = ", ".join(f"{ranking.names[i]}={ranking.rewards[i]:+.3f}" for i in ranking.order)
    return Judgment(
        score=gap,
        choice=Choice.A if gap > 0 else Choice.ABSTAIN,
        rationale=f"best-of-{len(ranking.names)} rewards: {rewards}",
        backend=f"rank/{calls[0].backend}" if calls else "rank",
        model=calls[0].model if calls else "",
        prompt_version=calls[0].prompt_version if calls else "",
        error="every ranking call failed" if failed else None,
        cached=bool(calls) and all(j.cached for j in calls),
        status="failed" if failed else None,
        usage=usage or None,
    )


class PreferenceBuffer:
    """Online, durable buffer of judged pairs.

    ``submit`` persists candidates and queues them for the judge; ``refresh`` makes the newest
    ``capacity`` usable pairs the training set; ``sample`` draws a training batch from it.
    """

    def __init__(
        self,
        judge: Judge,
        directory: str | Path,
        capacity: int = 2560,
        worker_type: WorkerType = "thread",
        judge_batch_size: int = 8,
        cache_path: str | Path | None = None,
        keep_rounds: int | None = None,
        call_type: CallType = "async",
        candidate_type: CandidateType = "pair",
    ) -> None:
        check_option("call_type", call_type, CallType, JudgeError)
        check_option("candidate_type", candidate_type, CandidateType, JudgeError)
        check_option("worker_type", worker_type, WorkerType, JudgeError)
        if capacity <= 0:
            raise JudgeError(f"buffer capacity must be positive, got {capacity}")
        from compressai_vlic.judges.cache import cached

        self.judge = cached(judge, cache_path)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "pairs").mkdir(exist_ok=True)
        self.capacity = capacity
        self.worker_type = worker_type
        self.judge_batch_size = max(1, judge_batch_size)
        self.call_type = call_type
        self.candidate_type = candidate_type
        self.keep_rounds = keep_rounds
        self._pending_fh = JsonlAppender(self.directory / "pending.jsonl")
        self._judged_fh = JsonlAppender(self.directory / "judged.jsonl")
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._pairs: dict[str, PreferencePair] = {}  # every pair whose images are in memory
        self._judged_order: list[str] = []  # pair ids in judging order (usable or not)
        self._active: list[PreferencePair] = []
        self._stats = BufferJudgeStats()
        self._error: BaseException | None = None
        self._queue: queue.Queue[PreferencePair | None] = queue.Queue()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        if worker_type == "thread":
            self._thread = threading.Thread(target=self._worker, name="vlic-judge", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ persistence
    @property
    def pending_path(self) -> Path:
        return self.directory / "pending.jsonl"

    @property
    def judged_path(self) -> Path:
        return self.directory / "judged.jsonl"

    def _pair_paths(self, pair: PreferencePair) -> dict[str, Path]:
        folder = self.directory / "pairs" / f"r{pair.round:05d}"
        keys = ["reference", "a", "b"] + [f"c{k}" for k in range(2, 2 + len(pair.extra))]
        return {k: folder / f"{pair.pair_id}_{k}.png" for k in keys}

    def _codes_path(self, pair: PreferencePair) -> Path:
        return self.directory / "pairs" / f"r{pair.round:05d}" / f"{pair.pair_id}_codes.json"

    def restore(self) -> int:
        """Reload judged pairs and re-queue pending ones (after a restart); returns pairs reloaded."""
        pending = {r["pair_id"]: r for r in read_jsonl(self.pending_path)}
        judged = {r["pair_id"]: r for r in read_jsonl(self.judged_path)}
        restored = 0
        requeue: list[PreferencePair] = []
        ordered = [i for i in judged if i in pending] + [i for i in pending if i not in judged]
        for pair_id in ordered:
            rec = pending[pair_id]
            if pair_id in self._known:
                continue
            paths = {k: Path(v) for k, v in rec["paths"].items()}
            paths = {k: (p if p.is_absolute() else self.directory / p) for k, p in paths.items()}
            if not all(p.is_file() for p in paths.values()):
                if pair_id in judged:
                    log.info(
                        "pair %s: images pruned; its judgment is kept in judged.jsonl", pair_id
                    )
                else:
                    log.warning("pair %s: images missing, dropped", pair_id)
                self._known.add(pair_id)
                continue
            codes = None
            if rec.get("codes"):
                codes_path = Path(rec["codes"])
                codes_path = codes_path if codes_path.is_absolute() else self.directory / codes_path
                codes = PairCodes.load(codes_path)
            pair = PreferencePair(
                pair_id=pair_id,
                reference=_load_png(paths["reference"]),
                a=_load_png(paths["a"]),
                b=_load_png(paths["b"]),
                step=int(rec["step"]),
                round=int(rec["round"]),
                codes=codes,
                extra=[_load_png(paths[f"c{k}"]) for k in range(2, len(paths) - 1)],
            )
            self._known.add(pair_id)
            if pair_id in judged:
                pair.judgment = Judgment.from_dict(judged[pair_id]["judgment"])
                if "ranked" in judged[pair_id]:  # a best-of-N set: keep the pair it became
                    best, worst = judged[pair_id]["ranked"]
                    cands = pair.candidates
                    pair.a, pair.b, pair.extra = cands[best], cands[worst], []
                with self._lock:
                    self._pairs[pair_id] = pair
                    self._judged_order.append(pair_id)
                restored += 1
            else:
                requeue.append(pair)
        for pair in requeue:
            with self._lock:
                self._pairs[pair.pair_id] = pair
            self._enqueue(pair)
        log.info(
            "preference buffer restored %d judged pairs, re-queued %d pending",
            restored,
            len(requeue),
        )
        return restored

    # ------------------------------------------------------------------ producer side
    def known(self, pair_id: str) -> bool:
        """Whether a pair id was already submitted (a resumed run must not submit it again)."""
        return pair_id in self._known

    def submit(
        self,
        pair_ids: Sequence[str],
        reference: Tensor,
        a: Tensor,
        b: Tensor,
        step: int,
        round: int,
        codes: Sequence[PairCodes] | None = None,
        extra: Sequence[Tensor] = (),
    ) -> int:
        """Persist candidate pairs (float or uint8 (N, 3, H, W)) and queue them; returns how many.

        Args:
            codes: per pair, the code both decodes were sampled from (kept for training).
            extra: more decodes of the same codes, each (N, 3, H, W), for
                ``candidate_type="best_worst"`` (the pair becomes the best and worst of them all).
        """
        self.raise_if_failed()
        if codes is not None and len(codes) != len(pair_ids):
            raise JudgeError(f"{len(codes)} codes for {len(pair_ids)} pairs")
        if extra and self.candidate_type != "best_worst":
            raise JudgeError(
                f"{2 + len(extra)} candidates per code need candidate_type='best_worst'"
            )
        ref_u8, a_u8, b_u8, *extra_u8 = (
            x if x.dtype == torch.uint8 else quantize_uint8(x) for x in (reference, a, b, *extra)
        )
        added = 0
        for i, pair_id in enumerate(pair_ids):
            if pair_id in self._known:
                continue
            pair = PreferencePair(
                pair_id,
                ref_u8[i].cpu(),
                a_u8[i].cpu(),
                b_u8[i].cpu(),
                step,
                round,
                codes=codes[i] if codes is not None else None,
                extra=[x[i].cpu() for x in extra_u8],
            )
            paths = self._pair_paths(pair)
            next(iter(paths.values())).parent.mkdir(parents=True, exist_ok=True)
            images = [pair.reference, *pair.candidates]  # in the order of _pair_paths
            for image, path in zip(images, paths.values(), strict=True):
                _save_png(image, path)
            rel = {k: str(p.relative_to(self.directory)) for k, p in paths.items()}
            record: dict[str, Any] = {
                "pair_id": pair_id,
                "step": step,
                "round": round,
                "paths": rel,
                "time": time.time(),
            }
            if pair.codes is not None:
                codes_path = self._codes_path(pair)
                pair.codes.save(codes_path)
                record["codes"] = str(codes_path.relative_to(self.directory))
            self._pending_fh.write(record)
            self._known.add(pair_id)
            with self._lock:
                self._pairs[pair_id] = pair
            self._enqueue(pair)
            added += 1
        return added

    def _enqueue(self, pair: PreferencePair) -> None:
        with self._lock:
            self._in_flight += 1
            self._stats.pending = self._in_flight
        if self.worker_type == "inline":
            self._judge_batch([pair])
        else:
            self._queue.put(pair)

    # ------------------------------------------------------------------ judging
    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.judge_batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                self._judge_batch(batch)
            except BaseException as exc:  # surfaced in the training loop by raise_if_failed()
                log.error("judge worker failed: %s", exc)
                with self._lock:
                    self._error = exc
                    self._in_flight -= sum(p.judgment is None for p in batch)
                    self._idle.notify_all()

    def _judge_batch(self, batch: list[PreferencePair]) -> None:
        """Judge a batch; each verdict is persisted the moment it arrives.

        ``call_type="async"`` runs the pairs concurrently through ``acompare`` (the cache stores
        each answer as it completes, so a kill loses at most the calls still in flight);
        a judge without ``acompare`` is called one pair at a time; ``"batch"`` uses
        ``compare_batch`` (for judges that batch on a GPU).
        """
        if self.candidate_type == "best_worst":
            for pair in batch:  # one set at a time, each verdict persisted at once
                self._rank(pair)
            return
        requests = [
            JudgeRequest(to_float(p.reference), to_float(p.a), to_float(p.b), p.pair_id)
            for p in batch
        ]
        if self.call_type == "async" and callable(getattr(self.judge, "acompare", None)):
            asyncio.run(self._judge_async(batch, requests))
            return
        if self.call_type == "async" and callable(getattr(self.judge, "compare", None)):
            # A judge with no coroutine: one pair at a time, each verdict persisted at once,
            # so a kill loses at most the call in progress.
            for pair, request in zip(batch, requests, strict=True):
                start = time.perf_counter()
                judgment = self.judge.compare(request.reference, request.a, request.b)
                self._record(pair, judgment, time.perf_counter() - start)
            return
        start = time.perf_counter()
        judgments = self.judge.compare_batch(requests)
        if len(judgments) != len(batch):
            raise JudgeError(f"judge returned {len(judgments)} judgments for {len(batch)} pairs")
        elapsed = (time.perf_counter() - start) / len(batch)
        for pair, judgment in zip(batch, judgments, strict=True):
            self._record(pair, judgment, elapsed)

    def _rank(self, pair: PreferencePair) -> None:
        """Best-of-N: rank the set by soft reward; the pair becomes (best, worst) of it."""
        start = time.perf_counter()
        cands = pair.candidates
        ranking = rank_images(self.judge, [to_float(c) for c in cands], to_float(pair.reference))
        best, worst = best_worst_pair(ranking)
        pair.a, pair.b, pair.extra = cands[best], cands[worst], []
        self._record(pair, ranked_judgment(ranking), time.perf_counter() - start, (best, worst))

    async def _judge_async(self, batch: list[PreferencePair], requests: list[JudgeRequest]) -> None:
        async def one(pair: PreferencePair, request: JudgeRequest) -> None:
            start = time.perf_counter()
            judgment = await self.judge.acompare(request.reference, request.a, request.b)
            self._record(pair, judgment, time.perf_counter() - start)

        await asyncio.gather(*(one(p, r) for p, r in zip(batch, requests, strict=True)))

    def _record(
        self,
        pair: PreferencePair,
        judgment: Judgment,
        latency_s: float,
        ranked: tuple[int, int] | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "pair_id": pair.pair_id,
            "judgment": judgment.to_dict(),
            "time": time.time(),
        }
        if ranked is not None:
            record["ranked"] = list(ranked)  # (best, worst) indices among the persisted decodes
        with self._lock:
            self._judged_fh.write(record)
            pair.judgment = judgment
            self._judged_order.append(pair.pair_id)
            self._stats.judged += 1
            self._stats.total_judged += 1
            self._stats.abstained += int(judgment.abstained)
            self._stats.failed += int(judgment.failed)
            self._stats.total_tokens += int((judgment.usage or {}).get("total_tokens", 0))
            self._stats.disagreed += int(votes_disagree(judgment))
            self._stats.cached += int(judgment.cached)
            self._stats.latency_s += latency_s
            self._in_flight -= 1
            self._stats.pending = self._in_flight
            self._idle.notify_all()

    def raise_if_failed(self) -> None:
        """Re-raise a judge failure from the background thread in the caller's thread."""
        if self._error is not None:
            raise JudgeError(f"the judge failed in the background: {self._error}") from self._error

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued pair is judged; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight > 0 and self._error is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(timeout=remaining if remaining is not None else 1.0)
        self.raise_if_failed()
        return True

    # ------------------------------------------------------------------ consumer side
    def refresh(self) -> BufferJudgeStats:
        """Make the newest ``capacity`` usable pairs the training set; returns and resets stats."""
        self.raise_if_failed()
        with self._lock:
            usable = [
                self._pairs[i]
                for i in self._judged_order
                if i in self._pairs and self._pairs[i].usable
            ]
            self._active = usable[-self.capacity :]
            stats = self._stats
            stats.buffer_size = len(self._active)
            stats.pending = self._in_flight
            self._stats = BufferJudgeStats(
                total_judged=stats.total_judged,
                total_tokens=stats.total_tokens,
                pending=self._in_flight,
            )
        self._prune()
        return stats

    def _prune(self) -> None:
        """Free memory (and, with ``keep_rounds``, disk) of judged pairs no longer in the buffer."""
        with self._lock:
            active = {p.pair_id for p in self._active}
            for pair_id in list(self._pairs):
                pair = self._pairs[pair_id]
                if pair.judgment is not None and pair_id not in active:
                    del self._pairs[pair_id]
            if self.keep_rounds is None or not self._active:
                return
            newest = max(p.round for p in self._active)
            in_use = {p.round for p in self._pairs.values()}
        for folder in (self.directory / "pairs").glob("r*"):
            r = int(folder.name[1:])
            if r <= newest - self.keep_rounds and r not in in_use:
                shutil.rmtree(folder, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._active)

    @property
    def active_pairs(self) -> list[PreferencePair]:
        return list(self._active)

    def staleness(self, step: int) -> float | None:
        """Mean number of steps since the pairs in use were generated."""
        if not self._active:
            return None
        return float(np.mean([step - p.step for p in self._active]))

    def sample(self, n: int, generator: torch.Generator | None = None) -> PreferenceBatch | None:
        """``n`` pairs drawn uniformly (with replacement when the buffer is smaller)."""
        active = self._active
        if not active:
            return None
        if len(active) >= n:
            idx = torch.randperm(len(active), generator=generator)[:n]
        else:
            idx = torch.randint(0, len(active), (n,), generator=generator)
        return stack_pairs([active[int(i)] for i in idx])

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=60)
        for fh in (self._pending_fh, self._judged_fh):
            if not fh.closed:
                fh.close()
        closer = getattr(self.judge, "close", None)
        if callable(closer):
            try:
                closer()
            except Exception:  # closing must never mask the training outcome
                log.warning("judge close() failed", exc_info=True)


def _tile_indices(codes: PairCodes | None) -> Tensor | None:
    """The (K, d) indices of a single-tile pair (online pairs are one training-size tile)."""
    if codes is None:
        return None
    if codes.num_tiles != 1:
        raise DatasetError(f"an online pair must be one tile, its code has {codes.num_tiles}")
    return codes.indices[0]


def stack_pairs(pairs: Iterable[PreferencePair]) -> PreferenceBatch:
    """Usable pairs -> a float batch with winners and losers sorted out."""
    refs, wins, loses, steps, codes, probs = [], [], [], [], [], []
    for pair in pairs:
        w, lose = pair.winner_loser()
        refs.append(pair.reference)
        wins.append(w)
        loses.append(lose)
        steps.append(pair.step)
        codes.append(_tile_indices(pair.codes))
        probs.append(prob_winner(pair.judgment))
    indices, has_codes = _batch_codes(codes)
    return PreferenceBatch(
        reference=to_float(torch.stack(refs)),
        winner=to_float(torch.stack(wins)),
        loser=to_float(torch.stack(loses)),
        steps=torch.tensor(steps, dtype=torch.long),
        indices=indices,
        has_codes=has_codes,
        prob_winner=_probs(probs),
    )


@dataclass
class OfflinePair:
    """One usable offline pair (uint8 (3, H, W) images) with its code and P(winner), if known."""

    reference: Tensor
    winner: Tensor
    loser: Tensor
    codes: PairCodes | None = None
    prob_winner: float | None = None


@dataclass
class OfflinePreferences:
    """Pairs from a ``compressai-vlic judge`` dataset, at the training resolution.

    A codec pair (its row has ``codes``) is trained on one whole tile that lies inside the image,
    conditioned on that tile's stored code; with ``--crop-type tile`` (the default of
    ``compressai-vlic judge``) the pair *is* that tile and its decodes are exact samples of the
    decoder given the code. Rows without codes (reconstructions from folders) are cropped at a
    random window, the same in the original and both reconstructions, and conditioned on the
    encoding of the original's crop. Abstentions are dropped (and counted in ``abstained``).
    """

    pairs: list[OfflinePair]
    crop_size: int
    abstained: int = 0
    disagreed: int = 0
    total: int = 0
    _order: list[int] = field(default_factory=list)

    @classmethod
    def from_dataset(
        cls,
        path: str | Path,
        crop_size: int,
        num_tokens: int | None = None,
        fsq_levels: Sequence[int] | None = None,
    ) -> OfflinePreferences:
        """Read a dataset; ``num_tokens``/``fsq_levels`` (the model's) check stored codes fit it."""
        from compressai_vlic.image_io import load_image
        from compressai_vlic.judges.dataset import read_preference_dataset

        rows = read_preference_dataset(path)
        base = Path(path).parent
        pairs: list[OfflinePair] = []
        abstained = disagreed = 0

        def resolve(p: str) -> Path:
            return Path(p) if Path(p).is_absolute() else base / p

        def read(p: str) -> Tensor:
            return quantize_uint8(load_image(resolve(p)).tensor)

        for row in rows:
            disagreed += int(votes_disagree(row.judgment))
            if row.label is Choice.ABSTAIN:
                abstained += 1
                continue
            ref, a, b = read(row.reference), read(row.a), read(row.b)
            if not (ref.shape == a.shape == b.shape):
                raise DatasetError(f"{path}: pair {row.pair_id} has images of different sizes")
            codes = None
            if row.codes:
                codes = PairCodes.load(resolve(row.codes))
                if num_tokens is not None and fsq_levels is not None:
                    codes.check_model(crop_size, num_tokens, fsq_levels)
                elif codes.tile != crop_size:
                    raise DatasetError(
                        f"{path}: pair {row.pair_id}: its codes are for {codes.tile}-px tiles, "
                        f"training uses {crop_size}-px tiles"
                    )
                if (codes.height, codes.width) != tuple(ref.shape[1:]):
                    raise DatasetError(
                        f"{path}: pair {row.pair_id}: codes describe a {codes.height}x{codes.width} "
                        f"image, the images are {ref.shape[1]}x{ref.shape[2]}"
                    )
                if not codes.whole_tiles():
                    raise DatasetError(
                        f"{path}: pair {row.pair_id}: no tile lies wholly inside the image"
                    )
            w, lose = (a, b) if row.label is Choice.A else (b, a)
            pairs.append(OfflinePair(ref, w, lose, codes, prob_winner(row.judgment)))
        if not pairs:
            raise DatasetError(
                f"{path}: no usable pairs ({len(rows)} rows, {abstained} abstentions); judge more pairs"
            )
        return cls(
            pairs=pairs,
            crop_size=crop_size,
            abstained=abstained,
            disagreed=disagreed,
            total=len(rows),
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def _window(
        self, pair: OfflinePair, generator: torch.Generator | None
    ) -> tuple[tuple[slice, slice, slice], Tensor | None]:
        """Where to cut the pair, and the code of that window (None: encode the crop)."""
        size = self.crop_size
        if pair.codes is not None:
            whole = pair.codes.whole_tiles()
            k = whole[int(torch.randint(0, len(whole), (), generator=generator))]
            rows, cols = pair.codes.window(k)
            return (slice(None), rows, cols), pair.codes.indices[k]
        _, h, wd = pair.reference.shape
        if min(h, wd) < size:
            raise DatasetError(f"preference images of {h}x{wd} are smaller than the crop {size}")
        top = int(torch.randint(0, h - size + 1, (), generator=generator))
        left = int(torch.randint(0, wd - size + 1, (), generator=generator))
        return (slice(None), slice(top, top + size), slice(left, left + size)), None

    def sample(self, n: int, generator: torch.Generator | None = None) -> PreferenceBatch:
        idx = torch.randint(0, len(self.pairs), (n,), generator=generator)
        refs, wins, loses, codes, probs = [], [], [], [], []
        for i in idx.tolist():
            pair = self.pairs[i]
            window, tile_codes = self._window(pair, generator)
            refs.append(pair.reference[window])
            wins.append(pair.winner[window])
            loses.append(pair.loser[window])
            codes.append(tile_codes)
            probs.append(pair.prob_winner)
        indices, has_codes = _batch_codes(codes)
        return PreferenceBatch(
            reference=to_float(torch.stack(refs)),
            winner=to_float(torch.stack(wins)),
            loser=to_float(torch.stack(loses)),
            steps=torch.zeros(n, dtype=torch.long),
            indices=indices,
            has_codes=has_codes,
            prob_winner=_probs(probs),
        )
