"""Composite judges: VLIC's noise control on top of any judge, plus weighted ensembles.

- order symmetrisation: judge (A, B) and (B, A), map the swapped answer back, add, take the sign;
  a judge that always prefers the first image shown comes out as abstentions;
- self-ensembling: n votes, majority, ties abstain;
- unanimity: every member judge must make the same decision, else abstain (VLIC: VLM + LPIPS);
- weighted ensembles: weighted sum of choices (scale-free) or of scores.

The combination rules are pure functions (:func:`combine_orders`, :func:`majority`,
:func:`unanimous`, :func:`weighted`) shared by the composite judges and by the audit, so the audit
measures exactly what the dataset builder and the trainer use. Abstentions are counted and kept,
never turned into wins, and every composite keeps every raw vote (tagged with ``Vote.source``).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.spec import (
    CombineOrderType,
    ComposeSpec,
    MajorityType,
    WeightedType,
)
from compressai_vlic.judges.types import (
    Choice,
    Judge,
    JudgeRequest,
    Judgment,
    Vote,
    choice_from_score,
)
from compressai_vlic.options import check_option

# --------------------------------------------------------------------------- helpers


def _flip_vote(v: Vote) -> Vote:
    """A vote cast on the swapped request, expressed for the original order."""
    return replace(
        v,
        score=-v.score,
        choice=v.choice.flipped(),
        prob_a=None if v.prob_a is None else 1.0 - v.prob_a,
        order="BA" if v.order == "AB" else "AB",
        expected_score=None if v.expected_score is None else -v.expected_score,
    )


def mapped_back(j: Judgment) -> Judgment:
    """A judgment made on the swapped request (B shown first), expressed for the original order."""
    return replace(
        j,
        score=-j.score,
        choice=j.choice.flipped(),
        prob_a=None if j.prob_a is None else 1.0 - j.prob_a,
        votes=[_flip_vote(v) for v in j.votes],
        expected_score=None if j.expected_score is None else -j.expected_score,
    )


def _tag(votes: list[Vote], prefix: str) -> list[Vote]:
    """Prefix each vote's source with the member that cast it (not twice for a bare backend)."""

    def src(v: Vote) -> str:
        if not v.source:
            return prefix
        return v.source if v.source == prefix else f"{prefix}/{v.source}"

    return [replace(v, source=src(v)) for v in votes]


def failed(j: Judgment) -> bool:
    """A judgment that carries no usable answer at all (call failed, unparseable, refused)."""
    return j.error is not None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _meta(parts: Sequence[Judgment], kind: str) -> dict[str, Any]:
    backends = sorted({p.backend for p in parts if p.backend})
    models = sorted({p.model for p in parts if p.model})
    prompts = sorted({p.prompt_version for p in parts if p.prompt_version})
    return {
        "backend": f"{kind}({','.join(backends)})" if backends else kind,
        "model": ",".join(models),
        "prompt_version": ",".join(prompts),
        "latency_s": float(sum(p.latency_s for p in parts)),
        "cached": bool(parts) and all(p.cached for p in parts),
    }


def _rationale(parts: Sequence[Judgment], labels: Sequence[str], note: str = "") -> str:
    chunks = [f"[{lab}] {p.rationale}" for lab, p in zip(labels, parts) if p.rationale]
    if note:
        chunks.insert(0, note)
    return "\n".join(chunks)


# --------------------------------------------------------------------------- pure combination rules


