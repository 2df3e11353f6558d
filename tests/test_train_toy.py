"""Toy post-training problem: a judge that always prefers the brighter decode.

Diffusion-DPO on its choices must make bright samples measurably more frequent: the property is
"sample brightness above the median brightness of the model's samples before post-training", so
it holds for half of the samples at the start by construction.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from compressai_vlic_lightning import PhotosDataModule, Stage2Module

from compressai_vlic.judges.types import Choice, Judgment, Vote


class BrighterJudge:
    """Prefers the image with the higher mean intensity (ignores the reference)."""

    name = "brighter"

    def __init__(self) -> None:
        self.calls = 0

    def cache_identity(self) -> dict[str, str]:
        return {"judge": "brighter"}

    def compare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        self.calls += 1
        d = float(a.mean() - b.mean())
        choice = Choice.A if d > 0 else Choice.B if d < 0 else Choice.ABSTAIN
        return Judgment(score=d, choice=choice, votes=[Vote(score=d, choice=choice)], backend="toy")

    def compare_batch(self, requests):
        return [self.compare(r.reference, r.a, r.b) for r in requests]

    async def acompare(self, reference, a, b):
        return self.compare(reference, a, b)


def test_post_training_increases_preferred_property(tmp_path, quiet_cpu_trainer):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pl.seed_everything(0)
        judge = BrighterJudge()
        module = Stage2Module(
            quality="test",
            lr=1e-3,
            beta=100.0,
            weighting_type="uniform",
            lambda_flow=0.1,
            buffer_size=64,
            refresh_every=10,
            warmup_pairs=64,
            dpo_batch_size=16,
            buffer_dir=str(tmp_path / "prefs"),
            judge=judge,
            judge_worker_type="inline",
        )
        data = PhotosDataModule(crop_size=32, batch_size=16, samples_per_epoch=64)
        data.setup("fit")
        originals = torch.cat(list(data.val_dataloader()))

        def sample_brightness() -> torch.Tensor:
            module.model.eval()
            with torch.no_grad():
                indices = module.model.encode(originals).indices
                return torch.cat(
                    [
                        module.model.decode_codes(indices, seed=s).mean(dim=(1, 2, 3))
                        for s in (11, 22, 33)
                    ]
                )

        before = sample_brightness()
        threshold = before.median()
        rate_before = float((before > threshold).float().mean())
        trainer = quiet_cpu_trainer(
            max_steps=20,
            limit_val_batches=0,
        )
        trainer.fit(module, data)
        after = sample_brightness()
        rate_after = float((after > threshold).float().mean())
    finally:
        torch.set_num_threads(n_threads)
    assert rate_before <= 0.5
    assert rate_after >= 0.8, (rate_before, rate_after)
    assert float(after.mean()) > float(before.mean()) + 0.02
    assert float(trainer.callback_metrics["train/implicit_accuracy"]) > 0.5
    # 64 warm-up pairs + 20 steps x ceil(64 / 10) = 7 pairs per step, each judged exactly once
    assert judge.calls == 64 + 20 * 7
