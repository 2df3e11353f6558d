"""The one checkpoint loader: weights only, and one clear line naming the file for each failure."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from compressai_vlic import zoo
from compressai_vlic.checkpoints import load_checkpoint, load_state_dict, load_vlic
from compressai_vlic.errors import CheckpointError, MetricUnavailableError


class NotATensor:  # a pickled object: weights_only=True must refuse it
    pass


def test_good_checkpoints_load_nested_and_prefixed(tmp_path):
    torch.manual_seed(0)
    net = zoo.vlic("test")
    state = net.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "n.pt")
    loaded = load_state_dict(tmp_path / "n.pt")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save(state, tmp_path / "bare.pth")
    assert load_vlic(tmp_path / "bare.pth").config == net.config


def test_every_bad_file_gets_one_line_naming_it(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, tmp_path / "pickled.pt")
    torch.save({"w": torch.zeros(2), "lr": 0.1}, tmp_path / "mixed.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    torch.save({"w": torch.tensor([1.0, float("inf")])}, tmp_path / "inf.pt")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.pth", format="PNG")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    data = (tmp_path / "mixed.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    cases = {
        "pickled.pt": "holds pickled Python objects that weights_only=True refuses",
        "mixed.pt": "not a state dict of tensors (entry 'lr' is a float)",
        "list.pt": "does not hold a state dict (list)",
        "inf.pt": "1 tensor(s) hold NaN or infinite values (first: 'w')",
        "photo.pth": "not a PyTorch checkpoint",
        "text.pth": "not a PyTorch checkpoint",
        "cut.pt": "truncated or damaged checkpoint",
        "empty.pt": "the checkpoint file is empty (0 bytes)",
        "missing.pt": "no such checkpoint file",
    }
    for name, expected in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_state_dict(tmp_path / name)
        text = str(info.value)
        assert text.startswith(f"{tmp_path / name}: ") and expected in text, text
        assert "\n" not in text
    with pytest.raises(MetricUnavailableError, match="pickled Python objects"):
        load_state_dict(tmp_path / "pickled.pt", error=MetricUnavailableError)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(tmp_path / "pickled.pt")


def test_another_architecture_is_named(tmp_path):
    from compressai.zoo import bmshj2018_factorized

    torch.save(bmshj2018_factorized(1).state_dict(), tmp_path / "bmshj.pth.tar")
    with pytest.raises(CheckpointError, match=r"bmshj\.pth\.tar: .*not saved from a VLIC model"):
        load_vlic(tmp_path / "bmshj.pth.tar")
