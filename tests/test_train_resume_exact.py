"""An interrupted and resumed run equals an uninterrupted one, step for step; logs are kept."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from compressai_vlic_lightning.cli import main as train_main
from conftest import fit_args

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "train" / "tiny_stage1.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fit(root: Path, steps: int, *extra: str) -> None:
    # 3 batches per epoch: the resume point (step 4) is in the middle of the second epoch, and
    # validation every 2 steps must not shift the training's random streams.
    train_main(
        [
            *fit_args(CONFIG, root=root, steps=steps, every=2),
            "--trainer.limit_val_batches",
            "1",
            "--trainer.callbacks.save_top_k",
            "-1",
            # Fixed weight norms are read again when a run resumes (as FlowMo does), so a resumed
            # run with them is not bit-exact; see docs/training.md.
            "--model.init_args.fix_initial_norms",
            "false",
            "--model.init_args.perceptual_type",
            "ms_ssim",
            "--model.init_args.val_decode_batches",
            "0",
            "--data.init_args.batch_size",
            "4",
            "--data.init_args.samples_per_epoch",
            "12",
            *extra,
        ]
    )


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _losses(root: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for row in _rows(root):
        if row.get("train/loss"):
            step = int(row["step"])
            assert step not in out, f"step {step} logged twice"
            out[step] = float(row["train/loss"])
    return out


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run_and_keeps_its_logs(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _fit(whole, 8)
    # The "killed" run got to step 6; its last kept checkpoint is the one of step 4.
    _fit(cut, 6)
    checkpoint = cut / "checkpoints" / "epoch=1-step=4.ckpt"
    assert checkpoint.is_file()
    before = _losses(cut)
    assert len(before) == 6
    _fit(cut, 8, "--ckpt_path", str(checkpoint))

    expected, got = _losses(whole), _losses(cut)
    assert len(expected) == 8
    assert {s: got[s] for s in before if s < 4} == {s: before[s] for s in before if s < 4}
    assert got == expected  # every step's loss, bit for bit (rows before step 4 were kept)
    a = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for key in ("state_dict", "ema_state_dict"):
        assert a[key].keys() == b[key].keys()
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}[{name}] differs"
    from compressai_vlic_lightning import Stage1Module

    loaded = Stage1Module.load_from_checkpoint(whole / "checkpoints" / "last.ckpt")
    for name, tensor in loaded.state_dict().items():  # through the weights-only loader
        assert torch.equal(tensor, a["state_dict"][name])
    val = [r for r in _rows(cut) if r.get("val/flow")]
    assert [r["step"] for r in val] == [r["step"] for r in _rows(whole) if r.get("val/flow")]


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    import pytorch_lightning as pl
    from compressai_vlic_lightning.checkpointing import SafeCheckpointIO, use_safe_checkpoint_io

    io = SafeCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, target)
    before = target.read_bytes()
    written: list[Path] = []
    real_save = torch.save

    def killed_mid_write(obj, f, *args, **kwargs):
        written.append(Path(f))
        Path(f).write_bytes(before[: len(before) // 3])  # part of the new file, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(4)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    # the new file was written beside the target (same file system: an atomic rename), not in
    # the temporary folder, and the kill left the previous checkpoint as it was
    assert written[0].parent == target.parent and written[0] != target
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    use_safe_checkpoint_io(trainer)  # what every module of the package does at setup
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
