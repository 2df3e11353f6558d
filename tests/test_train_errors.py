"""`compressai-vlic-train fit` / `export` with bad data folders and bad checkpoints: one clear line
that names the file and the fix, exit status 2, no traceback and no config-parser dump."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressai_vlic_lightning.cli import main

from compressai_vlic import zoo

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "train" / "tiny_stage1.yaml")
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_checkpoints")
    torch.manual_seed(0)
    state = zoo.vlic("test").state_dict()
    good = root / "good.pth.tar"
    torch.save(state, good)
    data = good.read_bytes()
    (root / "truncated.pth.tar").write_bytes(data[: len(data) // 3])
    (root / "empty.pth.tar").write_bytes(b"")
    nan = {k: v.clone() for k, v in state.items()}
    key = next(k for k, v in nan.items() if v.is_floating_point())
    nan[key].view(-1)[0] = float("nan")
    torch.save(nan, root / "nan.pth.tar")
    from compressai.zoo import bmshj2018_factorized

    torch.save(bmshj2018_factorized(1).state_dict(), root / "other_arch.pth.tar")
    return {p.stem.removesuffix(".pth"): p for p in root.iterdir()}


def _fit(capsys, *extra: str) -> tuple[int, str]:
    status = main(["fit", "--config", CONFIG, "--trainer.max_steps", "1", *extra])
    err = capsys.readouterr().err
    return status, err


def _one_clear_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Union subtypes" not in err, err
    return lines[0]


def _folder_data(path: Path) -> list[str]:
    return [
        "--data", "compressai_vlic_lightning.ImageFolderDataModule",
        "--data.train_dir", str(path), "--data.crop_size", "32",
    ]  # fmt: skip


def test_fit_with_a_missing_empty_or_corrupt_folder(tmp_path, capsys):
    status, err = _fit(capsys, *_folder_data(tmp_path / "missing"))
    assert status == 2
    assert f"image folder {tmp_path / 'missing'} does not exist" in _one_clear_line(err)
    (tmp_path / "empty").mkdir()
    status, err = _fit(capsys, *_folder_data(tmp_path / "empty"))
    assert status == 2 and "no images found under" in _one_clear_line(err)
    bad = tmp_path / "corrupt"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    status, err = _fit(capsys, *_folder_data(bad))
    line = _one_clear_line(err)
    assert status == 2 and f"none of the 3 images under {bad} could be read" in line
    assert "x0.png: not a readable image" in line


@pytest.mark.parametrize(
    "name,expected",
    [
        ("truncated", "truncated or damaged checkpoint"),
        ("empty", "the checkpoint file is empty"),
        ("nan", "hold NaN or infinite values"),
        ("other_arch", "not saved from a VLIC model"),
        ("missing", "no such checkpoint file"),
    ],
)
def test_fit_and_export_with_a_bad_checkpoint(checkpoints, tmp_path, capsys, name, expected):
    path = checkpoints.get(name, tmp_path / "missing.ckpt")
    status, err = _fit(capsys, "--model.init_args.init_from", str(path))
    line = _one_clear_line(err)
    assert status == 2 and str(path) in line and expected in line, line
    out = tmp_path / "out.pth.tar"
    assert main(["export", str(path), str(out)]) == 2
    line = _one_clear_line(capsys.readouterr().err)
    assert str(path) in line and expected in line, line
    assert not out.exists()


def test_export_refuses_to_overwrite(checkpoints, tmp_path, capsys):
    out = tmp_path / "exported.pth.tar"
    out.write_bytes(b"keep")
    assert main(["export", str(checkpoints["good"]), str(out)]) == 2
    assert "exists already; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"
    assert main(["export", str(checkpoints["good"]), str(out), "--overwrite"]) == 0
    assert zoo.vlic("test").load_state_dict(torch.load(out, weights_only=True))
