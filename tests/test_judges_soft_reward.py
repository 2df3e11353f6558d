"""Soft rewards after reasoning: P(answer) read at the final answer position of a reasoning reply
(OpenAI-compatible logprobs on a real loopback server; a local tiny VLM), the expected score over
the -5..5 tokens, and best-of-N ranking by soft reward (library and `judge rank`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import photo_tensor
from PIL import Image

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.attribute_judge import AttributeJudge
from compressai_vlic.judges.encoding import to_uint8_array
from compressai_vlic.judges.hf_judge import HFJudge
from compressai_vlic.judges.openai_judge import OpenAIJudge
from compressai_vlic.judges.parsing import (
    TokenLogprob,
    answer_token_index,
    prob_a_from_logprobs,
    score_distribution_from_logprobs,
)
from compressai_vlic.judges.rank import best_worst_pair, rank_images, soft_preference
from compressai_vlic.judges.types import Choice, JudgeRequest, Judgment
from compressai_vlic.testing.loopback_server import ServerScript, _judge_images, run_server
from compressai_vlic.testing.tiny_vlm import build_tiny_vlm

SHARP = 3.0


def T(token: str, p: float = 0.9, top: dict[str, float] | None = None) -> TokenLogprob:
    return TokenLogprob(token, math.log(p), {k: math.log(v) for k, v in (top or {}).items()})


# --------------------------------------------------------------------------- parsing


def test_prob_a_comes_from_the_final_answer_token_not_from_letters_around_it():
    reply = [
        T("Image"),
        T(" A", 0.3, {" A": 0.3, " B": 0.7}),
        T(" looks"),
        T(" sharper.\n"),
        T("Answer"),
        T(":"),
        T(" A", 0.8, {" A": 0.8, " B": 0.2}),
        T("\n(Image"),
        T(" B", 0.5, {" A": 0.5, " B": 0.5}),  # a letter after the answer line
        T(" was close.)"),
    ]
    assert answer_token_index(reply) == 6
    assert prob_a_from_logprobs(reply) == pytest.approx(0.8)
    # a bare one-letter reply still reads its letter
    assert prob_a_from_logprobs([T("B", 0.6, {"B": 0.6, "A": 0.4})]) == pytest.approx(0.4)


def test_score_distribution_at_the_score_token():
    # "-" generated: P(-) = 0.5 split over magnitudes by the next token; positives read directly
    reply = [
        T("A is worse.\n"),
        T("Score"),
        T(":"),
        T(" -", 0.5, {" -": 0.5, " 1": 0.3, " 0": 0.2}),
        T("2", 0.75, {"2": 0.75, "4": 0.25}),
    ]
    d = score_distribution_from_logprobs(reply)
    assert d.probs == pytest.approx({-4: 0.125, -2: 0.375, 0: 0.2, 1: 0.3})
    assert d.mass == pytest.approx(1.0)
    assert d.expected == pytest.approx(-4 * 0.125 - 2 * 0.375 + 0.3)
    assert d.prob_a == pytest.approx(0.3 / 0.8)
    # a positive score generated: the "-" branch cannot be read, it is left out and reported
    pos = [T("Score"), T(":"), T(" 3", 0.6, {" 3": 0.6, " 2": 0.2, " -": 0.2})]
    d = score_distribution_from_logprobs(pos)
    assert d.probs == pytest.approx({2: 0.25, 3: 0.75}) and d.mass == pytest.approx(0.8)
    assert score_distribution_from_logprobs([T("no score here")]) is None


# --------------------------------------------------------------------------- loopback server


@pytest.fixture(scope="module")
def server():
    with run_server(ServerScript(reasoning_sharpness=SHARP)) as handle:
        yield handle


@pytest.fixture(scope="module")
def pairs(photos) -> list[JudgeRequest]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for i, name in enumerate(["astronaut", "chelsea", "coffee", "rocket"]):
        ref = photo_tensor(photos[name], crop=(40, 48))[0]
        sa, sb = (0.05, 0.08) if i % 2 else (0.09, 0.04)  # close calls, either side wins
        a = (ref + sa * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        b = (ref + sb * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        out.append(JudgeRequest(ref, a, b, pair_id=name))
    return out


def make(server, **kw) -> OpenAIJudge:
    return OpenAIJudge(
        "loopback", base_url=server.base_url, api_key_env="", timeout_s=5, max_attempts=2, **kw
    )


def server_p_a(r: JudgeRequest) -> tuple[float, float]:
    images = [to_uint8_array(x) for x in (r.reference, r.a, r.b)]
    return _judge_images(images, "closest")


def test_reasoning_prob_is_read_at_the_answer_and_differs_from_one_line(server, pairs):
    one_line = make(server, prompt_type="ab-choice").compare_batch(pairs)
    reasoned = make(server, prompt_type="reason-choice").compare_batch(pairs)
    for r, j1, jr in zip(pairs, one_line, reasoned):
        p, _ = server_p_a(r)
        sharpened = p**SHARP / (p**SHARP + (1 - p) ** SHARP)
        assert j1.prob_a == pytest.approx(p, abs=1e-6)
        assert jr.prob_a == pytest.approx(sharpened, abs=1e-6)  # the answer token's P(A)
        assert abs(jr.prob_a - j1.prob_a) > 0.02  # reasoning changed the soft reward
        assert jr.prob_a != pytest.approx(0.2, abs=1e-3)  # not the decoy letters' P(A)
        assert "Answer:" in jr.rationale and jr.rationale.count("Image") >= 2
        assert jr.choice is (Choice.A if p >= 0.5 else Choice.B)
    assert {j.choice for j in reasoned} == {Choice.A, Choice.B}
    assert server.stats()["log"][-1]["logprobs"] is True


def test_expected_score_over_the_score_tokens(server, pairs):
    judge = make(server, prompt_type="vlic-score", logprobs_type="on", top_logprobs=20)
    for r, j in zip(pairs, judge.compare_batch(pairs)):
        _, score = server_p_a(r)
        w = {v: math.exp(-((v - score) ** 2) / 2) for v in range(-5, 6)}
        if score < 0:  # "-" generated: every value readable
            want = sum(v * q for v, q in w.items()) / sum(w.values())
        else:  # positive generated: the negative branch is not readable
            kept = {v: q for v, q in w.items() if v >= 0}
            want = sum(v * q for v, q in kept.items()) / sum(kept.values())
        assert j.score == score and j.expected_score == pytest.approx(want, abs=1e-6)
        assert j.votes[0].expected_score == j.expected_score
    # a symmetrised judge maps the swapped order's expected score back
    from compressai_vlic.judges.compose import SymmetrizedJudge

    sym = SymmetrizedJudge(judge).compare_batch(pairs[:1])[0]
    assert sym.votes[1].order == "BA" and sym.expected_score is not None


def test_reference_free_question_on_the_server(server, pairs):
    judge = make(server, prompt_type="ab-choice", attribute="contrast", reference=False)
    flat = pairs[0].a * 0.2 + 0.4  # low contrast
    j = judge.compare(None, flat, pairs[0].a)
    assert j.choice is Choice.B and j.prob_a < 0.5
    assert len(server.stats()["log"][-1]["sizes"]) == 2  # the server saw two images only
    with pytest.raises(ConfigError, match="reference=False"):
        make(server, prompt_type="ab-choice").compare(None, pairs[0].a, pairs[0].b)


# --------------------------------------------------------------------------- best-of-N


def test_rank_recovers_the_best_and_worst_of_n(server, photos):
    ref = photo_tensor(photos["coffee"], crop=(40, 40))[0]
    gen = torch.Generator().manual_seed(3)
    sigmas = [0.12, 0.02, 0.2, 0.06]
    decodes = [(ref + s * torch.randn(ref.shape, generator=gen)).clamp(0, 1) for s in sigmas]
    ranking = rank_images(make(server, prompt_type="reason-choice"), decodes, ref)
    assert [sigmas[i] for i in ranking.order] == sorted(sigmas)
    assert best_worst_pair(ranking) == (1, 2) and ranking.n_failed == 0
    assert ranking.rewards[1] > 0 > ranking.rewards[2]
    # reference-free: by contrast, an attribute judge
    levels = [0.5, 1.4, 0.9]
    stims = [((ref - ref.mean()) * k + ref.mean()).clamp(0, 1) for k in levels]
    r2 = rank_images(AttributeJudge("contrast"), stims, None, ["lo", "hi", "mid"])
    assert [r2.names[i] for i in r2.order] == ["hi", "mid", "lo"]
    with pytest.raises(ConfigError, match="at least 2"):
        rank_images(AttributeJudge("contrast"), stims[:1])


def test_soft_preference_of_judgments():
    assert soft_preference(Judgment(1.0, Choice.A, prob_a=0.75)) == pytest.approx(0.5)
    assert soft_preference(Judgment(-2.0, Choice.B, expected_score=-2.5)) == pytest.approx(-0.5)
    assert soft_preference(Judgment(0.0, Choice.ABSTAIN)) == 0.0
    assert soft_preference(Judgment(0.0, Choice.ABSTAIN, status="failed")) is None


def test_judge_rank_command(tmp_path, photos, capsys):
    from compressai_vlic.cli.main import main

    ref = photo_tensor(photos["rocket"], crop=(32, 32))[0]
    for group, levels in {"g1": [0.4, 1.2, 0.8], "g2": [1.0, 0.3]}.items():
        (tmp_path / "cands" / group).mkdir(parents=True)
        for k in levels:
            img = ((ref - ref.mean()) * k + ref.mean()).clamp(0, 1)
            Image.fromarray(to_uint8_array(img)).save(tmp_path / "cands" / group / f"c{k}.png")
    out = tmp_path / "rank.jsonl"
    argv = ["judge", "rank", "--candidates", str(tmp_path / "cands"), "--output", str(out)]
    assert main([*argv, "--judge-type", "rms_contrast"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["group"], r["best"], r["worst"]) for r in rows] == [
        ("g1", "c1.2.png", "c0.4.png"),
        ("g2", "c1.0.png", "c0.3.png"),
    ]
    assert "g1: c1.2.png" in capsys.readouterr().out
    assert main([*argv, "--judge-type", "rms_contrast"]) == 2  # never overwrites unasked


# --------------------------------------------------------------------------- local HF VLM


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm_reason"), seed=0)


def test_hf_reason_reads_the_answer_position_after_the_reasoning(tiny, pairs, monkeypatch):
    judge = HFJudge(str(tiny), prompt_type="reason-choice", decode_type="reason", min_answer_mass=0)
    tok = judge.tokenizer
    head = tok.encode("Image A is sharp.\nAnswer:", add_special_tokens=False)
    tail = tok.encode(" B\nImage A", add_special_tokens=False)
    assert tok.decode(tail[:1]).strip() == "B"
    reply = head + tail
    real_generate = judge.model.generate

    def scripted(**inputs):  # the reasoning reply is scripted; the scoring is the real model
        ids = inputs["input_ids"]
        return torch.cat([ids, torch.tensor([reply] * ids.shape[0])], dim=1)

    monkeypatch.setattr(judge.model, "generate", scripted)
    r = pairs[0]
    j = judge.compare(r.reference, r.a, r.b)
    assert j.choice is Choice.B and j.error is None and "Answer: B" in j.rationale

    inputs = judge._inputs([r])
    prompt = inputs["input_ids"][0]

    def p_a_after(ids: list[int]) -> float:
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        full = torch.cat([prompt, torch.tensor(ids, dtype=prompt.dtype)])[None]
        with torch.inference_mode():
            logits = judge.model(input_ids=full, **extra).logits[0, -1].float()
        lp = torch.log_softmax(logits, -1)
        la = torch.logsumexp(lp[judge.answer_ids["A"]], 0)
        lb = torch.logsumexp(lp[judge.answer_ids["B"]], 0)
        return float(torch.sigmoid(la - lb))

    assert j.prob_a == pytest.approx(p_a_after(head), abs=1e-5)  # the answer position
    assert j.prob_a != pytest.approx(p_a_after(reply[:-1]), abs=1e-4)  # not the last letter
    monkeypatch.setattr(judge.model, "generate", real_generate)
    one_line = HFJudge(str(tiny), min_answer_mass=0).compare(r.reference, r.a, r.b)
    assert abs(one_line.prob_a - j.prob_a) > 1e-4  # reasoning context changes the reward


def test_hf_reason_expected_score(tiny, pairs, monkeypatch):
    judge = HFJudge(str(tiny), prompt_type="vlic-score", decode_type="reason")
    tok = judge.tokenizer
    head = tok.encode("A is closer.\nScore:", add_special_tokens=False)
    reply = head + tok.encode(" 3", add_special_tokens=False)
    monkeypatch.setattr(
        judge.model,
        "generate",
        lambda **inp: torch.cat([inp["input_ids"], torch.tensor([reply])], dim=1),
    )
    r = pairs[1]
    j = judge.compare(r.reference, r.a, r.b)
    assert j.score == 3.0 and j.expected_score is not None
    # by hand: each " v" spelled and scored token by token after the reply's "Score:"
    inputs = judge._inputs([r])
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    prompt = inputs["input_ids"][0].tolist()
    logps = {}
    for v in range(-5, 6):
        ids = tok.encode(f" {v}", add_special_tokens=False)
        total = 0.0
        for k, t in enumerate(ids):
            full = torch.tensor([prompt + head + ids[:k]])
            with torch.inference_mode():
                lp = torch.log_softmax(
                    judge.model(input_ids=full, **extra).logits[0, -1].float(), -1
                )
            total += float(lp[t])
        logps[v] = total
    z = sum(math.exp(x) for x in logps.values())
    want = sum(v * math.exp(x) / z for v, x in logps.items())
    assert j.expected_score == pytest.approx(want, abs=1e-4)
    assert -5 <= j.expected_score <= 5 and 0 <= j.prob_a <= 1


def test_hf_reason_options_are_checked(tiny):
    with pytest.raises(ConfigError, match="decode_type='reason'"):
        HFJudge(str(tiny), prompt_type="reason-choice", decode_type="logits")
    nr = HFJudge(str(tiny), attribute="overall", reference=False, min_answer_mass=0)
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    j = nr.compare(None, img, img.flip(-1))
    assert j.prob_a is not None and ".noref." in j.prompt_version
    assert np.isfinite(j.prob_a)
