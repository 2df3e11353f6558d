"""Prior-only refit: real Trainer.fit on a tiny codec's frozen tokens, the cache, the export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressai_vlic_lightning import PhotosDataModule, PriorRefitModule
from compressai_vlic_lightning.cli import main as train_main

from compressai_vlic.coding import TokenCoder
from compressai_vlic.errors import ConfigError
from compressai_vlic.models import VLIC
from compressai_vlic.zoo import vlic

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny codec saved the way `compressai-vlic-train export` writes one."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("refit") / "vlic-test.pth.tar"
    torch.save(vlic("test").state_dict(), path)
    return path


def _data() -> PhotosDataModule:
    return PhotosDataModule(crop_size=32, batch_size=8, samples_per_epoch=16, val_crops_per_photo=1)


@pytest.mark.parametrize("digits", [None, "causal"])
def test_refit_trains_only_the_prior_on_cached_tokens(
    tiny_checkpoint: Path, tmp_path: Path, quiet_cpu_trainer, digits
) -> None:
    export = tmp_path / "refit.pth.tar"
    module = PriorRefitModule(
        str(tiny_checkpoint), prior_digits=digits, lr=3e-3, export_path=str(export)
    )
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    data = _data()
    data.setup("fit")
    tokens = torch.cat([module.model.encode(b).indices for b in data.train_dataloader()])
    with torch.no_grad():
        start_bits = float(module.model.prior.nll_bits(tokens).mean())
    trainer = quiet_cpu_trainer(max_steps=8, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    # 2 batches per epoch, 4 epochs: the encoder ran once per batch, then the cache served.
    assert module.encoder_calls == 2 + 1  # + one validation batch
    after = module.model.state_dict()
    for key, value in before.items():
        if key.startswith("prior.") and key != "prior.transformer.wte.weight":
            continue
        assert torch.equal(after[key], value), f"{key} changed: only the prior may train"
    assert not torch.equal(after["prior.head.weight"], before["prior.head.weight"])
    # The exported codec loads on its own, has the asked-for prior and codes real streams.
    refit = VLIC.from_state_dict(torch.load(export, weights_only=True)).eval()
    assert refit.config.prior_digits == (digits or "factorized")
    assert (refit.prior.intra is not None) == (digits == "causal")
    if digits is None:  # same architecture: same config hash, streams stay compatible
        assert refit.config.config_hash() == vlic("test").config.config_hash()
    with torch.no_grad():
        end_bits = float(refit.prior.nll_bits(tokens).mean())
    assert end_bits < start_bits  # it fitted the cached tokens
    coder = TokenCoder(refit.config.fsq_levels)
    payload = coder.encode(tokens[:4], refit.prior)
    assert torch.equal(coder.decode(payload, refit.prior, 4, tokens.shape[1]), tokens[:4])
    with pytest.raises(ConfigError):  # never overwrites a file
        PriorRefitModule(str(tiny_checkpoint), export_path=str(export))


def test_refit_refuses_crops_of_another_size(tiny_checkpoint: Path, quiet_cpu_trainer) -> None:
    module = PriorRefitModule(str(tiny_checkpoint))
    data = PhotosDataModule(crop_size=48, batch_size=4, samples_per_epoch=4)
    with pytest.raises(ConfigError, match="crop_size to 32"):
        quiet_cpu_trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=data)


def test_refit_yaml_runs_through_the_cli(tiny_checkpoint: Path, tmp_path: Path) -> None:
    export = tmp_path / "out" / "refit.pth.tar"
    train_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "tiny_prior_refit.yaml"),
            "--model.checkpoint",
            str(tiny_checkpoint),
            "--model.export_path",
            str(export),
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            "--data.init_args.batch_size",
            "4",
            "--data.init_args.samples_per_epoch",
            "8",
        ]
    )
    refit = VLIC.from_state_dict(torch.load(export, weights_only=True))
    assert refit.config.prior_digits == "causal"
    assert (tmp_path / "metrics.csv").is_file()
