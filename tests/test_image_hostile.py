"""Hostile image files: damaged 16-bit PNGs and GIFs, decodes over the memory budget, 32-bit and
float TIFFs, and the temporary files of interrupted writes. Each must give a typed error naming the
file (never a crash), and a batch must go on past it."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from png16 import png16_bytes, png_chunk

from compressai_vlic.errors import ImageReadError, ImageTooLargeError
from compressai_vlic.image_io import find_images, load_image

REPO = Path(__file__).resolve().parents[1]


def _bad_filter_png16(path: Path, filter_byte: int = 7, planes: int = 3) -> Path:
    """An 8x8 16-bit PNG whose fourth row has an undefined filter type (valid zlib and CRCs)."""
    row = b"\x00" * (8 * 2 * planes)
    raw = b"".join(bytes([filter_byte if i == 3 else 0]) + row for i in range(8))
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[planes]
    header = struct.pack(">IIBBBBB", 8, 8, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )
    return path


def _run_isolated(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a child interpreter: a segfault fails the test instead of killing pytest."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_corrupt_16bit_pngs_are_typed_errors_not_segfaults(tmp_path):
    files = [_bad_filter_png16(tmp_path / "tiny.png")]
    assert files[0].stat().st_size < 100  # the 74-byte kind of file
    files += [_bad_filter_png16(tmp_path / f"f{b}-{p}.png", b, p) for b, p in ((5, 1), (255, 4))]
    good = png16_bytes(np.arange(3 * 24 * 20, dtype=np.uint16).reshape(20, 24, 3) * 97, [4, 1])
    for cut in (40, 60, len(good) // 2):
        files.append(tmp_path / f"cut{cut}.png")
        files[-1].write_bytes(good[:cut])
    proc = _run_isolated(
        f"""
        from compressai_vlic.errors import ImageReadError
        from compressai_vlic.image_io import load_image
        for path in {[str(f) for f in files]!r}:
            try:
                load_image(path)
                print("decoded", path)
            except ImageReadError as exc:
                print("typed", exc)
        """
    )
    assert proc.returncode == 0, f"the reader died (status {proc.returncode}): {proc.stderr[-500:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(files)
    for path, line in zip(files, lines):
        assert line.startswith(f"typed {path}: not a readable image"), line


@pytest.mark.parametrize("planes", [2, 3, 4])
def test_16bit_colour_pngs_keep_all_bits_with_every_filter_and_adam7(tmp_path, planes):
    rng = np.random.default_rng(planes)
    arr = rng.integers(0, 65536, (11, 13, planes), dtype=np.uint16)
    arr[..., -1] = 65535 if planes != 3 else arr[..., -1]  # opaque alpha
    expected = np.repeat(arr[..., :1], 3, -1) if planes == 2 else arr[..., :3]
    for interlace in (False, True):
        path = tmp_path / f"i{int(interlace)}.png"
        path.write_bytes(png16_bytes(arr, [0, 1, 2, 3, 4], interlace))
        got = load_image(path).tensor.numpy().transpose(1, 2, 0)
        assert np.abs(got - expected / 65535.0).max() < 1e-6


def test_a_truncated_animated_gif_is_a_typed_error(tmp_path, photos):
    frames = [
        Image.fromarray(photos["astronaut"][:40, :48]),
        Image.fromarray(photos["coffee"][:40, :48]),
    ]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    data = (tmp_path / "anim.gif").read_bytes()
    outcomes = set()
    for cut in range(len(data) // 2, len(data), 5):  # cuts inside the second frame
        (tmp_path / "cut.gif").write_bytes(data[:cut])
        try:
            load_image(tmp_path / "cut.gif")
            outcomes.add("ok")
        except ImageReadError as exc:
            assert "cut.gif" in str(exc)
            outcomes.add("typed")
    assert "typed" in outcomes


def _forged_png(path: Path, width: int, height: int, depth: int = 8, color: int = 2) -> Path:
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + png_chunk(b"IEND", b"")
    )
    return path


def test_memory_budget_refuses_from_the_header_before_decoding(tmp_path, monkeypatch):
    from compressai_vlic import image_io

    monkeypatch.delenv("COMPRESSAI_VLIC_MAX_IMAGE_MB", raising=False)
    monkeypatch.delenv("COMPRESSAI_VLIC_MAX_PIXELS", raising=False)
    # inside the 100 MP pixel limit, a few hundred bytes on disk; GBs once decoded
    big = _forged_png(tmp_path / "big.png", 10_000, 9_000, 16, 6)
    header = image_io.read_header(big)
    assert header.pixels < image_io.DEFAULT_MAX_PIXELS and header.decode_bytes > 4 * 2**30

    def no_decoding(*args, **kwargs):
        raise AssertionError("a decoder ran on an image over the memory budget")

    monkeypatch.setattr(image_io, "_deep_color", no_decoding)
    monkeypatch.setattr(image_io, "_to_tensor", no_decoding)
    with pytest.raises(
        ImageTooLargeError, match=r"big\.png: .* over the memory budget of 1024 MiB"
    ):
        load_image(big, max_image_mb=1024)
    monkeypatch.setenv("COMPRESSAI_VLIC_MAX_IMAGE_MB", "512")
    with pytest.raises(
        ImageTooLargeError, match=r"budget of 512 MiB.*COMPRESSAI_VLIC_MAX_IMAGE_MB"
    ):
        load_image(big)
    monkeypatch.setenv("COMPRESSAI_VLIC_MAX_IMAGE_MB", "lots")
    with pytest.raises(ImageReadError, match="not a number of MiB"):
        load_image(big)
    monkeypatch.delenv("COMPRESSAI_VLIC_MAX_IMAGE_MB")
    assert image_io.max_image_memory() == image_io.default_max_image_mb() * 2**20
    assert image_io.max_image_memory(0) is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="measures each decode in a forked child")
def test_memory_estimate_bounds_the_measured_peak(tmp_path):
    """The header estimate is an upper bound of what each decode path really takes."""
    rng = np.random.default_rng(0)
    h, w = 600, 800
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png", compress_level=1)
    Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA").save(
        tmp_path / "rgba.png", compress_level=1
    )
    (tmp_path / "deep.png").write_bytes(png16_bytes(rgb.astype(np.uint16) * 257))
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.tif")
    Image.fromarray(rgb[..., 0].astype(np.int32) * 1000 - 7).save(tmp_path / "i32.tif")
    Image.fromarray(rgb[..., 0].astype(np.float32) / 255).save(tmp_path / "f32.tif")
    Image.fromarray(rgb[:8, :8]).save(tmp_path / "small.png")
    names = ["rgb.png", "rgba.png", "deep.png", "g16.tif", "i32.tif", "f32.tif"]
    proc = _run_isolated(
        f"""
        import os, torch
        from compressai_vlic.image_io import load_image, read_header
        torch.set_num_threads(1)  # no thread pool across fork()
        page = os.sysconf("SC_PAGE_SIZE")
        for name in {names!r}:
            path = os.path.join({str(tmp_path)!r}, name)
            read, write = os.pipe()
            if os.fork() == 0:  # a fresh high-water mark for each file
                load_image({str(tmp_path / "small.png")!r})  # torch's per-process start-up
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")  # resets the peak the child inherited
                with open("/proc/self/statm") as fh:
                    base = int(fh.read().split()[1]) * page
                load_image(path)
                with open("/proc/self/status") as fh:
                    hwm = [line for line in fh if line.startswith("VmHWM:")][0]
                peak = int(hwm.split()[1]) * 1024
                os.write(write, str(peak - base).encode())
                os._exit(0)
            os.wait()
            print(name, os.read(read, 64).decode(), read_header(path).decode_bytes)
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in proc.stdout.splitlines():
        _name, measured, estimate = line.split()
        assert int(measured) <= int(estimate), line


