"""Shared fixtures: real photos that ship inside installed packages (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def server(request):
    """A loopback OpenAI-compatible server (a real process) that expects the test module's
    ``SECRET`` as the key in its ``KEY_ENV`` variable."""
    from compressai_vlic.testing.loopback_server import run_server

    key_env, secret = request.module.KEY_ENV, request.module.SECRET
    with run_server(expect_key_env=key_env, env={key_env: secret}) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _server_key(request, monkeypatch):
    """The key of a module that declares ``KEY_ENV``/``SECRET``, in the environment of its tests."""
    key_env = getattr(request.module, "KEY_ENV", None)
    if key_env:
        monkeypatch.setenv(key_env, request.module.SECRET)


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img[..., :3]


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real uint8 RGB photos (H, W, 3) from scikit-image."""
    return {name: _skimage_photo(name) for name in ("astronaut", "chelsea", "coffee", "rocket")}


def photo_tensor(img: np.ndarray, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """(1, 3, H, W) float tensor in [0, 1], optionally a centre crop of (h, w)."""
    if crop is not None:
        h, w = crop
        top = (img.shape[0] - h) // 2
        left = (img.shape[1] - w) // 2
        img = img[top : top + h, left : left + w]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory, photos) -> os.PathLike[str]:
    """A folder of real photos as PNG files."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name, img in photos.items():
        Image.fromarray(img).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> os.PathLike[str]:
    """A tiny random DINOv2 saved by transformers: the real local-loading path, no download."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
    )
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).save_pretrained(path)
    return path


@pytest.fixture
def quiet_cpu_trainer():
    """Factory for a CPU ``Trainer`` with no logger, checkpoints, progress bar or summary."""

    def make(**kwargs):
        import pytorch_lightning as pl

        quiet = {
            "accelerator": "cpu",
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        }
        return pl.Trainer(**{**quiet, **kwargs})

    return make


def fit_args(*configs: Path | str, root: Path, steps: int, every: int | None = None) -> list[str]:
    """``fit`` arguments of a short, quiet LightningCLI run writing under ``root``.

    Args:
        configs: YAML files, later ones overriding earlier ones.
        root: the run's folder (checkpoints and logs).
        steps: optimizer steps.
        every: steps between validations and checkpoints (default: ``steps``).
    """
    every = steps if every is None else every
    configs_args = [arg for config in configs for arg in ("--config", str(config))]
    trainer = {
        "max_steps": steps,
        "val_check_interval": every,
        "default_root_dir": root,
        "logger.init_args.save_dir": root,
        "enable_progress_bar": "false",
        "enable_model_summary": "false",
        "log_every_n_steps": 1,
        "callbacks.every_n_train_steps": every,
    }
    return [
        "fit",
        *configs_args,
        *(a for k, v in trainer.items() for a in (f"--trainer.{k}", str(v))),
    ]


@pytest.fixture(scope="module")
def net():
    """The untrained ``vlic("test")`` model (seed 0), in eval mode; the global RNG is untouched."""
    from compressai_vlic.zoo import vlic

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return vlic("test").eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module (small models run faster and more repeatably)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
