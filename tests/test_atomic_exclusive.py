"""Concurrent writers of one output: the first file stays, the second writer gets a typed error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from compressai_vlic.atomic import OutputExistsError, atomic_path, atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_a_file_written_meanwhile_is_kept_and_the_late_writer_is_refused(tmp_path):
    target = tmp_path / "out.vlic"
    with pytest.raises(OutputExistsError, match="exists already"):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")  # another run put its file there first
    assert target.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["out.vlic"]  # no temporary file left behind
    atomic_write_bytes(target, b"mine", overwrite=True)  # --overwrite still replaces
    assert target.read_bytes() == b"mine"


WRITER = textwrap.dedent(
    """
    import json, sys, time
    from compressai_vlic.atomic import OutputExistsError, atomic_write_bytes
    folder, name, go = sys.argv[1], sys.argv[2], sys.argv[3]
    while not __import__("os").path.exists(go):
        time.sleep(0.001)
    won = []
    for i in range(300):
        try:
            atomic_write_bytes(f"{folder}/{i}.vlic", name.encode() * 64, overwrite=False)
            won.append(i)
        except OutputExistsError:
            pass
    print(json.dumps(won))
    """
)


def test_two_processes_writing_the_same_files_never_replace_each_other(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(out), name, str(go)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("A", "B")
    ]
    go.touch()
    won = {}
    for name, proc in zip(("A", "B"), procs, strict=True):
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        won[name] = set(json.loads(stdout))
    assert not won["A"] & won["B"], "both writers think they wrote the same file"
    assert won["A"] | won["B"] == set(range(300))
    for i in range(300):
        winner = "A" if i in won["A"] else "B"
        assert (out / f"{i}.vlic").read_bytes() == winner.encode() * 64
    assert len(os.listdir(out)) == 300  # no temporary files


def test_encode_refuses_a_stream_another_run_wrote_after_planning(tmp_path, photos, monkeypatch):
    import contextlib
    import io

    from compressai_vlic import image_io
    from compressai_vlic.cli.main import main

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        Image.fromarray(photos["astronaut"][:24, :24]).save(images / f"{name}.png")
    out = tmp_path / "streams"
    real_load = image_io.load_image

    def load_while_another_run_writes(path):
        if path.name == "a.png":  # the other run finishes a.vlic between our plan and our write
            out.mkdir(exist_ok=True)
            (out / "a.vlic").write_bytes(b"the other run's stream")
        return real_load(path)

    monkeypatch.setattr(image_io, "load_image", load_while_another_run_writes)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["encode", str(images), "-o", str(out), "--quality", "test"])
    assert status == 1
    assert f"{out / 'a.vlic'}: exists already" in err.getvalue()
    assert (out / "a.vlic").read_bytes() == b"the other run's stream"
    assert (out / "b.vlic").read_bytes()[:4] != b"the "  # the other input was still encoded
    assert sorted(os.listdir(out)) == ["a.vlic", "b.vlic"]
