"""Hostile checkpoints: no path that loads one runs its code, and every refusal is one typed line.

A pickle whose ``__reduce__`` creates a marker file is served by a real HTTP server process on
loopback and also given as a local file, to every command that loads checkpoints.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressai_vlic.checkpoints import load_checkpoint
from compressai_vlic.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "train" / "tiny_stage1.yaml"


class _Payload:
    """Unpickling this creates the file ``path`` (stands for any code an attacker wants run)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture()
def hostile(tmp_path) -> dict[str, Path]:
    """Bad checkpoints of every kind, and the marker the malicious one would create."""
    folder = tmp_path / "served"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    files = {"marker": marker}
    files["evil"] = folder / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "x": _Payload(marker)}, files["evil"])
    files["foreign"] = folder / "foreign.ckpt"
    files["foreign"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    files["bare"] = folder / "bare.ckpt"
    torch.save({"weight": torch.zeros(2)}, files["bare"])
    files["truncated"] = folder / "truncated.ckpt"
    data = files["bare"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["other_model"] = folder / "other_model.ckpt"  # a Lightning checkpoint of another net
    torch.save(
        {
            "state_dict": {"net.weight": torch.zeros(3)},
            "global_step": 2,
            "optimizer_states": [],
            "pytorch-lightning_version": "2.6.0",
        },
        files["other_model"],
    )
    files["compressai"] = folder / "compressai.ckpt"  # CompressAI's training scripts' format
    torch.save({"state_dict": {"g_a.0.weight": torch.zeros(3)}, "epoch": 9}, files["compressai"])
    return files


@pytest.fixture()
def server(hostile):
    """``python -m http.server`` in its own process, on loopback, serving the bad files."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=hostile["evil"].parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://...) ..."
        port = int(line.split(" port ")[1].split()[0])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


def _capture(fn, *args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = fn(*args)
    return int(status or 0), err.getvalue()


def _one_line_refusal(status: int, err: str, *needles: str) -> None:
    assert status != 0
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_remote_and_fsspec_checkpoints_load_weights_only(hostile, server):
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(f"{server}/evil.ckpt")
    with pytest.raises(CheckpointError, match="HTTP 404"):
        load_checkpoint(f"{server}/missing.ckpt")
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(f"{server}/truncated.ckpt")
    assert torch.equal(load_checkpoint(f"{server}/bare.ckpt")["weight"], torch.zeros(2))
    fsspec = pytest.importorskip("fsspec")
    with fsspec.open("memory://hostile/evil.ckpt", "wb") as fh:
        fh.write(hostile["evil"].read_bytes())
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint("memory://hostile/evil.ckpt")
    assert not hostile["marker"].exists()


def _fit(root: Path, ckpt_path: str) -> tuple[int, str]:
    from compressai_vlic_lightning.cli import main as train_main

    argv = [
        "fit",
        "--config",
        str(CONFIG),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--trainer.max_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--model.init_args.quality",
        "test",
        "--model.init_args.init_from",
        "null",
        "--model.init_args.perceptual_type",
        "ms_ssim",
        "--ckpt_path",
        ckpt_path,
    ]
    return _capture(train_main, argv)


def test_training_resume_from_a_remote_checkpoint_runs_no_code(hostile, server, tmp_path):
    status, err = _fit(tmp_path / "run", f"{server}/evil.ckpt")
    assert not hostile["marker"].exists(), "the checkpoint's code ran"
    _one_line_refusal(status, err, "evil.ckpt", "pickled Python objects")


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("evil", "pickled Python objects"),
        ("truncated", "truncated"),
        ("foreign", "not a PyTorch checkpoint"),
        ("bare", "not a Lightning training checkpoint"),
        ("compressai", "not a Lightning training checkpoint"),
        ("other_model", "does not fit this model"),
    ],
)
def test_training_refuses_bad_local_checkpoints_in_one_line(hostile, tmp_path, name, needle):
    status, err = _fit(tmp_path / "run", str(hostile[name]))
    _one_line_refusal(status, err, hostile[name].name, needle)
    assert not hostile["marker"].exists()


@pytest.mark.parametrize("name", ["evil", "truncated", "foreign", "bare"])
def test_every_command_refuses_bad_checkpoints_in_one_line(hostile, tmp_path, photos, name):
    from compressai_vlic_lightning.cli import main as train_main
    from PIL import Image

    from compressai_vlic.cli.main import main

    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    Image.fromarray(photos["astronaut"][:32, :32]).save(image)
    ckpt = str(hostile[name])
    runs = {
        "encode": (main, ["encode", str(image), "-o", str(tmp_path / "o"), "--checkpoint", ckpt]),
        "eval": (main, ["eval", "checkpoint", str(image.parent), "-a", "vlic", "-p", ckpt]),
        "update": (main, ["update", ckpt, "-a", "vlic", "--dir", str(tmp_path / "u")]),
        "export": (train_main, ["export", ckpt, str(tmp_path / "x.pth.tar")]),
        "init_from": (
            train_main,
            [
                "fit",
                "--config",
                str(CONFIG),
                "--trainer.default_root_dir",
                str(tmp_path / "run"),
                "--trainer.logger.init_args.save_dir",
                str(tmp_path / "run"),
                "--model.init_from",
                ckpt,
            ],
        ),
    }
    for command, (fn, argv) in runs.items():
        status, err = _capture(fn, argv)
        assert not hostile["marker"].exists(), f"{command}: the checkpoint's code ran"
        assert status != 0, command
        assert "Traceback" not in err, f"{command}: {err[-2000:]}"
        assert len([x for x in err.splitlines() if x.startswith("error:")]) >= 1, command
