"""Composite judges: order symmetrisation, self-ensembling, unanimity, weighted ensembles."""

from __future__ import annotations

import asyncio

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.compose import (
    ComposeSpec,
    SelfEnsembleJudge,
    SymmetrizedJudge,
    UnanimousJudge,
    WeightedJudge,
    combine_orders,
    compose,
    majority,
)
from compressai_vlic.judges.metric_judge import MetricJudge
from compressai_vlic.judges.types import (
    Choice,
    Judge,
    JudgeRequest,
    Judgment,
    Vote,
    choice_from_score,
)


class FakeJudge:
    """Deterministic protocol-level judge: ``rule(reference, a, b) -> score`` (None = failed call)."""

    def __init__(self, rule, name="fake", sample_index=0):
        self.rule, self.name, self.sample_index, self.calls = rule, name, sample_index, 0

    def with_sample_index(self, i):
        return FakeJudge(self.rule, self.name, i)

    def compare(self, reference, a, b) -> Judgment:
        self.calls += 1
        score = self.rule(reference, a, b, self.sample_index)
        if score is None:
            vote = Vote(0.0, Choice.ABSTAIN, raw="", error="HTTP 500")
            return Judgment(
                0.0, Choice.ABSTAIN, votes=[vote], error="HTTP 500", backend="fake", model=self.name
            )
        choice = choice_from_score(score)
        return Judgment(
            score,
            choice,
            votes=[Vote(score, choice, raw=f"{score:+.2f}")],
            backend="fake",
            model=self.name,
        )

    def compare_batch(self, requests):
        return [self.compare(r.reference, r.a, r.b) for r in requests]

    async def acompare(self, reference, a, b):
        return self.compare(reference, a, b)


def always_first(reference, a, b, k):
    return 3.0  # "the first image shown is better", whatever it shows


def closer(reference, a, b, k):
    """An honest judge: prefers the image with the lower mean absolute error."""
    ea, eb = (a - reference).abs().mean().item(), (b - reference).abs().mean().item()
    return float(max(-5, min(5, round((eb - ea) * 200))))


def biased_closer(reference, a, b, k):
    return closer(reference, a, b, k) + 2.0  # honest, plus a position bias of +2


