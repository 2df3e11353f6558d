"""Judge throughput benchmark: pairs/second against a loopback server with a fixed latency.

With latency L and C requests in flight, no client can exceed C / L pairs per second; the table
puts the measured rate next to that bound so the client's own overhead (PNG encoding, HTTP, JSON)
is visible. The cached path measures a :class:`CachedJudge` answering every pair from SQLite.
Used by ``benchmarks/judge_bench.py``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from compressai_vlic.extras import require
from compressai_vlic.judges.cache import CachedJudge, JudgmentCache
from compressai_vlic.judges.openai_judge import OpenAIJudge
from compressai_vlic.judges.types import Choice, JudgeRequest
from compressai_vlic.testing.loopback_server import ServerScript, run_server


@dataclass
class JudgeBenchRow:
    path: str  # "http" or "cached"
    concurrency: int
    pairs: int
    seconds: float
    pairs_per_s: float
    bound_pairs_per_s: float | None  # concurrency / latency (http only)
    judged: int
    abstained: int
    server_max_in_flight: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench_pairs(n: int, size: int = 64) -> list[JudgeRequest]:
    """n distinct pairs from a real photo (scikit-image), A less noisy than B."""
    skimage_data = require("skimage.data", "demo", "The judge benchmark's photo")

    photo = torch.from_numpy(skimage_data.astronaut()[:size, 100 : 100 + size].copy())
    ref = photo.permute(2, 0, 1).float() / 255.0
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        a = (ref + 0.02 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        b = (ref + 0.15 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        out.append(JudgeRequest(ref, a, b, pair_id=str(i)))
    return out


def run_judge_bench(
    concurrencies: tuple[int, ...] = (1, 8, 32, 64),
    latency_s: float = 0.2,
    pairs_per_slot: int = 4,
    min_pairs: int = 16,
    image_size: int = 64,
    prompt_type: str = "ab-choice",
) -> list[JudgeBenchRow]:
    """Measure pairs/s at each concurrency, then the cached path over the largest pair set."""
    rows: list[JudgeBenchRow] = []
    n_max = max(min_pairs, pairs_per_slot * max(concurrencies))
    pairs = bench_pairs(n_max, image_size)
    with run_server(ServerScript(latency_s=latency_s, inspect_images=False)) as server:
        for c in concurrencies:
            n = max(min_pairs, pairs_per_slot * c)
            judge = OpenAIJudge(
                "loopback-vlm",
                base_url=server.base_url,
                api_key_env="",
                prompt_type=prompt_type,
                concurrency=c,
                timeout_s=30.0,
            )
            judge.compare_batch(pairs[: min(c, 4)])  # warm-up: client, connections
            server.set_script(ServerScript(latency_s=latency_s, inspect_images=False))
            start = time.perf_counter()
            out = judge.compare_batch(pairs[:n])
            seconds = time.perf_counter() - start
            judge.close()
            judged = sum(o.choice is not Choice.ABSTAIN for o in out)
            rows.append(
                JudgeBenchRow(
                    "http",
                    c,
                    n,
                    seconds,
                    n / seconds,
                    c / latency_s,
                    judged,
                    n - judged,
                    server.stats()["max_in_flight"],
                )
            )
        with tempfile.TemporaryDirectory() as tmp:
            cache = JudgmentCache(Path(tmp) / "bench.sqlite")
            inner = OpenAIJudge(
                "loopback-vlm",
                base_url=server.base_url,
                api_key_env="",
                prompt_type=prompt_type,
                concurrency=max(concurrencies),
            )
            cached = CachedJudge(inner, cache)
            cached.compare_batch(pairs)  # fill
            start = time.perf_counter()
            out = cached.compare_batch(pairs)
            seconds = time.perf_counter() - start
            assert all(o.cached for o in out)
            judged = sum(o.choice is not Choice.ABSTAIN for o in out)
            rows.append(
                JudgeBenchRow(
                    "cached", 1, len(pairs), seconds, len(pairs) / seconds, None, judged, 0
                )
            )
            cached.close()
    return rows


def format_table(rows: list[JudgeBenchRow], latency_s: float) -> str:
    lines = [
        f"judge throughput, loopback server latency {latency_s * 1000:.0f} ms",
        f"{'path':<7}{'conc.':>6}{'pairs':>7}{'seconds':>9}{'pairs/s':>10}{'bound':>9}"
        f"{'% bound':>9}{'in flight':>11}",
    ]
    for r in rows:
        bound = f"{r.bound_pairs_per_s:.1f}" if r.bound_pairs_per_s else "-"
        frac = f"{100 * r.pairs_per_s / r.bound_pairs_per_s:.0f}%" if r.bound_pairs_per_s else "-"
        flight = str(r.server_max_in_flight) if r.server_max_in_flight is not None else "-"
        lines.append(
            f"{r.path:<7}{r.concurrency:>6}{r.pairs:>7}{r.seconds:>9.2f}{r.pairs_per_s:>10.1f}"
            f"{bound:>9}{frac:>9}{flight:>11}"
        )
    return "\n".join(lines)