def combine_orders(
    ab: Judgment, ba: Judgment, combine_type: CombineOrderType = "sum", margin: float = 0.0
) -> Judgment:
    """Combine a judgment of (A, B) with one of (B, A) (``ba`` as returned, NOT yet mapped back).

    ``sum`` (VLIC): add the two scores in the original orientation and take the sign; an order
    that abstained contributes 0, an order without a usable answer makes the pair abstain, and an
    order whose call failed makes the pair fail (``status="failed"``, asked again later).
    ``agree``: both orders must decide the same way. A pure position bias cancels to 0 in both
    rules.
    """
    check_option("combine_type", combine_type, CombineOrderType)
    back = mapped_back(ba)
    parts = [ab, back]
    votes = _tag(ab.votes, "AB") + _tag(back.votes, "BA")
    meta = _meta(parts, "symmetrize")
    errors = [f"{lab}: {p.error}" for lab, p in zip(("AB", "BA"), parts) if failed(p)]
    if errors:
        return Judgment(
            0.0,
            Choice.ABSTAIN,
            None,
            votes,
            _rationale(parts, ("AB", "BA")),
            error="; ".join(errors),
            **meta,
        )
    prob = _mean([ab.prob_a, back.prob_a])
    contrib = [p.score if p.choice is not Choice.ABSTAIN else 0.0 for p in parts]
    score = sum(contrib) / 2.0
    if combine_type == "sum":
        choice = choice_from_score(score, margin)
        note = "" if choice is not Choice.ABSTAIN else "abstain: the two orders cancel"
    else:
        same = ab.choice is not Choice.ABSTAIN and ab.choice is back.choice
        choice = ab.choice if same else Choice.ABSTAIN
        note = (
            ""
            if same
            else f"abstain: orders disagree (AB={ab.choice.value}, BA={back.choice.value})"
        )
        if not same:
            score = 0.0
    return Judgment(
        score,
        choice,
        prob,
        votes,
        _rationale(parts, ("AB", "BA"), note),
        expected_score=_mean([ab.expected_score, back.expected_score]),
        **meta,
    )


def majority(parts: Sequence[Judgment], majority_type: MajorityType = "plurality") -> Judgment:
    """Majority over repeated votes. ``plurality``: more A than B among decided votes wins;
    ``strict``: a choice needs more than half of ALL votes. Ties and unusable answers abstain; a
    vote whose call failed makes the whole judgment fail (``status="failed"``), so a label is
    never made from part of the votes.

    The score is the normalised vote margin (n_A - n_B) / n (0 on abstention), so its sign always
    matches the choice.
    """
    check_option("majority_type", majority_type, MajorityType)
    if not parts:
        raise ConfigError("majority() needs at least one judgment")
    n = len(parts)
    n_a = sum(p.choice is Choice.A for p in parts)
    n_b = sum(p.choice is Choice.B for p in parts)
    if majority_type == "plurality":
        choice = Choice.A if n_a > n_b else Choice.B if n_b > n_a else Choice.ABSTAIN
    else:
        choice = Choice.A if 2 * n_a > n else Choice.B if 2 * n_b > n else Choice.ABSTAIN
    labels = [f"vote{i}" for i in range(n)]
    votes = [v for lab, p in zip(labels, parts) for v in _tag(p.votes, lab)]
    note = f"votes: A={n_a} B={n_b} abstain={n - n_a - n_b}"
    all_failed = all(failed(p) for p in parts)
    error = f"all {n} votes failed: {parts[0].error}" if all_failed else None
    return Judgment(
        (n_a - n_b) / n if choice is not Choice.ABSTAIN else 0.0,
        choice,
        _mean([p.prob_a for p in parts]),
        votes,
        _rationale(parts, labels, note),
        error=error,
        expected_score=_mean([p.expected_score for p in parts]),
        **_meta(parts, "majority"),
    )


def unanimous(parts: Sequence[Judgment], names: Sequence[str]) -> Judgment:
    """Every member must make the same (non-abstaining) decision, else abstain."""
    if not parts:
        raise ConfigError("unanimous() needs at least one judgment")
    votes = [v for name, p in zip(names, parts) for v in _tag(p.votes, name)]
    choices = [p.choice for p in parts]
    agreed = choices[0] is not Choice.ABSTAIN and all(c is choices[0] for c in choices)
    failures = [f"{name}: {p.error}" for name, p in zip(names, parts) if failed(p)]
    if agreed:
        choice, score, note = choices[0], sum(p.score for p in parts) / len(parts), ""
    else:
        detail = ", ".join(f"{n}={c.value}" for n, c in zip(names, choices))
        choice, score, note = Choice.ABSTAIN, 0.0, f"abstain: judges do not agree ({detail})"
    return Judgment(
        score,
        choice,
        _mean([p.prob_a for p in parts]) if agreed else None,
        votes,
        _rationale(parts, names, note),
        error="; ".join(failures) if len(failures) == len(parts) else None,
        **_meta(parts, "unanimous"),
    )


