"""Memory at paper scale: gradient checkpointing, the planner, checkpoints, accumulated DPO."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressai_vlic_lightning import EMA, Stage1Module, Stage2Module
from compressai_vlic_lightning.ema import EMA_KEY
from compressai_vlic_lightning.memory import (
    SavedTensorCounter,
    measure,
    measure_component,
    plan,
    read_setup,
)
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.models import VLIC
from compressai_vlic.zoo import quality_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _loss(model: VLIC, x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(b, generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    enc = model.encode(x)
    keep = torch.zeros(b, dtype=torch.bool)
    return model.flow_matching(x, enc.codes, t=t, noise=noise, drop_mask=keep).loss


def test_checkpointing_keeps_the_gradients():
    torch.manual_seed(0)
    model = VLIC(quality_config("test", encoder_depth=2, decoder_depth=3)).train()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _loss(model, x).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    _loss(model, x).backward()
    checked = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert plain.keys() == checked.keys() and len(plain) > 20
    for name, grad in plain.items():
        torch.testing.assert_close(checked[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing


def test_checkpointing_at_paper_width_keeps_a_quarter_at_most():
    """Width 1088 / 17 heads, one block each, 256x256, bf16 autocast: saved bytes per sample
    (on fake tensors, which save what real ones do: see test_fake_tensors_count_...)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    config = quality_config(1, encoder_depth=1, decoder_depth=1, prior_depth=1)
    kept = {}
    with FakeTensorMode():
        model = VLIC(config).train()
        for checkpointing in (False, True):
            total = 0
            for component in ("encoder", "decoder"):
                got = measure_component(model, component, "bf16-mixed", checkpointing)
                total += sum(got.per_sample.values())
            kept[checkpointing] = total
    # one block of 4352 tokens x 1088 in bf16 is ~9 MiB: the plain run keeps hundreds
    assert kept[False] > 300 * 2**20
    assert kept[True] <= kept[False] / 4, kept


def test_saved_tensor_counter_counts_each_storage_once():
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)
    counter = SavedTensorCounter(exclude=torch.nn.ParameterList([w]))
    with counter.counting():
        y = x @ w  # saves x (and w: excluded)
        z = (y * y).sum()  # saves y twice: one storage
    assert counter.total == x.nbytes + y.nbytes
    z.backward()


def test_fake_tensors_count_the_bytes_a_real_run_saves():
    """The planner measures on fake tensors: the same bytes as real passes, region by region."""
    config = quality_config("test")
    for precision in ("32-true", "bf16-mixed"):
        fake = measure(config, precision, "lpips", "vgg")
        real = measure(config, precision, "lpips", "vgg", fake=False)
        assert fake == real, precision
        assert fake.kept[False]["decoder"]["per_sample"] > 0


def test_depth_extrapolation_matches_a_deeper_model():
    """Measured at two blocks and extrapolated = counted directly on a 4-block model."""
    config = quality_config("test", encoder_depth=4, decoder_depth=4, encoder_width=64)
    config = config.replace(encoder_heads=4)
    measured = measure(config, "32-true")
    torch.manual_seed(0)
    deep = VLIC(config).train()
    for checkpointing in (False, True):
        for component in ("encoder", "decoder"):
            direct = measure_component(deep, component, "32-true", checkpointing)
            want = sum(direct.per_sample.values())
            got = measured.kept[checkpointing][component]["per_sample"]
            assert got == pytest.approx(want, rel=0.02), (component, checkpointing)


def test_planner_reads_a_config_and_finds_the_largest_micro_batch(tmp_path):
    import yaml
    from compressai_vlic_lightning.cli import main as train_main

    base = yaml.safe_load((CONFIGS / "tiny_stage1.yaml").read_text())
    base["trainer"]["accumulate_grad_batches"] = 2
    base["model"]["init_args"]["gradient_checkpointing"] = True
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base))
    setup = read_setup(path)
    batch = base["data"]["init_args"]["batch_size"]
    assert setup.stage == 1 and setup.micro_batch == batch and setup.global_batch == 2 * batch
    assert setup.gradient_checkpointing and setup.ema
    p = plan(setup)
    gib = 2**30
    largest = p.largest_micro_batch(4 * gib)
    assert largest > 0
    # the plan is linear in the micro-batch: one more sample than the largest does not fit
    assert p.fixed + largest * p.per_sample <= 4 * gib < p.fixed + (largest + 1) * p.per_sample
    assert train_main(["plan", "--config", str(path), "--gpu-memory", "4"]) == 0
    # stage 2 counts the perceptual network only where its regulariser keeps stage 1's term
    stage2 = yaml.safe_load((CONFIGS / "tiny_stage2.yaml").read_text())
    stage2["model"]["init_args"]["quality"] = "tiny"
    kept, plain = tmp_path / "s2.yaml", tmp_path / "s2-plain.yaml"
    kept.write_text(yaml.safe_dump(stage2))
    stage2["model"]["init_args"]["perceptual_weight"] = 0.0
    plain.write_text(yaml.safe_dump(stage2))
    with_term, without = read_setup(kept), read_setup(plain)
    assert (with_term.perceptual_type, without.perceptual_type) == ("lpips", "none")
    assert plan(with_term).peak > plan(without).peak
    with pytest.raises(ConfigError, match="does not exist"):
        read_setup(tmp_path / "missing.yaml")


