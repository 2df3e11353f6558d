"""DDP with two CPU processes (gloo): both stages run, ranks stay in sync, each rank keeps its pairs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from compressai_vlic_lightning.cli import main
    root = sys.argv[1]
    common = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
              "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.callbacks.every_n_train_steps", "2", "--data.init_args.batch_size", "4"]
    main(["fit", "--config", "configs/train/tiny_stage1.yaml", "--trainer.default_root_dir", root + "/s1",
          "--trainer.logger.init_args.save_dir", root + "/s1", *common])
    main(["fit", "--config", "configs/train/tiny_stage2.yaml", "--trainer.default_root_dir", root + "/s2",
          "--trainer.logger.init_args.save_dir", root + "/s2", "--model.init_from",
          root + "/s1/checkpoints/last.ckpt", "--model.init_args.buffer_size", "8",
          "--model.init_args.warmup_pairs", "4", "--model.init_args.dpo_batch_size", "2",
          "--model.init_args.refresh_every", "1", *common])
    """
)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'lightning'}",
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    for stage in ("s1", "s2"):
        ckpt = torch.load(
            tmp_path / stage / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
        )
        assert ckpt["global_step"] == 2
    for rank in (0, 1):
        judged = tmp_path / "s2" / "preferences" / f"rank{rank}" / "judged.jsonl"
        assert len(judged.read_text().splitlines()) >= 4
