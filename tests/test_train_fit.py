"""Real Trainer.fit of both stages through the CLI and YAML configs, overfitting, export, eval."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from compressai_vlic_lightning import Stage1Module
from compressai_vlic_lightning.cli import main as train_main
from compressai_vlic_lightning.export import export_checkpoint
from conftest import fit_args
from PIL import Image
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "train"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fit(config: str, root: Path, steps: int, *extra: str) -> None:
    train_main([*fit_args(CONFIGS / config, root=root, steps=steps), *extra])


def _metrics(root: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with (root / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                if v not in ("", None):
                    out.setdefault(k, []).append(float(v))
    return out


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    _fit(
        "tiny_stage1.yaml",
        root,
        4,
        "--data.init_args.batch_size",
        "8",
        "--trainer.log_every_n_steps",
        "1",
    )
    return root


def test_stage1_fit_through_cli(stage1_run):
    ckpt = stage1_run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    assert "ema_state_dict" in state and "model._config_json" in state["ema_state_dict"]
    metrics = _metrics(stage1_run)
    for key in ("train/flow", "train/perceptual", "train/bpp_prior", "val/flow", "val/psnr"):
        assert key in metrics, key
    assert (stage1_run / "config.yaml").is_file()


def test_stage2_fit_through_cli_logs_preference_health(stage1_run, tmp_path):
    root = tmp_path / "stage2"
    _fit(
        "tiny_stage2.yaml",
        root,
        4,
        "--model.init_from",
        str(stage1_run / "checkpoints" / "last.ckpt"),
        "--model.init_args.buffer_size",
        "16",
        "--model.init_args.refresh_every",
        "2",
        "--model.init_args.warmup_pairs",
        "8",
        "--model.init_args.dpo_batch_size",
        "4",
        "--data.init_args.batch_size",
        "4",
        "--trainer.log_every_n_steps",
        "1",
    )
    metrics = _metrics(root)
    for key in (
        "train/dpo_loss",
        "train/implicit_accuracy",
        "train/reward_margin",
        "train/flow",
        "judge/abstain_rate",
        "judge/disagreement_rate",
        "buffer/staleness",
        "buffer/size",
    ):
        assert key in metrics, key
    judged = (root / "preferences" / "judged.jsonl").read_text().splitlines()
    pending = (root / "preferences" / "pending.jsonl").read_text().splitlines()
    assert len(judged) == len(pending) >= 8  # everything submitted was judged by the end
    assert {json.loads(x)["pair_id"] for x in judged} == {json.loads(x)["pair_id"] for x in pending}
    ckpt = root / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    # the frozen reference is not stored: the checkpoint names the stage-1 file it comes from
    assert not any(k.startswith("reference.") for k in state["state_dict"])
    assert state["dpo_reference"]["init_from"] == str(stage1_run / "checkpoints" / "last.ckpt")


def test_fixed_batch_overfit_lowers_stage1_loss(photos, quiet_cpu_trainer):
    from conftest import photo_tensor

    torch.manual_seed(0)
    module = Stage1Module(quality="test", lr=3e-3, perceptual_type="ms_ssim", perceptual_weight=0.2)
    size = module.model.config.image_size
    batch = torch.cat(
        [
            photo_tensor(photos[n], (size, size))
            for n in ("astronaut", "chelsea", "coffee", "rocket")
        ]
    )

    def fixed_loss() -> float:
        torch.manual_seed(123)  # same t, noise and code dropout at every evaluation
        module.train()
        with torch.no_grad():
            return float(module.compute_losses(batch)["loss"])

    before = fixed_loss()
    loader = DataLoader([batch[i] for i in range(4)] * 10, batch_size=4, shuffle=False)
    trainer = quiet_cpu_trainer(
        max_steps=40,
    )
    trainer.fit(module, loader)
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)


def test_export_feeds_compressai_eval_model_and_update_model(stage1_run, tmp_path, photos):
    out = tmp_path / "vlic-tiny.pth.tar"
    result = export_checkpoint(stage1_run / "checkpoints" / "last.ckpt", out)
    assert (
        result.path == out and result.config_name == "vlic-tiny"
    )  # tiny_stage1.yaml: the shipped codec
    sd = torch.load(out, map_location="cpu", weights_only=True)
    assert "_config_json" in sd and not any(k.startswith(("model.", "reference.")) for k in sd)
    images = tmp_path / "images"
    images.mkdir()
    crop = photos["astronaut"][100:272, 150:322]
    Image.fromarray(crop).save(images / "astronaut.png")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'lightning'}"}

    def compressai_tool(module: str, *args: str) -> subprocess.CompletedProcess:
        run = [sys.executable, "-m", f"compressai.utils.{module}", *args]
        proc = subprocess.run(
            run, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    proc = compressai_tool("eval_model", "checkpoint", str(images), "-a", "vlic", "-p", str(out))
    results = json.loads(proc.stdout[proc.stdout.index("{") :])["results"]
    assert results["bpp"][0] > 0 and results["psnr-rgb"][0] > 5
    compressai_tool("update_model", "--architecture", "vlic", str(out), "-d", str(tmp_path))
    assert list(tmp_path.glob("vlic-tiny-*.pth.tar"))


def test_export_takes_ema_weights_by_default(stage1_run, tmp_path):
    ckpt_path = stage1_run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    ema = export_checkpoint(ckpt_path, tmp_path / "ema.pth.tar").path
    raw = export_checkpoint(ckpt_path, tmp_path / "raw.pth.tar", weights_type="raw").path
    sd_ema = torch.load(ema, weights_only=True)
    sd_raw = torch.load(raw, weights_only=True)
    key = next(k for k, v in sd_raw.items() if v.is_floating_point() and "decoder" in k)
    assert torch.equal(sd_ema[key], ckpt["ema_state_dict"][f"model.{key}"])
    assert torch.equal(sd_raw[key], ckpt["state_dict"][f"model.{key}"])
    assert not torch.equal(sd_ema[key], sd_raw[key])
    assert torch.equal(
        sd_ema["_config_json"], sd_raw["_config_json"]
    )  # the config is never averaged


def test_rate_weight_lets_the_rate_shape_the_encoder(photos):
    from compressai_vlic_lightning.stage1 import straight_through_bits
    from conftest import photo_tensor

    torch.manual_seed(0)
    module = Stage1Module(quality="test", perceptual_type="none", rate_weight=1.0)
    size = module.model.config.image_size
    x = photo_tensor(photos["coffee"], (size, size))
    enc = module.model.encode(x)
    bits = straight_through_bits(module.model, enc.codes, enc.indices)
    assert torch.allclose(bits, module.model.token_nll_bits(enc.indices), rtol=1e-4)
    bits.sum().backward()
    grads = [p.grad for p in module.model.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(
        p.grad is None for p in module.model.prior.parameters()
    )  # prior trained by its own NLL
    assert "bpp_rate_term" in module.compute_losses(x)


def test_encoder_freezes_after_n_steps_and_the_rest_keeps_training(photos, quiet_cpu_trainer):
    from conftest import photo_tensor

    torch.manual_seed(0)
    module = Stage1Module(quality="test", lr=3e-3, perceptual_type="none", freeze_encoder_after=3)
    assert module.hparams.betas == (0.9, 0.95) and module.hparams.t_sampler == "fat_lognormal"
    size = module.model.config.image_size
    batch = torch.cat([photo_tensor(photos[n], (size, size)) for n in ("astronaut", "coffee")])
    loader = DataLoader([batch[i] for i in range(2)] * 8, batch_size=2, shuffle=False)
    snapshots = {}

    class Snapshot(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshots[trainer.global_step] = {
                part: [p.detach().clone() for p in getattr(pl_module.model, part).parameters()]
                for part in ("encoder", "decoder")
            }

    trainer = quiet_cpu_trainer(max_steps=6, callbacks=[Snapshot()])
    trainer.fit(module, loader)

    def moved(part: str, a: int, b: int) -> bool:
        return any(not torch.equal(x, y) for x, y in zip(snapshots[a][part], snapshots[b][part]))

    assert moved("encoder", 0, 3) and moved("decoder", 0, 3)  # both train before step 3
    assert not moved("encoder", 3, 5) and moved("decoder", 3, 5)  # then only the decoder
    assert module.encoder_frozen
    with pytest.raises(Exception, match="t_sampler"):
        Stage1Module(quality="test", perceptual_type="none", t_sampler="uniform")


def test_export_shipped_writes_half_precision_weights_and_a_checked_card(stage1_run, tmp_path):
    import json

    import safetensors.torch
    from compressai_vlic_lightning.export import export_shipped

    from compressai_vlic.checkpoints import load_vlic
    from compressai_vlic.errors import CheckpointError

    ckpt = stage1_run / "checkpoints" / "last.ckpt"
    path = export_shipped(ckpt, tmp_path, quality="test", card={"steps": 4})
    card = json.loads((tmp_path / "vlic-test.json").read_text())
    state = safetensors.torch.load_file(str(path))
    assert card["steps"] == 4 and card["dtype"] == "float16"
    assert {v.dtype for k, v in state.items() if k != "_config_json"} == {torch.float16}
    from compressai_vlic_lightning.common import read_codec_state_dict

    ema = load_vlic(ckpt, read_codec_state_dict(ckpt, "ema"))  # the float32 weights
    for k, v in ema.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(state[k], v.half()), k
    with pytest.raises(CheckpointError, match="overwrite"):
        export_shipped(ckpt, tmp_path, quality="test")