def test_int32_and_float_tiffs_are_scaled_by_their_range_not_clipped(tmp_path):
    values = np.linspace(-50_000, 3_000_000, 64, dtype=np.float64).reshape(8, 8)
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i32.tif")
    loaded = load_image(tmp_path / "i32.tif")
    gray = loaded.tensor[0].double().numpy()
    expected = (values.astype(np.int32) - values.min()) / (values.max() - values.min())
    assert np.abs(gray - expected).max() < 1e-6  # linear in the stored values: nothing clipped
    assert len(np.unique(gray)) == 64
    assert (
        "integer grayscale (I;32S) with values in [-50000, 3e+06] scaled linearly"
        in (loaded.conversions[0])
    )
    # 16-bit data stored in 32 bits keeps the 16-bit scale
    Image.fromarray(np.array([[0, 1000], [65535, 7]], np.int32)).save(tmp_path / "i16in32.tif")
    small = load_image(tmp_path / "i16in32.tif")
    assert np.allclose(small.tensor[0].numpy(), np.array([[0, 1000], [65535, 7]]) / 65535.0)
    # floats outside [0, 1] are stretched, not clipped; a constant one is refused
    floats = np.array([[-2.0, 0.0], [1.0, 6.0]], np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    assert np.allclose(load_image(tmp_path / "f.tif").tensor[0].numpy(), (floats + 2) / 8)
    Image.fromarray(np.full((4, 4), 7.5, np.float32)).save(tmp_path / "flat.tif")
    with pytest.raises(ImageReadError, match=r"flat\.tif: .*constant value 7.5"):
        load_image(tmp_path / "flat.tif")
    Image.fromarray(np.full((4, 4), 0.25, np.float32)).save(tmp_path / "unit.tif")
    assert np.allclose(load_image(tmp_path / "unit.tif").tensor.numpy(), 0.25)


def test_a_write_killed_midway_leaves_no_file_a_reader_takes_and_is_cleaned(tmp_path):
    from compressai_vlic.atomic import atomic_write_bytes, clean_stale_temporaries, is_temporary

    folder = tmp_path / "out"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "done.png")
    proc = _run_isolated(
        f"""
        import os, signal
        from compressai_vlic.atomic import atomic_path
        with atomic_path({str(folder / "new.png")!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(open({str(folder / "done.png")!r}, "rb").read())
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert proc.returncode == -signal.SIGKILL
    left = [p for p in folder.iterdir() if p.name != "done.png"]
    assert len(left) == 1 and is_temporary(left[0]) and left[0].suffix == ".tmp"
    assert find_images(folder) == [folder / "done.png"]  # never read as an input
    # the temporaries of earlier releases (same suffix as the target) are skipped too
    (folder / ".old.png.k2j3h4.tmp.png").write_bytes(b"")
    (folder / ".tmp-x.png").write_bytes(b"")
    assert find_images(folder) == [folder / "done.png"]
    # a later write into the folder removes what the dead writer left
    atomic_write_bytes(folder / "other.bin", b"x")
    assert not left[0].exists()
    assert clean_stale_temporaries(folder) == []


@pytest.fixture
def batch_folder(tmp_path, photos) -> Path:
    """Two good 32x32 photos and bad items: a truncated GIF, a PNG over the memory budget (inside
    the pixel limit), one over the pixel limit, and one smaller than the codec's tile."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.ascontiguousarray(photos["astronaut"][100:132, 180:212])).save(
        folder / "a_good.png"
    )
    Image.fromarray(np.ascontiguousarray(photos["coffee"][100:132, 300:332])).save(
        folder / "b_good.png"
    )
    frames = [
        Image.fromarray(photos["rocket"][:40, :48]),
        Image.fromarray(photos["chelsea"][:40, :48]),
    ]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    data = (tmp_path / "anim.gif").read_bytes()
    for cut in range(len(data) // 2, len(data)):  # the first cut the reader cannot decode
        (folder / "c_cut.gif").write_bytes(data[:cut])
        try:
            load_image(folder / "c_cut.gif")
        except Exception:
            break
    _forged_png(folder / "e_budget.png", 9_000, 8_000, 16, 6)  # 72 MP of 16-bit RGBA
    _forged_png(folder / "f_pixels.png", 20_000, 20_000)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "g_small.png")
    return folder


