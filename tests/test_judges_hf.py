"""Local Hugging Face VLM judge on a tiny random-weight LLaVA saved and reloaded from disk."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.judges.factory import make_judge
from compressai_vlic.judges.hf_judge import HFJudge
from compressai_vlic.judges.types import Choice, JudgeRequest
from compressai_vlic.testing.tiny_vlm import build_tiny_vlm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"), seed=0)


@pytest.fixture(scope="module")
def judge(checkpoint) -> HFJudge:
    # the same call a 7B checkpoint takes: a folder (or hub id) through AutoProcessor/AutoModel
    return make_judge("hf", model=str(checkpoint), min_answer_mass=0.0, batch_size=3)


@pytest.fixture(scope="module")
def requests_(photos) -> list[JudgeRequest]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "astronaut"):
        ref = photo_tensor(photos[name], crop=(48, 64))[0]
        a = (ref + 0.03 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        b = (ref + 0.2 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
        out.append(JudgeRequest(ref, a, b))
    return out


def test_loads_through_auto_classes(judge, checkpoint):
    assert type(judge.model).__name__ == "LlavaForConditionalGeneration"
    assert type(judge.processor).__name__ == "LlavaProcessor"
    assert (checkpoint / "model.safetensors").is_file()
    assert judge.answer_ids["A"] and judge.answer_ids["B"]
    assert set(judge.answer_ids["A"]).isdisjoint(judge.answer_ids["B"])


def test_probabilities_and_batching(judge, requests_):
    batched = judge.compare_batch(requests_)  # batches of 3 and 2, left-padded
    assert len(batched) == len(requests_)
    for j in batched:
        assert j.error is None and j.prob_a is not None
        assert 0.0 <= j.prob_a <= 1.0 and math.isfinite(j.prob_a)
        assert j.score == pytest.approx(2 * j.prob_a - 1)
        assert j.choice in (Choice.A, Choice.B)
        assert j.backend == "hf" and j.prompt_version.startswith("ab-choice.fidelity")
        assert j.votes[0].raw.startswith("P(A)=")
    single = [judge.compare(r.reference, r.a, r.b) for r in requests_]
    for s, b in zip(single, batched):
        assert s.prob_a == pytest.approx(b.prob_a, abs=1e-4)
    # different images give different probabilities: the images reach the model
    assert len({round(j.prob_a, 6) for j in batched}) > 1
    got = asyncio.run(judge.acompare(requests_[0].reference, requests_[0].a, requests_[0].b))
    assert got.prob_a == pytest.approx(batched[0].prob_a, abs=1e-4)


def test_low_answer_mass_abstains(checkpoint, requests_):
    # a random model puts ~2/vocab on "A"/"B": with a real threshold that is not an answer
    strict = HFJudge(str(checkpoint), min_answer_mass=0.5)
    j = strict.compare(requests_[0].reference, requests_[0].a, requests_[0].b)
    assert j.choice is Choice.ABSTAIN and j.prob_a is None
    assert "not answering A or B" in j.error


def test_generate_mode_parses_strictly(checkpoint, requests_):
    gen = HFJudge(
        str(checkpoint), prompt_type="vlic-score", decode_type="generate", max_new_tokens=6
    )
    j = gen.compare(requests_[0].reference, requests_[0].a, requests_[0].b)
    # random weights babble: never a guessed score, always an abstention with the reason
    assert j.choice is Choice.ABSTAIN and j.error and j.rationale == j.votes[0].raw


def test_identity_tells_checkpoints_apart(judge, checkpoint, tmp_path):
    other = build_tiny_vlm(tmp_path / "other", seed=1)
    other_judge = HFJudge(str(other), min_answer_mass=0.0)
    assert judge.cache_identity() != other_judge.cache_identity()
    assert judge.cache_identity() == HFJudge(str(checkpoint), min_answer_mass=0.0).cache_identity()


def test_clear_errors(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="cannot load a VLM"):
        HFJudge(str(tmp_path / "missing"), local_files_only=True)
    with pytest.raises(ConfigError, match="ab-choice"):
        HFJudge(str(checkpoint), prompt_type="vlic-score", decode_type="logits")
    with pytest.raises(ConfigError, match="decode_type"):
        HFJudge(str(checkpoint), decode_type="beam")


def _hub_cache(root, checkpoint, repo_id: str, commit: str):
    """A Hugging Face Hub cache holding ``checkpoint`` as snapshot ``commit`` of ``repo_id``
    (the layout huggingface_hub writes; read offline, nothing is downloaded)."""
    import shutil

    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


def test_hub_identity_includes_the_commit(checkpoint, tmp_path):
    repo_id = "test-org/tiny-vlm"
    c1, c2 = "1" * 40, "2" * 40
    first = HFJudge(
        repo_id,
        min_answer_mass=0.0,
        local_files_only=True,
        cache_dir=str(_hub_cache(tmp_path / "c1", checkpoint, repo_id, c1)),
    )
    second = HFJudge(
        repo_id,
        min_answer_mass=0.0,
        local_files_only=True,
        cache_dir=str(_hub_cache(tmp_path / "c2", checkpoint, repo_id, c2)),
    )
    assert first.cache_identity()["model"] == f"{repo_id}@{c1}"
    assert second.cache_identity()["model"] == f"{repo_id}@{c2}"  # a moved branch: new entries


def test_token_usage_is_counted(checkpoint, judge, requests_):
    for j in judge.compare_batch(requests_[:2]):
        usage = j.usage
        assert usage is not None and usage == j.votes[0].usage
        assert usage["prompt_tokens"] > 3 and usage["completion_tokens"] == 0  # one forward pass
        assert usage["total_tokens"] == usage["prompt_tokens"]
    gen = HFJudge(
        str(checkpoint), prompt_type="vlic-score", decode_type="generate", max_new_tokens=4
    )
    j = gen.compare(requests_[0].reference, requests_[0].a, requests_[0].b)
    assert 1 <= j.usage["completion_tokens"] <= 4
    assert j.usage["total_tokens"] == j.usage["prompt_tokens"] + j.usage["completion_tokens"]
