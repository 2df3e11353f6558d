"""`compressai-vlic encode` / `decode` on real photos in every accepted format, and bad inputs.

Run in process through the real dispatcher (``main([...])``); one decode runs as a separate
console process to show that ``--quality test`` rebuilds the very same model there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from png16 import write_png16

from compressai_vlic import zoo
from compressai_vlic.cli._codec import load_model
from compressai_vlic.cli.main import main
from compressai_vlic.errors import BitstreamError, ModelMismatchError
from compressai_vlic.image_io import load_image, to_uint8

REPO = Path(__file__).resolve().parents[1]
SIZES = {  # relative path -> (height, width)
    "odd.png": (37, 53),
    "gray.png": (40, 48),
    "alpha.png": (40, 40),
    "deep/deep16.png": (36, 44),
    "deep/coffee.jpg": (48, 40),
    "deep/rocket.webp": (40, 56),
}


@pytest.fixture(scope="module")
def model():
    return load_model(quality="test")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, photos) -> Path:
    root = tmp_path_factory.mktemp("codec_inputs")
    (root / "deep").mkdir()
    astronaut, chelsea = photos["astronaut"], photos["chelsea"]
    Image.fromarray(astronaut[60:97, 200:253]).save(root / "odd.png")
    Image.fromarray(chelsea[80:120, 150:198]).convert("L").save(root / "gray.png")
    rgba = np.dstack([astronaut[:40, :40], np.full((40, 40), 255, np.uint8)])
    rgba[:, :20, 3] = 0
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    deep = astronaut[200:236, 100:144].astype(np.uint16) * 257
    write_png16(root / "deep" / "deep16.png", deep)
    Image.fromarray(photos["coffee"][100:148, 300:340]).save(root / "deep" / "coffee.jpg")
    Image.fromarray(photos["rocket"][150:190, 250:306]).save(root / "deep" / "rocket.webp")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return root


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, inputs) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("codec_streams")
    status, err = _main_capture(["encode", str(inputs), "-o", str(out), "--quality", "test"])
    return out, status, err


def _main_capture(argv: list[str]) -> tuple[int, str]:
    """Run the dispatcher with stderr captured to a string (module-scoped fixtures can't capsys)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    return status, err.getvalue()


def test_encode_folder_mirrors_it_and_reports_conversions_and_failures(encoded, inputs, model):
    out, status, err = encoded
    assert status == 1  # broken.png failed; everything else was still encoded
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(str(Path(rel).with_suffix(".vlic").as_posix()) for rel in SIZES)
    assert "broken.png: not a readable image" in err
    assert "1 input(s) failed" in err
    assert "grayscale (L) replicated to RGB" in err
    assert "RGBA with alpha composited on white" in err
    assert "16-bit RGB PNG scaled to [0, 1]" in err
    # The file holds exactly the container bytes of the model's compress().
    x = load_image(inputs / "odd.png").tensor[None]
    assert (out / "odd.vlic").read_bytes() == model.compress(x)["strings"][0][0]


def test_decode_folder_restores_every_size(encoded, tmp_path, model):
    streams, _, _ = encoded
    status, err = _main_capture(["decode", str(streams), "-o", str(tmp_path), "--quality", "test"])
    assert status == 0, err
    for rel, (height, width) in SIZES.items():
        decoded = load_image(tmp_path / Path(rel).with_suffix(".png"))
        assert decoded.size == (height, width)
        assert decoded.conversions == []
    data = (streams / "deep" / "coffee.vlic").read_bytes()
    expected = to_uint8(model.decompress([[data]], None)["x_hat"][0])
    assert torch.equal(load_image(tmp_path / "deep" / "coffee.png").tensor, expected)


@pytest.mark.slow
def test_decode_in_a_separate_console_process_gives_the_same_image(encoded, tmp_path, model):
    streams, _, _ = encoded
    cli = shutil.which("compressai-vlic", path=str(Path(sys.executable).parent))
    assert cli, "compressai-vlic is not installed: run `pip install --no-deps .`"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    target = tmp_path / "odd_decoded.png"
    model_args = ["--quality", "test", "--threads", "1"]
    proc = subprocess.run(
        [cli, "decode", str(streams / "odd.vlic"), "-o", str(target), *model_args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "decoded 1 stream(s)" in proc.stdout
    data = (streams / "odd.vlic").read_bytes()
    expected = to_uint8(model.decompress([[data]], None)["x_hat"][0])
    assert torch.equal(load_image(target).tensor, expected)


def test_seed_travels_in_the_stream(inputs, tmp_path, model):
    src = inputs / "deep" / "rocket.webp"
    for seed in (3, 4):
        target = str(tmp_path / f"s{seed}.vlic")
        status, err = _main_capture(
            ["encode", str(src), "-o", target, "--quality", "test", "--seed", str(seed)]
        )
        assert status == 0, err
    a, b = (tmp_path / "s3.vlic").read_bytes(), (tmp_path / "s4.vlic").read_bytes()
    assert a != b and len(a) == len(b)
    assert a == model.compress(load_image(src).tensor[None], seed=3)["strings"][0][0]
    status, err = _main_capture(
        ["encode", str(src), "-o", str(tmp_path), "--quality", "test", "--seed", "-1"]
    )
    assert status == 1 and "seed" in err


def test_bad_streams_get_their_typed_message_and_the_rest_decodes(
    encoded, inputs, tmp_path, model, photos
):
    streams, _, _ = encoded
    good = (streams / "gray.vlic").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "good.vlic").write_bytes(good)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    (bad / "corrupted.vlic").write_bytes(bytes(flipped))
    (bad / "truncated.vlic").write_bytes(good[: len(good) // 2])
    shutil.copy(inputs / "odd.png", bad / "foreign.vlic")
    # A stream from a model with another config: same photo, other token count.
    with torch.random.fork_rng():
        torch.manual_seed(1)
        other = zoo.vlic("test", num_tokens=8).eval()
    checkpoint = tmp_path / "other.pth.tar"
    torch.save(other.state_dict(), checkpoint)
    ckpt = str(checkpoint)
    status, err = _main_capture(
        ["encode", str(inputs / "gray.png"), "-o", str(bad / "other.vlic"), "--checkpoint", ckpt]
    )
    assert status == 0, err
    with pytest.raises(ModelMismatchError):
        model.decompress([[(bad / "other.vlic").read_bytes()]], None)

    status, err = _main_capture(
        ["decode", str(bad), "-o", str(tmp_path / "dec"), "--quality", "test"]
    )
    assert status == 1
    assert (tmp_path / "dec" / "good.png").is_file()
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["good.png"]
    for name in ("corrupted", "truncated", "foreign", "other"):
        with pytest.raises(BitstreamError) as info:
            model.decompress([[(bad / f"{name}.vlic").read_bytes()]], None)
        assert f"{bad / name}.vlic: {info.value}" in err
    assert "4 input(s) failed" in err

    # The right model decodes it: the checkpoint path works end to end.
    status, err = _main_capture(
        ["decode", str(bad / "other.vlic"), "-o", str(tmp_path / "other.png"), "--checkpoint", ckpt]
    )
    assert status == 0, err
    assert load_image(tmp_path / "other.png").size == SIZES["gray.png"]


def test_bad_model_arguments_are_refused_clearly(inputs, tmp_path):
    src = str(inputs / "odd.png")
    with pytest.raises(SystemExit) as info:
        main(["encode", src, "-o", str(tmp_path)])
    assert info.value.code == 2  # argparse: one of --checkpoint/--quality is required
    status, err = _main_capture(
        ["encode", src, "-o", str(tmp_path), "--checkpoint", str(tmp_path / "none.pth")]
    )
    assert status == 1 and "no such checkpoint file" in err
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": Path("not a tensor")}, pickled)
    status, err = _main_capture(["encode", src, "-o", str(tmp_path), "--checkpoint", str(pickled)])
    assert status == 1 and "weights_only=True" in err
    status, err = _main_capture(
        ["decode", str(tmp_path / "nothing"), "-o", str(tmp_path), "--quality", "test"]
    )
    assert status == 1 and "no such file or folder" in err


def test_name_collisions_are_refused_not_overwritten(inputs, tmp_path):
    folder = tmp_path / "clash"
    folder.mkdir()
    shutil.copy(inputs / "odd.png", folder / "a.png")
    Image.open(inputs / "odd.png").convert("RGB").save(folder / "a.jpg")
    shutil.copy(inputs / "gray.png", folder / "b.png")
    out = tmp_path / "out"
    status, err = _main_capture(["encode", str(folder), "-o", str(out), "--quality", "test"])
    assert status == 1
    assert f"{folder / 'a.png'}: would overwrite {out / 'a.vlic'}, also written from" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.vlic", "b.vlic"]


def test_other_weights_are_refused_unless_allowed(inputs, tmp_path, model):
    # Same architecture, prior and config hash, another decoder: decoding would silently give
    # another image.
    other = zoo.vlic("test").eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in other.decoder.parameters():
            p.mul_(0.9)
    assert other.config.config_hash() == model.config.config_hash()
    checkpoint = tmp_path / "other.pth.tar"
    torch.save(other.state_dict(), checkpoint)
    stream = tmp_path / "gray.vlic"
    status, err = _main_capture(
        ["encode", str(inputs / "gray.png"), "-o", str(stream), "--checkpoint", str(checkpoint)]
    )
    assert status == 0, err
    out = tmp_path / "dec.png"
    status, err = _main_capture(["decode", str(stream), "-o", str(out), "--quality", "test"])
    assert status == 1 and "fingerprint" in err and "--allow-model-mismatch" in err
    assert not out.exists()
    argv = ["decode", str(stream), "-o", str(out), "--quality", "test", "--allow-model-mismatch"]
    status, err = _main_capture(argv)
    assert status == 0, err
    assert load_image(out).size == SIZES["gray.png"]


def test_existing_outputs_are_refused_unless_overwrite(encoded, inputs, tmp_path):
    streams, _, _ = encoded
    photos = tmp_path / "photos"  # `decode streams -o photos` must not replace the photos
    photos.mkdir()
    shutil.copy(inputs / "gray.png", photos / "gray.png")
    original = (photos / "gray.png").read_bytes()
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(streams / "gray.vlic", one / "gray.vlic")
    status, err = _main_capture(["decode", str(one), "-o", str(photos), "--quality", "test"])
    assert status == 1
    assert f"{photos / 'gray.png'} exists already; pass --overwrite" in err
    assert (photos / "gray.png").read_bytes() == original
    status, err = _main_capture(
        ["decode", str(one), "-o", str(photos), "--quality", "test", "--overwrite"]
    )
    assert status == 0, err
    assert (photos / "gray.png").read_bytes() != original
    assert load_image(photos / "gray.png").size == SIZES["gray.png"]

    out = tmp_path / "streams"
    argv = ["encode", str(inputs / "gray.png"), "-o", str(out / "g.vlic"), "--quality", "test"]
    assert _main_capture(argv)[0] == 0
    (out / "g.vlic").write_bytes(b"keep me")
    status, err = _main_capture(argv)
    assert status == 1 and "exists already" in err
    assert (out / "g.vlic").read_bytes() == b"keep me"
    assert _main_capture([*argv, "--overwrite"])[0] == 0
    assert (out / "g.vlic").read_bytes()[:4] != b"keep"


def test_an_input_is_never_overwritten_even_with_overwrite(inputs, tmp_path):
    src = tmp_path / "photo.vlic"  # an image named like a stream: encode would write onto it
    shutil.copy(inputs / "gray.png", src)
    before = src.read_bytes()
    status, err = _main_capture(
        ["encode", str(src), "-o", str(src), "--quality", "test", "--overwrite"]
    )
    assert status == 1 and "is an input of this run" in err
    assert src.read_bytes() == before


def test_a_full_disk_leaves_no_torn_or_empty_files(encoded, inputs, tmp_path, monkeypatch):
    import errno

    from compressai_vlic import atomic

    streams, _, _ = encoded
    out = tmp_path / "out"
    out.mkdir()
    (out / "gray.vlic").write_bytes(b"previous stream")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    status, err = _main_capture(
        ["encode", str(inputs), "-o", str(out), "--quality", "test", "--overwrite"]
    )
    assert status == 1 and "No space left on device" in err
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["gray.vlic"]
    assert (out / "gray.vlic").read_bytes() == b"previous stream"
    status, err = _main_capture(
        ["decode", str(streams), "-o", str(tmp_path / "dec"), "--quality", "test"]
    )
    assert status == 1 and "No space left on device" in err
    assert not [p for p in (tmp_path / "dec").rglob("*") if p.is_file()]


def test_weights_is_the_one_spelling_and_the_older_flags_are_aliases(inputs, tmp_path, model):
    checkpoint = tmp_path / "m.pth.tar"
    torch.save(model.state_dict(), checkpoint)
    flags = [
        ["--weights", "random:test"],
        ["--quality", "test"],
        ["--weights", str(checkpoint)],
        ["--checkpoint", str(checkpoint)],
    ]
    streams = []
    for i, flag in enumerate(flags):
        out = tmp_path / f"{i}.vlic"
        status, err = _main_capture(["encode", str(inputs / "gray.png"), "-o", str(out), *flag])
        assert status == 0, err
        streams.append(out.read_bytes())
    assert len(set(streams)) == 1  # the same model, however it is named
    status, err = _main_capture(
        ["decode", str(tmp_path / "0.vlic"), "-o", str(tmp_path / "d.png"), "--weights", "tiny"]
    )
    assert status == 1 and "config hash" in err  # the shipped model is another model
