"""Best-of-N stage-2 candidates: N decodes per code, ranked by soft reward, best vs worst trained."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from compressai_vlic_lightning import Stage2Module
from compressai_vlic_lightning.cli import main as train_main
from compressai_vlic_lightning.preferences import PreferenceBuffer, _load_png, to_float
from conftest import fit_args, photo_tensor

from compressai_vlic.errors import ConfigError, JudgeError
from compressai_vlic.judges import make_judge
from compressai_vlic.judges.rank import best_worst_pair, rank_images
from compressai_vlic.judges.types import Choice, Judgment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


class AbstainingJudge:
    """Never decides: a ranking cannot separate any candidates."""

    name = "abstain"

    def compare(self, reference, a, b):
        return Judgment(0.0, Choice.ABSTAIN)

    def compare_batch(self, requests):
        return [self.compare(r.reference, r.a, r.b) for r in requests]


def _originals(module, photos):
    size = module.model.config.image_size
    return torch.cat(
        [photo_tensor(photos[n], (size, size)) for n in ("astronaut", "coffee", "rocket")]
    )


def test_best_of_three_pairs_the_judges_best_and_worst_decode(tmp_path, photos):
    torch.manual_seed(0)
    judge = make_judge("psnr")
    module = Stage2Module(
        quality="test", judge=judge, candidates=3, candidate_type="best_worst", seed=0
    )
    originals = _originals(module, photos)
    module.buffer = PreferenceBuffer(
        judge, tmp_path / "buf", worker_type="inline", candidate_type="best_worst"
    )
    assert module._make_candidates(originals, tag="s0", step=0, round_=0) == 3
    module.buffer.refresh()
    pending = {r["pair_id"]: r for r in map(json.loads, (tmp_path / "buf/pending.jsonl").open())}
    judged = {r["pair_id"]: r for r in map(json.loads, (tmp_path / "buf/judged.jsonl").open())}
    active = {p.pair_id: p for p in module.buffer.active_pairs}
    assert len(active) == 3
    gaps = []
    for pair_id, rec in pending.items():
        paths = {k: tmp_path / "buf" / v for k, v in rec["paths"].items()}
        assert sorted(paths) == ["a", "b", "c2", "reference"]  # every decode persisted
        cands = [_load_png(paths[k]) for k in ("a", "b", "c2")]
        assert not torch.equal(cands[0], cands[2])  # different noise, different decodes
        direct = rank_images(
            judge, [to_float(c) for c in cands], to_float(_load_png(paths["reference"]))
        )
        best, worst = best_worst_pair(direct)
        assert best != worst and judged[pair_id]["ranked"] == [best, worst]
        winner, loser = active[pair_id].winner_loser()
        assert torch.equal(winner, cands[best]) and torch.equal(loser, cands[worst])
        gaps.append(active[pair_id].judgment.score)
        assert gaps[-1] == pytest.approx(direct.rewards[best] - direct.rewards[worst])
    module.buffer.close()

    # a restarted run keeps the pairs the sets became
    buffer = PreferenceBuffer(
        judge, tmp_path / "buf", worker_type="inline", candidate_type="best_worst"
    )
    assert buffer.restore() == 3
    buffer.refresh()
    for pair in buffer.active_pairs:
        w, lose = pair.winner_loser()
        assert torch.equal(w, active[pair.pair_id].winner_loser()[0])
        assert torch.equal(lose, active[pair.pair_id].winner_loser()[1])
    buffer.close()


def test_best_of_n_abstains_when_the_ranking_cannot_separate_and_bad_options(tmp_path, photos):
    torch.manual_seed(0)
    module = Stage2Module(quality="test", candidates=3, candidate_type="best_worst", seed=0)
    module.buffer = PreferenceBuffer(
        AbstainingJudge(), tmp_path / "buf", worker_type="inline", candidate_type="best_worst"
    )
    module._make_candidates(_originals(module, photos)[:2], tag="s0", step=0, round_=0)
    stats = module.buffer.refresh()
    assert len(module.buffer) == 0 and stats.judged == 2 and stats.abstained == 2
    module.buffer.close()

    with pytest.raises(ConfigError, match="candidates=3"):
        Stage2Module(quality="test", candidates=3)  # a pair has two decodes
    with pytest.raises(ConfigError, match="candidate_type"):
        Stage2Module(quality="test", candidate_type="best_of")
    pairs = PreferenceBuffer(AbstainingJudge(), tmp_path / "pairs", worker_type="inline")
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(JudgeError, match="best_worst"):
        pairs.submit(["p"], x, x, x, step=0, round=0, extra=[x])
    pairs.close()


def test_best_of_n_stage2_fits_from_a_yaml_override(tmp_path):
    override = tmp_path / "best_of_3.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "init_args": {
                        "candidates": 3,
                        "candidate_type": "best_worst",
                        "judge_type": "psnr",
                        "judge_compose": None,
                        "perceptual_weight": 0.0,
                        "buffer_size": 8,
                        "refresh_every": 1,
                        "warmup_pairs": 2,
                        "pairs_per_step": 1,
                        "dpo_batch_size": 2,
                        "judge_worker_type": "inline",
                    }
                },
                "data": {"init_args": {"batch_size": 2, "samples_per_epoch": 8}},
            }
        )
    )
    root = tmp_path / "run"
    steps = 2
    train_main(fit_args(CONFIGS / "tiny_stage2.yaml", override, root=root, steps=steps))
    judged = [json.loads(x) for x in (root / "preferences/judged.jsonl").open()]
    pending = [json.loads(x) for x in (root / "preferences/pending.jsonl").open()]
    assert len(judged) == len(pending) == 2 + steps  # warm-up sets, then one set per step
    assert all(sorted(r["paths"]) == ["a", "b", "c2", "reference"] for r in pending)
    assert all(r["judgment"]["backend"] == "rank/metric" for r in judged)
    with (root / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    dpo = [float(r["train/dpo_loss"]) for r in rows if r.get("train/dpo_loss")]
    assert len(dpo) == steps and np.isfinite(dpo).all()
    assert (root / "checkpoints/last.ckpt").is_file()