BAD = ("c_cut.gif", "e_budget.png", "f_pixels.png")  # (16-bit PNGs: in a child process above)


def _cli(*argv: str) -> tuple[int, str]:
    """The real dispatcher in process, with its exit status and stderr."""
    import contextlib
    import io

    from compressai_vlic.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, err.getvalue()


def test_encode_batch_skips_every_bad_item_by_name_and_goes_on(batch_folder, tmp_path):
    out = tmp_path / "streams"
    status, err = _cli(
        "encode", str(batch_folder), "-o", str(out), "--quality", "test", "--max-image-mb", "2048"
    )  # fmt: skip
    assert status == 1, err[-2000:]  # the CLI's status for "some inputs failed"
    assert sorted(p.name for p in out.iterdir()) == ["a_good.vlic", "b_good.vlic", "g_small.vlic"]
    assert "3 input(s) failed" in err
    for name in BAD:
        assert f"{batch_folder / name}: " in err, name
    assert "over the memory budget of 2048 MiB" in err
    assert "exceeds the limit of 100000000 pixels" in err


def test_compare_batch_leaves_out_bad_images_and_goes_on(batch_folder, tmp_path):
    from compressai_vlic.cli.main import main

    status = main(
        ["compare", str(batch_folder), "--codec", "jpeg@q50", "--metrics", "psnr",
         "--distribution-metrics", "none", "--plot-type", "none", "--no-progress",
         "-o", str(tmp_path / "cmp")]
    )  # fmt: skip
    assert status == 1
    rows = (tmp_path / "cmp" / "rows.csv").read_text()
    assert "a_good.png" in rows and "g_small.png" in rows and "c_cut.gif" not in rows
    skipped = (tmp_path / "cmp" / "skipped.json").read_text()
    assert all(name in skipped for name in BAD)


def test_judge_codec_mode_skips_bad_huge_and_small_originals(batch_folder, tmp_path):
    out = tmp_path / "prefs.jsonl"
    (batch_folder / "b_good.png").unlink()  # one good original is enough (two decodes)
    status, err = _cli(
        "judge", "--originals", str(batch_folder), "--codec-quality", "test", "--judge-type", "psnr",
        "--output", str(out), "--no-progress", "--max-image-mb", "2048",
    )  # fmt: skip
    assert status == 1, err[-2000:]
    rows = [line for line in out.read_text().splitlines() if '"pair_id"' in line]
    assert len(rows) == 1 and '"a_good#s0-s1"' in rows[0]
    for name in (*BAD, "g_small.png"):
        assert f"skipped original {Path(name).stem}: " in err, name
    assert "smaller than the codec's 32-px tile" in err
