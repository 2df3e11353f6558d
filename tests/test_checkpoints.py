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


class RunsCode:  # a pickle that would create a file when unpickled by an unsafe loader
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_one_weights_loader_reads_every_spelling_and_refuses_code(tmp_path):
    """``load_weights``: zoo name, save_pretrained folder, Lightning EMA and plain checkpoints."""
    from compressai_vlic.pretrained import WEIGHTS, load_weights

    # a zoo name and its aliases: the table's checked file, the quality's own config
    tiny = load_weights("tiny")
    assert tiny.identity == WEIGHTS["vlic-tiny"].sha256 and tiny.quality == "tiny"
    for alias in ("vlic-tiny", "zoo:tiny", "0"):
        assert load_weights(alias).identity == tiny.identity
    assert tiny.model().config == zoo.quality_config("tiny")
    assert not tiny.model().training
    # a save_pretrained folder
    torch.manual_seed(0)
    net = zoo.vlic("test")
    state = net.state_dict()
    net.save_pretrained(tmp_path / "saved")
    folder = load_weights(tmp_path / "saved")
    assert all(torch.equal(folder.state[k], v) for k, v in state.items())
    assert folder.model().config == net.config
    # a plain state-dict checkpoint, bare or nested under CompressAI's keys
    torch.save(state, tmp_path / "plain.pth.tar")
    torch.save({"network": state}, tmp_path / "nested.pth")
    for name in ("plain.pth.tar", "nested.pth"):
        loaded = load_weights(tmp_path / name)
        assert loaded.state.keys() == state.keys() and loaded.label == name.split(".")[0]
    # a Lightning checkpoint: the EMA weights by default, the raw ones with #raw or ema=False
    raw = {f"model.{k}": v for k, v in state.items()}
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    torch.save({"state_dict": raw, "ema_state_dict": ema, "epoch": 3}, tmp_path / "last.ckpt")
    key = next(k for k, v in state.items() if v.is_floating_point())
    got = load_weights(tmp_path / "last.ckpt")
    assert torch.equal(got.state[key], state[key] + 1)
    assert torch.equal(load_weights(f"{tmp_path / 'last.ckpt'}#raw").state[key], state[key])
    assert torch.equal(load_weights(tmp_path / "last.ckpt", ema=False).state[key], state[key])
    # random weights are reproducible from their spec
    a, b = load_weights("random:test:3").model(), load_weights("random:test:3").model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # a pickle that would run code is refused before it runs, whatever the file is called
    marker = tmp_path / "pwned"
    for name in ("evil.pth.tar", "evil.ckpt"):
        torch.save(
            {"state_dict": {"model.w": torch.zeros(1)}, "x": RunsCode(marker)}, tmp_path / name
        )
        with pytest.raises(CheckpointError, match="pickled Python objects"):
            load_weights(tmp_path / name)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_weights(tmp_path / "missing.ckpt")