def weighted(
    parts: Sequence[Judgment],
    names: Sequence[str],
    weights: Sequence[float],
    combine_type: WeightedType = "choice",
    margin: float = 0.0,
) -> Judgment:
    """Weighted ensemble. ``choice``: weighted sum of +1 (A) / -1 (B) / 0 (abstain), scale-free;
    ``score``: weighted mean of the members' scores (only meaningful if their scales match).
    Failed members are left out of the normalisation."""
    check_option("combine_type", combine_type, WeightedType)
    votes = [v for name, p in zip(names, parts) for v in _tag(p.votes, name)]
    live = [(p, w) for p, w in zip(parts, weights) if not failed(p)]
    meta = _meta(parts, "weighted")
    if not live:
        errs = "; ".join(f"{n}: {p.error}" for n, p in zip(names, parts))
        return Judgment(0.0, Choice.ABSTAIN, None, votes, "", error=errs, **meta)
    total_w = sum(w for _, w in live)

    def value(p: Judgment) -> float:
        if combine_type == "score":
            return p.score
        return {Choice.A: 1.0, Choice.B: -1.0}.get(p.choice, 0.0)

    score = sum(w * value(p) for p, w in live) / total_w
    probs = [(p.prob_a, w) for p, w in live if p.prob_a is not None]
    prob = sum(q * w for q, w in probs) / sum(w for _, w in probs) if probs else None
    choice = choice_from_score(score, margin)
    return Judgment(score, choice, prob, votes, _rationale(parts, names), **meta)


# --------------------------------------------------------------------------- judge description


def describe_judge(judge: Any) -> dict[str, Any]:
    """A JSON-able description of a judge (what produced a label), without secrets."""
    cfg = getattr(judge, "config", None)
    if callable(cfg):
        cfg = cfg()
    elif cfg is None and callable(getattr(judge, "cache_identity", None)):
        cfg = judge.cache_identity()  # VLM backends: model, prompt version, sampling (no key)
    if hasattr(cfg, "__dataclass_fields__"):
        cfg = asdict(cfg)
    if isinstance(cfg, dict):
        out = {"name": getattr(judge, "name", type(judge).__name__), **cfg}
    else:
        out = {
            "name": getattr(judge, "name", type(judge).__name__),
            "class": type(judge).__qualname__,
        }
    return public_kwargs(out)


def _secret_key(key: str) -> bool:
    """Keys that may hold a secret value (``*_env`` keys name a variable, they hold none)."""
    k = key.lower()
    if k.endswith("_env") or "max_tokens" in k:
        return False
    return any(s in k for s in ("api_key", "apikey", "secret", "token", "password"))