# ------------------------------------------------------------------ checkpoints
class _Tiny(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int = 32) -> None:
        self.x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(3))

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_ema_is_stored_once_and_restored(tmp_path, quiet_cpu_trainer):
    module = Stage1Module(quality="test", perceptual_type="none", lr=1e-3)
    ema = EMA(decay=0.9, ema_device="cpu")
    trainer = quiet_cpu_trainer(max_steps=3, callbacks=[ema], limit_val_batches=0)
    trainer.fit(module, DataLoader(_Tiny(8), batch_size=2))
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["callbacks"]["EMA"] == {"num_updates": 3}  # no second copy of the averages
    saved = ckpt[EMA_KEY]
    assert "model._config_json" in saved
    restored = EMA(decay=0.9)
    restored.on_load_checkpoint(trainer, module, ckpt)
    restored.load_state_dict(ckpt["callbacks"]["EMA"])
    restored._init(module)
    assert restored.num_updates == 3
    for k, v in restored.shadow.items():
        assert torch.equal(v, saved[f"model.{k}"].float()), k
    with pytest.raises(ConfigError, match="ema_device"):
        EMA(ema_device="gpu")


def _judged(tmp_path, photos, size: int = 64):
    import numpy as np
    from PIL import Image

    from compressai_vlic.cli.main import main as vlic_main

    rng = np.random.default_rng(0)
    folders = {k: tmp_path / k for k in ("orig", "a", "b")}
    for f in folders.values():
        f.mkdir(exist_ok=True)
    for i, name in enumerate(("astronaut", "coffee", "rocket")):
        img = photos[name][:size, :size].astype(np.float64)
        mild = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        strong = np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8)
        a, b = (mild, strong) if i % 2 == 0 else (strong, mild)
        Image.fromarray(img.astype(np.uint8)).save(folders["orig"] / f"{name}.png")
        Image.fromarray(a).save(folders["a"] / f"{name}.png")
        Image.fromarray(b).save(folders["b"] / f"{name}.png")
    out = tmp_path / "prefs.jsonl"
    args = ["judge", "--originals", str(folders["orig"]), "--recon-a", str(folders["a"])]
    args += ["--recon-b", str(folders["b"]), "--output", str(out), "--judge-type", "psnr"]
    assert vlic_main(args) == 0
    return out


class _Grads(Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {
            n: p.grad.detach().clone()
            for n, p in pl_module.model.named_parameters()
            if p.grad is not None
        }


def _stage2(dataset, dpo_batch_size: int, **kwargs) -> Stage2Module:
    torch.manual_seed(0)
    return Stage2Module(
        quality="test",
        preference_type="offline",
        preference_dataset=str(dataset),
        dpo_batch_size=dpo_batch_size,
        lambda_flow=0.0,  # the regulariser draws its own noise per micro-batch
        **kwargs,
    )


def test_accumulated_dpo_equals_the_unsplit_step(tmp_path, photos, quiet_cpu_trainer):
    dataset = _judged(tmp_path, photos)
    grads = {}
    for accumulate, n in ((1, 4), (2, 2), (4, 1)):
        module = _stage2(dataset, n)
        cb = _Grads()
        trainer = quiet_cpu_trainer(
            max_steps=1, accumulate_grad_batches=accumulate, callbacks=[cb], limit_val_batches=0
        )
        trainer.fit(module, DataLoader(_Tiny(4), batch_size=n))
        grads[accumulate] = cb.grads
    assert len(grads[1]) > 20
    for accumulate in (2, 4):
        # float32 summation order differs; a wrong split (same pairs twice, no 1/k) is O(1) off
        for name, g in grads[1].items():
            err = (grads[accumulate][name] - g).norm() / g.norm().clamp_min(1e-12)
            assert err < 1e-4, (name, accumulate, float(err))


def test_stage2_checkpoint_leaves_the_reference_out(tmp_path, photos, quiet_cpu_trainer):
    dataset = _judged(tmp_path, photos)
    module = _stage2(dataset, 2)
    trainer = quiet_cpu_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, DataLoader(_Tiny(4), batch_size=2))
    path = tmp_path / "s2.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("reference.")]
    assert ckpt["dpo_reference"]["fingerprint"]
    # the same reference (same init): loads, with the reference rebuilt, not read from the file
    again = _stage2(dataset, 2)
    again.on_load_checkpoint(ckpt)
    again.load_state_dict(ckpt["state_dict"])
    for k, v in module.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k
    # another reference: a clear error instead of a silent wrong DPO baseline
    torch.manual_seed(123)
    other = Stage2Module(quality="test", preference_type="offline", preference_dataset=str(dataset))
    with pytest.raises(CheckpointError, match="init_from"):
        other.on_load_checkpoint(torch.load(path, map_location="cpu", weights_only=True))


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_loss():
    """``compile_mode`` on the tiny config: same loss (and a backward) as eager."""
    from compressai_vlic_lightning.common import apply_speed_options

    torch.manual_seed(0)
    model = VLIC(quality_config("test")).train()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    eager = _loss(model, x).detach()
    apply_speed_options(model, gradient_checkpointing=True, compile_mode="default")
    compiled = _loss(model, x)
    compiled.backward()
    torch.testing.assert_close(compiled.detach(), eager, rtol=1e-4, atol=1e-5)
    keys = set(VLIC(quality_config("test")).state_dict())
    assert set(model.state_dict()) == keys  # checkpoints keep their keys
    with pytest.raises(ConfigError, match="compile_mode"):
        apply_speed_options(model, gradient_checkpointing=False, compile_mode="fast")
