"""Offline post-training reads a preference dataset written by `compressai-vlic judge`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressai_vlic_lightning import OfflinePreferences, PhotosDataModule, Stage2Module
from PIL import Image

from compressai_vlic.cli.main import main as vlic_main
from compressai_vlic.errors import ConfigError
from compressai_vlic.student import StudentConfig, StudentModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def judged_dataset(tmp_path, photos):
    """Originals, a mildly and a strongly noisy reconstruction of each, judged by PSNR."""
    rng = np.random.default_rng(0)
    folders = {k: tmp_path / k for k in ("orig", "a", "b")}
    for f in folders.values():
        f.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "rocket")):
        img = photos[name][100:164, 100:164].astype(np.float64)
        mild = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        strong = np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8)
        a, b = (mild, strong) if i % 2 == 0 else (strong, mild)  # the better one on both sides
        Image.fromarray(img.astype(np.uint8)).save(folders["orig"] / f"{name}.png")
        Image.fromarray(a).save(folders["a"] / f"{name}.png")
        Image.fromarray(b).save(folders["b"] / f"{name}.png")
    out = tmp_path / "prefs.jsonl"
    code = vlic_main(
        [
            "judge",
            "--originals", str(folders["orig"]),
            "--recon-a", str(folders["a"]),
            "--recon-b", str(folders["b"]),
            "--output", str(out),
            "--judge-type", "psnr",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def _fit_offline(dataset, root, make_trainer, steps: int, **module_args):
    """A few offline Diffusion-DPO steps on the judged dataset; returns the trainer."""
    module = Stage2Module(
        quality="test",
        preference_type="offline",
        preference_dataset=str(dataset),
        dpo_batch_size=4,
        lr=1e-4,
        **module_args,
    )
    trainer = make_trainer(max_steps=steps, limit_val_batches=0, default_root_dir=str(root))
    trainer.fit(module, PhotosDataModule(crop_size=32, batch_size=4, samples_per_epoch=4 * steps))
    return trainer


def test_offline_preferences_from_a_judge_dataset(judged_dataset, tmp_path, quiet_cpu_trainer):
    prefs = OfflinePreferences.from_dataset(judged_dataset, crop_size=32)
    assert len(prefs) == 3 and prefs.abstained == 0
    batch = prefs.sample(6, torch.Generator().manual_seed(0))
    assert batch.winner.shape == (6, 3, 32, 32)
    # PSNR judged: the winner is always the mildly noisy reconstruction, closer to the original
    err_w = (batch.winner - batch.reference).abs().mean(dim=(1, 2, 3))
    err_l = (batch.loser - batch.reference).abs().mean(dim=(1, 2, 3))
    assert bool((err_w < err_l).all())

    trainer = _fit_offline(judged_dataset, tmp_path, quiet_cpu_trainer, steps=2)
    metrics = trainer.callback_metrics
    assert "train/dpo_loss" in metrics and float(metrics["buffer/size"]) == 3
    assert float(metrics["judge/abstain_rate"]) == 0.0
    with pytest.raises(ConfigError, match="preference_dataset"):
        Stage2Module(quality="test", preference_type="offline")


def test_stage2_keeps_stage1_perceptual_term_when_asked(
    judged_dataset, tmp_path, quiet_cpu_trainer
):
    """perceptual_weight adds stage 1's LPIPS on the originals' one-step estimate to the loss."""
    trainer = _fit_offline(
        judged_dataset,
        tmp_path,
        quiet_cpu_trainer,
        steps=1,
        perceptual_weight=0.5,
        perceptual_fallback_type="error",  # real LPIPS weights or a failing test
    )
    assert trainer.lightning_module.perceptual_choice.active == "lpips"
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert m["train/perceptual"] > 0
    expected = m["train/dpo_loss"] + m["train/flow"] + 0.5 * m["train/perceptual"]
    expected += m["train/bpp_prior"]
    assert m["train/loss"] == pytest.approx(expected, rel=1e-4)
    plain = Stage2Module(
        quality="test", preference_type="offline", preference_dataset=str(judged_dataset)
    )
    assert plain.perceptual_choice.active == "none" and not plain._perceptual
    with pytest.raises(ConfigError, match="perceptual_weight"):
        Stage2Module(quality="test", perceptual_weight=-1.0)
    with pytest.raises(ConfigError, match="student_path"):
        Stage2Module(quality="test", perceptual_weight=0.5, perceptual_type="student")
    student = StudentModel(StudentConfig(init_type="random")).save(tmp_path / "student")
    with_student = Stage2Module(
        quality="test", perceptual_weight=0.5, perceptual_type="student", student_path=str(student)
    )
    assert with_student.perceptual_choice.active == "student"