def public_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Judge keywords safe to write into a dataset or report: secret-looking ones dropped, URLs
    without userinfo, query or fragment (where a key may hide: ``?key=...``)."""
    from compressai_vlic.judges.secrets import public_value

    return {k: public_value(v) for k, v in kwargs.items() if not _secret_key(k)}


def sample_members(judge: Judge, n: int) -> list[Judge]:
    """n versions of ``judge`` that give independent samples.

    A backend that samples (a VLM at temperature > 0) exposes ``with_sample_index(i)``, which makes
    the i-th sample a different cache entry; a deterministic judge just repeats itself.
    """
    factory = getattr(judge, "with_sample_index", None)
    if callable(factory):
        return [factory(i) for i in range(n)]
    inner, cache = getattr(judge, "judge", None), getattr(judge, "cache", None)
    if cache is not None and callable(getattr(inner, "with_sample_index", None)):
        # a cache wrapper around a sampling judge: one wrapper per sample, same cache file
        return [type(judge)(inner.with_sample_index(i), cache) for i in range(n)]  # type: ignore[call-arg, union-attr]
    return [judge] * n


def sampling_temperatures(judge: Any) -> list[float]:
    """Sampling temperatures of the backends inside ``judge`` (through caches and composites)."""
    found: list[float] = []
    seen: set[int] = set()

    def visit(j: Any) -> None:
        if j is None or id(j) in seen:
            return
        seen.add(id(j))
        temperature = getattr(j, "temperature", None)
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            found.append(float(temperature))
            return
        for attr in ("judge", "inner"):
            visit(getattr(j, attr, None))
        for member in getattr(j, "judges", None) or ():
            visit(member)

    visit(judge)
    return found


# --------------------------------------------------------------------------- composite judges


class _Composite:
    """Shared plumbing: compare() and acompare() in terms of compare_batch()/members."""

    name: str

    def compare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return self.compare_batch([JudgeRequest(reference, a, b)])[0]

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:  # pragma: no cover
        raise NotImplementedError

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        raise NotImplementedError  # pragma: no cover


class SymmetrizedJudge(_Composite):
    """Judge (A, B) and (B, A) and combine (VLIC noise control 1: cancels position bias)."""

    def __init__(self, inner: Judge, combine_type: CombineOrderType = "sum", margin: float = 0.0):
        check_option("combine_type", combine_type, CombineOrderType)
        self.inner, self.combine_type, self.margin = inner, combine_type, margin
        self.name = f"symmetrize({inner.name})"

    def config(self) -> dict[str, Any]:
        return {
            "kind": "symmetrize",
            "combine_type": self.combine_type,
            "margin": self.margin,
            "inner": describe_judge(self.inner),
        }

    def with_sample_index(self, i: int) -> SymmetrizedJudge:
        return SymmetrizedJudge(
            sample_members(self.inner, i + 1)[i], self.combine_type, self.margin
        )

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        n = len(requests)
        out = self.inner.compare_batch(list(requests) + [r.swapped() for r in requests])
        return [
            combine_orders(out[i], out[n + i], self.combine_type, self.margin) for i in range(n)
        ]

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        ab, ba = await asyncio.gather(
            self.inner.acompare(reference, a, b), self.inner.acompare(reference, b, a)
        )
        return combine_orders(ab, ba, self.combine_type, self.margin)


class SelfEnsembleJudge(_Composite):
    """n votes from the same judge, majority decides, ties abstain (VLIC noise control 2)."""

    def __init__(self, inner: Judge, votes: int = 3, majority_type: MajorityType = "plurality"):
        if votes < 1:
            raise ConfigError(f"votes must be >= 1, got {votes}")
        check_option("majority_type", majority_type, MajorityType)
        self.inner, self.votes, self.majority_type = inner, votes, majority_type
        if votes > 1 and any(t == 0 for t in sampling_temperatures(inner)):
            warnings.warn(
                f"{votes} votes from {inner.name} at temperature 0: greedy decoding repeats the "
                "same answer, so the extra calls are paid for nothing; set a temperature > 0 "
                "(e.g. judge_kwargs.temperature: 1.0) or use votes: 1",
                UserWarning,
                stacklevel=2,
            )
        self.members = sample_members(inner, votes)
        self.name = f"ensemble{votes}({inner.name})"

    def config(self) -> dict[str, Any]:
        return {
            "kind": "self-ensemble",
            "votes": self.votes,
            "majority_type": self.majority_type,
            "inner": describe_judge(self.inner),
        }

    def with_sample_index(self, i: int) -> SelfEnsembleJudge:
        # the i-th ensemble draws samples i*n .. i*n+n-1 of the inner judge
        members = sample_members(self.inner, (i + 1) * self.votes)[i * self.votes :]
        clone = SelfEnsembleJudge.__new__(SelfEnsembleJudge)
        clone.inner, clone.votes, clone.majority_type, clone.members = (
            self.inner,
            self.votes,
            self.majority_type,
            members,
        )
        clone.name = self.name
        return clone

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        n = len(requests)
        if all(m is self.members[0] for m in self.members):
            flat = self.members[0].compare_batch(list(requests) * self.votes)
            per_member = [flat[k * n : (k + 1) * n] for k in range(self.votes)]
        else:
            per_member = [m.compare_batch(list(requests)) for m in self.members]
        return [
            majority([per_member[k][i] for k in range(self.votes)], self.majority_type)
            for i in range(n)
        ]

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        parts = await asyncio.gather(*(m.acompare(reference, a, b) for m in self.members))
        return majority(list(parts), self.majority_type)


class UnanimousJudge(_Composite):
    """All member judges must agree, else abstain (VLIC noise control 3: VLM and LPIPS)."""

    def __init__(self, judges: Sequence[Judge]):
        if len(judges) < 2:
            raise ConfigError("unanimity needs at least two judges")
        self.judges = list(judges)
        self.names = _unique_names(self.judges)
        self.name = f"unanimous({','.join(self.names)})"

    def config(self) -> dict[str, Any]:
        return {"kind": "unanimous", "members": [describe_judge(j) for j in self.judges]}

    def with_sample_index(self, i: int) -> UnanimousJudge:
        return UnanimousJudge([sample_members(j, i + 1)[i] for j in self.judges])

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        per_judge = [j.compare_batch(list(requests)) for j in self.judges]
        return [unanimous([pj[i] for pj in per_judge], self.names) for i in range(len(requests))]

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        parts = await asyncio.gather(*(j.acompare(reference, a, b) for j in self.judges))
        return unanimous(list(parts), self.names)


class WeightedJudge(_Composite):
    """Weighted ensemble of different judges (e.g. 0.7 VLM + 0.3 SSIMULACRA 2)."""

    def __init__(
        self,
        judges: Sequence[Judge],
        weights: Sequence[float],
        combine_type: WeightedType = "choice",
        margin: float = 0.0,
    ):
        if len(judges) != len(weights) or not judges:
            raise ConfigError("weighted ensemble needs one weight per judge")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        check_option("combine_type", combine_type, WeightedType)
        self.judges, self.weights = list(judges), [float(w) for w in weights]
        self.combine_type, self.margin = combine_type, margin
        self.names = _unique_names(self.judges)
        self.name = (
            "weighted(" + ",".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights)) + ")"
        )

    def config(self) -> dict[str, Any]:
        return {
            "kind": "weighted",
            "combine_type": self.combine_type,
            "margin": self.margin,
            "weights": self.weights,
            "members": [describe_judge(j) for j in self.judges],
        }

    def with_sample_index(self, i: int) -> WeightedJudge:
        return WeightedJudge(
            [sample_members(j, i + 1)[i] for j in self.judges],
            self.weights,
            self.combine_type,
            self.margin,
        )

    def compare_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        per_judge = [j.compare_batch(list(requests)) for j in self.judges]
        return [
            weighted(
                [pj[i] for pj in per_judge],
                self.names,
                self.weights,
                self.combine_type,
                self.margin,
            )
            for i in range(len(requests))
        ]

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        parts = await asyncio.gather(*(j.acompare(reference, a, b) for j in self.judges))
        return weighted(list(parts), self.names, self.weights, self.combine_type, self.margin)


def _unique_names(judges: Sequence[Judge]) -> list[str]:
    names: list[str] = []
    for j in judges:
        base, k = j.name, 2
        name = base
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def compose(base: Judge, spec: ComposeSpec, make: Callable[[str], Judge] | None = None) -> Judge:
    """Wrap ``base`` as ``spec`` says.

    Args:
        base: the backend judge.
        spec: the composition.
        make: builds the extra judges named in the spec (default: the factory, no options).
    """
    if make is None:
        from compressai_vlic.judges.factory import make_judge as make
    judge: Judge = base
    if spec.weighted:
        extra = [make(t) for t in spec.weighted]
        judge = WeightedJudge(
            [base, *extra], [spec.base_weight, *spec.weighted.values()], spec.weighted_type
        )
    if spec.order_type == "symmetrize":
        judge = SymmetrizedJudge(judge, spec.combine_type)
    if spec.votes > 1:
        judge = SelfEnsembleJudge(judge, spec.votes, spec.majority_type)
    if spec.unanimous_with:
        judge = UnanimousJudge([judge, *(make(t) for t in spec.unanimous_with)])
    return judge