@pytest.fixture(scope="module")
def triplets(photos):
    """(reference, slightly noisy, heavily noisy) crops of real photos."""
    g = torch.Generator().manual_seed(0)
    out = []
    for img in photos.values():
        ref = photo_tensor(img, (48, 48))[0]
        light = (ref + 0.02 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
        heavy = (ref + 0.15 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
        out.append((ref, light, heavy))
    return out


def test_always_first_judge_abstains_after_symmetrisation(triplets):
    raw = FakeJudge(always_first)
    sym = SymmetrizedJudge(raw)
    for ref, light, heavy in triplets:
        assert raw.compare(ref, light, heavy).choice is Choice.A
        assert raw.compare(ref, heavy, light).choice is Choice.A  # pure position bias
        for a, b in ((light, heavy), (heavy, light)):
            j = sym.compare(ref, a, b)
            assert j.choice is Choice.ABSTAIN and j.score == 0.0
            assert [v.order for v in j.votes] == ["AB", "BA"]
            assert [v.choice for v in j.votes] == [Choice.A, Choice.B]  # BA vote mapped back
    # batched and async forms agree
    reqs = [JudgeRequest(r, a, b) for r, a, b in triplets]
    assert all(j.abstained for j in sym.compare_batch(reqs))
    assert asyncio.run(sym.acompare(*triplets[0])).abstained
    # "agree" combination also abstains
    assert SymmetrizedJudge(raw, "agree").compare(*triplets[0]).abstained


def test_symmetrisation_keeps_the_signal_and_removes_the_bias(triplets):
    sym = SymmetrizedJudge(FakeJudge(biased_closer))
    for ref, light, heavy in triplets:
        assert sym.compare(ref, light, heavy).choice is Choice.A
        assert sym.compare(ref, heavy, light).choice is Choice.B


def test_symmetrisation_with_a_failed_order_abstains_with_the_reason(triplets):
    flaky = FakeJudge(
        lambda r, a, b, k: None if a is not r and (a - r).abs().mean() > 0.05 else 4.0
    )
    j = SymmetrizedJudge(flaky).compare(
        *triplets[0]
    )  # (ref, light, heavy): BA order shows heavy first
    assert j.choice is Choice.ABSTAIN
    assert j.error is not None and "BA" in j.error and "HTTP 500" in j.error
    assert len(j.votes) == 2


def test_combine_orders_sum_and_agree():
    def jd(score):
        return Judgment(
            score, choice_from_score(score), votes=[Vote(score, choice_from_score(score))]
        )

    # AB says A strongly (+4), BA (as returned) says its first image (= B) weakly (+1): sum keeps A
    assert combine_orders(jd(4.0), jd(1.0)).choice is Choice.A
    assert combine_orders(jd(4.0), jd(1.0), "agree").choice is Choice.ABSTAIN
    assert combine_orders(jd(4.0), jd(-1.0), "agree").choice is Choice.A
    assert combine_orders(jd(2.0), jd(2.0)).choice is Choice.ABSTAIN
    with pytest.raises(ConfigError):
        combine_orders(jd(1.0), jd(1.0), "mean")


def _j(choice: Choice, error: str | None = None) -> Judgment:
    score = {Choice.A: 1.0, Choice.B: -1.0}.get(choice, 0.0)
    return Judgment(score, choice, votes=[Vote(score, choice, error=error)], error=error)


@pytest.mark.parametrize(
    ("choices", "plurality", "strict"),
    [
        ("AAB", Choice.A, Choice.A),
        ("ABB", Choice.B, Choice.B),
        ("AB", Choice.ABSTAIN, Choice.ABSTAIN),  # tie abstains
        ("AABB", Choice.ABSTAIN, Choice.ABSTAIN),
        ("A--", Choice.A, Choice.ABSTAIN),  # one vote, two abstentions
        ("AB-", Choice.ABSTAIN, Choice.ABSTAIN),
        ("---", Choice.ABSTAIN, Choice.ABSTAIN),
    ],
)
def test_majority_and_ties(choices, plurality, strict):
    parts = [_j({"A": Choice.A, "B": Choice.B, "-": Choice.ABSTAIN}[c]) for c in choices]
    for rule, want in (("plurality", plurality), ("strict", strict)):
        j = majority(parts, rule)
        assert j.choice is want
        assert len(j.votes) == len(choices)  # every vote kept
        assert [v.source for v in j.votes] == [f"vote{i}" for i in range(len(choices))]
        assert (j.score > 0) == (j.choice is Choice.A) and (j.score < 0) == (j.choice is Choice.B)


def test_majority_of_failures_is_an_abstention_with_error():
    j = majority([_j(Choice.ABSTAIN, "timeout")] * 3)
    assert j.choice is Choice.ABSTAIN and j.error is not None and "timeout" in j.error


def test_self_ensemble_uses_independent_samples(triplets):
    # sample k answers A for k in {0, 2}, B for k == 1: majority of 3 is A, of 2 is a tie
    rule = lambda r, a, b, k: 1.0 if k != 1 else -1.0  # noqa: E731
    ens = SelfEnsembleJudge(FakeJudge(rule), votes=3)
    j = ens.compare(*triplets[0])
    assert j.choice is Choice.A and len(j.votes) == 3
    assert "A=2 B=1" in j.rationale
    assert (
        SelfEnsembleJudge(FakeJudge(rule), votes=2).compare(*triplets[0]).choice is Choice.ABSTAIN
    )
    assert asyncio.run(ens.acompare(*triplets[0])).choice is Choice.A
    with pytest.raises(ConfigError):
        SelfEnsembleJudge(FakeJudge(rule), votes=0)


def test_ensemble_of_symmetrized_keeps_every_raw_vote(triplets):
    judge = SelfEnsembleJudge(SymmetrizedJudge(FakeJudge(biased_closer)), votes=3)
    out = judge.compare_batch([JudgeRequest(*t) for t in triplets])
    for j in out:
        assert j.choice is Choice.A
        assert len(j.votes) == 6  # 3 votes x 2 orders
        assert sorted({v.source for v in j.votes}) == sorted(
            f"vote{i}/{o}" for i in range(3) for o in ("AB", "BA")
        )


def test_unanimity_requires_agreement(triplets):
    honest = FakeJudge(closer, "honest")
    contrarian = FakeJudge(lambda r, a, b, k: -closer(r, a, b, k), "contrarian")
    ref, light, heavy = triplets[0]
    agree = UnanimousJudge([honest, FakeJudge(closer, "honest")]).compare(ref, light, heavy)
    assert agree.choice is Choice.A
    assert [v.source for v in agree.votes] == ["honest", "honest#2"]
    disagree = UnanimousJudge([honest, contrarian]).compare(ref, light, heavy)
    assert disagree.choice is Choice.ABSTAIN and disagree.error is None
    assert "do not agree" in disagree.rationale and len(disagree.votes) == 2
    # an abstaining member blocks the decision too
    blocked = UnanimousJudge([honest, FakeJudge(always_first)]).compare_batch(
        [JudgeRequest(ref, heavy, light)]
    )
    assert blocked[0].choice is Choice.ABSTAIN
    with pytest.raises(ConfigError):
        UnanimousJudge([honest])


def test_unanimity_with_a_real_metric_judge(triplets):
    """The VLIC rule 'VLM and LPIPS must agree' with an offline metric in LPIPS's place."""
    judge = UnanimousJudge([SymmetrizedJudge(FakeJudge(biased_closer)), MetricJudge("psnr")])
    for ref, light, heavy in triplets:
        assert judge.compare(ref, light, heavy).choice is Choice.A
        assert judge.compare(ref, heavy, light).choice is Choice.B


def test_weighted_ensemble(triplets):
    ref, light, heavy = triplets[0]
    honest = FakeJudge(closer, "honest")
    contrarian = FakeJudge(lambda r, a, b, k: -closer(r, a, b, k), "contrarian")
    assert (
        WeightedJudge([honest, contrarian], [0.7, 0.3]).compare(ref, light, heavy).choice
        is Choice.A
    )
    assert (
        WeightedJudge([honest, contrarian], [0.3, 0.7]).compare(ref, light, heavy).choice
        is Choice.B
    )
    tie = WeightedJudge([honest, contrarian], [1, 1]).compare(ref, light, heavy)
    assert tie.choice is Choice.ABSTAIN and len(tie.votes) == 2
    # a failed member is left out, not counted as a loss
    failing = FakeJudge(lambda r, a, b, k: None, "down")
    assert (
        WeightedJudge([honest, failing], [0.2, 0.8]).compare(ref, light, heavy).choice is Choice.A
    )
    with pytest.raises(ConfigError):
        WeightedJudge([honest], [-1.0])


def test_metric_judge_margin_abstains_and_orders_agree(triplets):
    ref, light, heavy = triplets[1]
    judge = MetricJudge("psnr")
    j = judge.compare(ref, light, heavy)
    assert j.choice is Choice.A and 0 < j.score < 1 and j.model == "psnr"
    assert judge.compare(ref, heavy, light).choice is Choice.B
    wide = MetricJudge("psnr", margin=100.0)  # no PSNR gap is that large
    w = wide.compare(ref, light, heavy)
    assert w.choice is Choice.ABSTAIN and w.score == 0.0 and "within margin" in w.rationale
    assert SymmetrizedJudge(wide).compare(ref, light, heavy).choice is Choice.ABSTAIN
    assert isinstance(judge, Judge)


def test_compose_spec_builds_vlic_stack(triplets):
    spec = ComposeSpec(order_type="symmetrize", votes=3, unanimous_with=["psnr"])
    judge = compose(FakeJudge(biased_closer, "vlm"), spec)
    assert judge.name == "unanimous(ensemble3(symmetrize(vlm)),psnr)"
    j = judge.compare(*triplets[2])
    assert j.choice is Choice.A and len(j.votes) == 3 * 2 + 1
    cfg = judge.config()
    assert cfg["kind"] == "unanimous" and cfg["members"][0]["inner"]["kind"] == "symmetrize"
    with pytest.raises(ConfigError):
        ComposeSpec(order_type="both")


def test_descriptions_never_carry_secret_values():
    from compressai_vlic.judges.compose import describe_judge, public_kwargs

    class KeyedJudge(FakeJudge):
        def config(self):
            return {
                "model": "m",
                "api_key": "sk-live-123",
                "api_key_env": "MY_KEY",
                "max_tokens": 16,
            }

    d = describe_judge(KeyedJudge(closer, "keyed"))
    assert d == {"name": "keyed", "model": "m", "api_key_env": "MY_KEY", "max_tokens": 16}
    assert "sk-live-123" not in str(describe_judge(SymmetrizedJudge(KeyedJudge(closer, "keyed"))))
    assert public_kwargs({"password": "p", "auth_token": "t", "model": "m"}) == {"model": "m"}


def test_self_ensemble_through_the_cache_keeps_samples_apart(triplets, tmp_path):
    """Each sample of a cached sampling judge is its own cache entry: a rerun repeats every vote
    from the cache instead of collapsing n votes into one cached answer."""
    from compressai_vlic.judges.cache import CachedJudge

    class SamplingJudge(FakeJudge):
        def cache_identity(self):
            return {"backend": "fake", "sample_index": self.sample_index}

        def with_sample_index(self, i):
            return SamplingJudge(self.rule, self.name, i)

    rule = lambda r, a, b, k: 1.0 if k != 1 else -1.0  # noqa: E731
    path = tmp_path / "cache.sqlite"
    first = SelfEnsembleJudge(CachedJudge(SamplingJudge(rule), path), votes=3).compare(*triplets[0])
    assert [v.choice for v in first.votes] == [Choice.A, Choice.B, Choice.A]
    again = SelfEnsembleJudge(CachedJudge(SamplingJudge(rule), path), votes=3)
    out = again.compare(*triplets[0])
    assert out.cached and [v.choice for v in out.votes] == [Choice.A, Choice.B, Choice.A]
    assert all(m.judge.calls == 0 for m in again.members)  # every vote from the cache


def test_votes_at_temperature_zero_warn(tmp_path):
    """Self-ensembling a VLM that decodes greedily repeats one answer: the judge says so."""
    import warnings

    from compressai_vlic.judges.cache import CachedJudge
    from compressai_vlic.judges.openai_judge import OpenAIJudge

    def vlm(temperature):
        return OpenAIJudge(
            model="m", base_url="http://127.0.0.1:9/v1", api_key_env="", temperature=temperature
        )

    with pytest.warns(UserWarning, match="temperature 0"):
        SelfEnsembleJudge(vlm(0.0), votes=3)
    with pytest.warns(UserWarning, match="temperature 0"):  # found through cache and symmetrisation
        compose(
            CachedJudge(vlm(0.0), tmp_path / "c.sqlite"),
            ComposeSpec(order_type="symmetrize", votes=3),
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SelfEnsembleJudge(vlm(0.7), votes=3)  # sampled votes: fine
        SelfEnsembleJudge(vlm(0.0), votes=1)  # one vote: nothing repeated
        SelfEnsembleJudge(FakeJudge(lambda r, a, b, k: 1.0), votes=3)  # no temperature to check


def _voted(choice: Choice, status: str | None = None) -> Judgment:
    score = {Choice.A: 1.0, Choice.B: -1.0}.get(choice, 0.0)
    error = "gave up after 4 attempts: timeout" if status == "failed" else None
    vote = Vote(score, choice, error=error, status=status)  # type: ignore[arg-type]
    return Judgment(score, choice, votes=[vote], error=error)


def test_one_failed_call_fails_the_composite_and_an_abstention_does_not():
    a, failed = _voted(Choice.A), _voted(Choice.ABSTAIN, "failed")
    unusable = Judgment(0.0, Choice.ABSTAIN, votes=[Vote(0.0, Choice.ABSTAIN, error="refused")])
    assert failed.failed and failed.status == "failed" and not a.failed
    assert unusable.status == "abstained" and not unusable.failed
    voted = majority([a, a, failed])  # two A votes, one call without an answer
    assert voted.failed and voted.choice is Choice.ABSTAIN and "timeout" in voted.error
    assert majority([a, a, unusable]).choice is Choice.A
    sym = combine_orders(a, failed)
    assert sym.failed and sym.status == "failed"
    assert combine_orders(a, Judgment(-1.0, Choice.B)).status == "judged"
    restored = Judgment.from_dict(voted.to_dict())
    assert restored.failed and restored.votes[2].failed
    # rows written before statuses existed read back with their status derived from the choice
    old = {k: v for k, v in a.to_dict().items() if k != "status"}
    assert Judgment.from_dict(old).status == "judged"
