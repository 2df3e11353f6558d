"""FlowMo's optional mode-seeking stage from YAML: real Trainer.fit, gradients through the chain."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressai_vlic_lightning import ModeSeekingModule
from compressai_vlic_lightning.cli import main as train_main

from compressai_vlic.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_chain_carries_gradients_to_the_decoder_only() -> None:
    torch.manual_seed(0)
    module = ModeSeekingModule(quality="test", perceptual_type="ms_ssim", sample_steps=3)
    x = torch.rand(2, 3, 32, 32)
    enc = module.model.encode(x)
    sample = module.sample_chain(enc.codes.detach())
    assert sample.shape == x.shape
    sample.mean().backward()
    grads = [p.grad for p in module.model.decoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    with pytest.raises(ConfigError, match="sample_steps"):
        ModeSeekingModule(quality="test", perceptual_type="none", sample_steps=0)


def test_tiny_mode_seeking_yaml_fits_and_keeps_the_tokens(tmp_path) -> None:
    root = tmp_path / "ms"
    args = ["fit", "--config", str(CONFIGS / "tiny_mode_seeking.yaml")]
    args += ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"]
    args += ["--trainer.default_root_dir", str(root)]
    args += ["--trainer.logger.init_args.save_dir", str(root)]
    args += [
        "--trainer.callbacks.every_n_train_steps",
        "2",
        "--trainer.enable_progress_bar",
        "false",
    ]
    args += ["--data.init_args.batch_size", "2", "--model.init_args.sample_steps", "2"]
    args += ["--trainer.log_every_n_steps", "1"]
    assert train_main(args) == 0
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert "perceptual_chain" in (root / "metrics.csv").read_text().splitlines()[0].replace(
        "train/", ""
    )
    from compressai_vlic_lightning.common import shipped_state_dict

    shipped = shipped_state_dict("tiny")
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items()}
    enc = [k for k in state if k.startswith("encoder.")]
    dec = [k for k in state if k.startswith("decoder.") and state[k].is_floating_point()]
    assert all(torch.equal(state[k], shipped[k].to(state[k].dtype)) for k in enc)  # frozen
    assert any(not torch.equal(state[k], shipped[k].to(state[k].dtype)) for k in dec)  # trained
    # ... and the preference stage (or this one again) starts from what it wrote.
    again = ModeSeekingModule(
        quality="tiny", perceptual_type="none", init_from=str(root / "checkpoints" / "last.ckpt")
    )
    assert torch.equal(
        again.model.decoder.code_pos, ckpt["ema_state_dict"]["model.decoder.code_pos"]
    )
