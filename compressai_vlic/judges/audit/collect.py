"""Ask a judge every pair in both orders, and derive what a composite judge would answer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.audit.readers import HumanPair, _load
from compressai_vlic.judges.compose import (
    combine_orders,
    describe_judge,
    majority,
    sample_members,
)
from compressai_vlic.judges.types import Judge, Judgment


@dataclass
class RawAnswers:
    """Every answer of one judge: ``ab[r][i]`` on (A, B), ``ba[r][i]`` on (B, A) as returned."""

    judge: str
    config: dict[str, Any]
    ab: list[list[Judgment]]
    ba: list[list[Judgment]]
    seconds: float


def collect(
    judge: Judge,
    pairs: Sequence[HumanPair],
    repeats: int = 1,
    batch_size: int = 16,
    progress: bool = True,
) -> RawAnswers:
    """Ask ``judge`` every pair in both orders, ``repeats`` independent times."""
    from tqdm.auto import tqdm

    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    members = sample_members(judge, repeats)
    ab: list[list[Judgment]] = [[] for _ in range(repeats)]
    ba: list[list[Judgment]] = [[] for _ in range(repeats)]
    t0 = time.perf_counter()
    with tqdm(
        total=len(pairs),
        unit="pair",
        desc=f"audit {judge.name}",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(pairs), batch_size):
            reqs = [_load(p) for p in pairs[start : start + batch_size]]
            for r, member in enumerate(members):
                out = member.compare_batch(reqs + [q.swapped() for q in reqs])
                ab[r].extend(out[: len(reqs)])
                ba[r].extend(out[len(reqs) :])
            bar.update(len(reqs))
    return RawAnswers(judge.name, describe_judge(judge), ab, ba, time.perf_counter() - t0)


def derive(
    raw: RawAnswers,
    order_type: str,
    votes: int,
    combine_type: str = "sum",
    majority_type: str = "plurality",
) -> list[Judgment]:
    """The judgments a composite judge (order_type, votes) would give, from the raw answers."""
    if votes > len(raw.ab):
        raise ConfigError(f"{votes} votes need --repeats >= {votes} (have {len(raw.ab)})")
    n = len(raw.ab[0])
    if order_type == "symmetrize":
        per_vote = [
            [combine_orders(raw.ab[r][i], raw.ba[r][i], combine_type) for i in range(n)]
            for r in range(votes)
        ]
    else:
        per_vote = [raw.ab[r] for r in range(votes)]
    if votes == 1:
        return list(per_vote[0])
    return [majority([per_vote[r][i] for r in range(votes)], majority_type) for i in range(n)]
