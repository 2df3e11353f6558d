"""The literal paper YAMLs train on the CPU with only the depths (and the hardware) changed.

Full width (1088, 17 heads, 256x256 tiles, 4096 + 256 tokens), gradient checkpointing and
gradient accumulation as configured; one block per transformer so that one optimizer step
(two micro-batches) fits in a CPU test. Stage 2 starts from the stage-1 checkpoint written here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from compressai_vlic_lightning.cli import cpu_bf16_is_fast
from compressai_vlic_lightning.cli import main as train_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
DEPTHS = {"encoder_depth": 1, "decoder_depth": 1, "prior_depth": 1}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _common(root: Path) -> list[str]:
    return [
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.max_steps", "1",
        "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
        "--data.init_args.train_dir", str(root.parent / "photos"),
        "--data.init_args.val_dir", str(root.parent / "photos"),
        "--data.init_args.batch_size", "1",
        "--data.init_args.num_workers", "0",
        "--data.init_args.samples_per_epoch", "4",
        # the hardware: bf16 autocast where the CPU has bf16 instructions, else float32 (CPU
        # bf16 kernels without them run 10-25x slower: minutes per step at paper width)
        "--trainer.precision", "bf16-mixed" if cpu_bf16_is_fast() else "32-true",
    ]  # fmt: skip


def _steps(root: Path) -> list[int]:
    with (root / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss") not in ("", None)]
    assert all(torch.isfinite(torch.tensor(float(r["train/loss"]))) for r in rows)
    return sorted({int(r["step"]) for r in rows})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, photos):
    from PIL import Image

    root = tmp_path_factory.mktemp("paper")
    (root / "photos").mkdir()
    for name, img in photos.items():
        Image.fromarray(img).save(root / "photos" / f"{name}.png")
    # LPIPS-VGG is required by the paper configs: a local VGG16 file (random weights, real path)
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, root / "vgg.pth")
    return root


@pytest.fixture(scope="module")
def stage1_run(workdir):
    root = workdir / "stage1"
    args = ["fit", "--config", str(CONFIGS / "paper_q1_stage1.yaml"), *_common(root)]
    args += ["--model.init_args.model_overrides", json.dumps(DEPTHS)]
    args += ["--model.init_args.lpips_weights", str(workdir / "vgg.pth")]
    # One CPU process, 1 step: the freeze (step 200k) is never reached, and DDP's search for
    # unused parameters walks the whole checkpointed graph every step at paper width.
    args += ["--trainer.strategy.init_args.find_unused_parameters", "false"]
    assert train_main(args) == 0
    return root


def ckpt_config_has_flowmo_parts(run: Path) -> bool:
    from compressai_vlic.models.vlic import CONFIG_KEY, config_from_tensor

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    config = config_from_tensor(ckpt["state_dict"][f"model.{CONFIG_KEY}"])
    return config.mup and config.prior_digits == "causal"


@pytest.mark.slow
def test_paper_stage1_yaml_one_step(stage1_run):
    config = yaml.safe_load((stage1_run / "config.yaml").read_text())
    init = config["model"]["init_args"]
    assert init["gradient_checkpointing"] is True and init["quality"] == "1"
    # FlowMo's defaults where VLIC is silent: encoder freeze, fixed norms (muP, causal prior: q1)
    assert init["freeze_encoder_after"] == 200000 and init["fix_initial_norms"] is True
    assert ckpt_config_has_flowmo_parts(stage1_run)
    assert config["trainer"]["accumulate_grad_batches"] == 2
    assert (
        yaml.safe_load((CONFIGS / "paper_q1_stage1.yaml").read_text())["trainer"]["precision"]
        == "bf16-mixed"
    )
    assert _steps(stage1_run) == [0]
    ckpt_path = stage1_run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1
    assert ckpt["state_dict"]["model.encoder.latent_tokens"].shape == (256, 1088)
    assert set(ckpt["callbacks"]["EMA"]) == {"num_updates"}  # averages stored once
    assert "model.encoder.latent_tokens" in ckpt["ema_state_dict"]


@pytest.mark.slow
def test_paper_stage2_yaml_one_step(stage1_run, workdir, photos):
    from test_train_memory import _judged

    dataset = _judged(workdir, photos, size=288)
    root = workdir / "stage2"
    args = ["fit", "--config", str(CONFIGS / "stage2_offline_dataset.yaml"), *_common(root)]
    args += ["--model.init_args.init_from", str(stage1_run / "checkpoints" / "last.ckpt")]
    args += ["--model.init_args.preference_dataset", str(dataset)]
    args += ["--model.init_args.dpo_batch_size", "1"]
    assert train_main(args) == 0
    config = yaml.safe_load((root / "config.yaml").read_text())
    assert config["model"]["init_args"]["gradient_checkpointing"] is True
    assert config["trainer"]["accumulate_grad_batches"] == 2
    assert _steps(root) == [0]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("reference.")]
    assert ckpt["dpo_reference"]["init_from"].endswith("last.ckpt")


@pytest.mark.slow
def test_paper_mode_seeking_yaml_one_step(stage1_run, workdir):
    """FlowMo's optional stage at paper width from the stage-1 checkpoint written above."""
    root = workdir / "mode_seeking"
    args = ["fit", "--config", str(CONFIGS / "paper_q1_mode_seeking.yaml"), *_common(root)]
    args += ["--trainer.strategy", "auto"]  # one CPU process: no DDP
    args += ["--model.init_args.init_from", str(stage1_run / "checkpoints" / "last.ckpt")]
    args += ["--model.init_args.model_overrides", json.dumps(DEPTHS)]
    args += ["--model.init_args.lpips_weights", str(workdir / "vgg.pth")]
    args += ["--model.init_args.sample_steps", "2"]  # 8 in the config; 2 keep the CPU test short
    assert train_main(args) == 0
    config = yaml.safe_load((root / "config.yaml").read_text())
    init = config["model"]["init_args"]
    assert init["freeze_encoder_after"] == 0 and init["perceptual_weight"] == 0.01
    assert init["gradient_checkpointing"] is True and init["fix_initial_norms"] is True
    assert _steps(root) == [0]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    before = torch.load(
        stage1_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    key = "model.encoder.latent_tokens"
    # the run starts from stage 1's averaged (EMA) weights, and its frozen encoder keeps them
    assert torch.equal(ckpt["state_dict"][key], before["ema_state_dict"][key])  # tokens kept
    assert ckpt["state_dict"][key].shape == (256, 1088)
