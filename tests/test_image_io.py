"""Image reading on real photos in every format and layout the codec accepts, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from png16 import write_png16

from compressai_vlic.errors import ImageReadError
from compressai_vlic.image_io import find_images, load_image, save_png, to_uint8


@pytest.fixture(scope="module")
def crop(photos) -> np.ndarray:
    """A 48x64 uint8 RGB crop of a real photo."""
    return np.ascontiguousarray(photos["astronaut"][100:148, 180:244])


def _as_float(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255.0)


def test_rgb_png_is_exact_and_unconverted(tmp_path, crop):
    Image.fromarray(crop).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.conversions == []
    assert loaded.size == (48, 64)
    assert torch.equal(loaded.tensor, _as_float(crop))


def test_grayscale_is_replicated_with_a_notice(tmp_path, crop):
    gray = np.asarray(Image.fromarray(crop).convert("L"))
    Image.fromarray(gray).save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.conversions == ["grayscale (L) replicated to RGB"]
    assert torch.equal(loaded.tensor[0], loaded.tensor[2])
    assert torch.equal(loaded.tensor[1], torch.from_numpy(gray / 255.0).float())


def test_rgba_is_composited_on_white(tmp_path, crop):
    alpha = np.full(crop.shape[:2], 255, np.uint8)
    alpha[:, :32] = 0
    Image.fromarray(np.dstack([crop, alpha]), "RGBA").save(tmp_path / "t.png")
    loaded = load_image(tmp_path / "t.png")
    assert loaded.conversions == ["RGBA with alpha composited on white"]
    assert torch.equal(loaded.tensor[:, :, :32], torch.ones(3, 48, 32))
    assert torch.allclose(loaded.tensor[:, :, 32:], _as_float(crop)[:, :, 32:], atol=1 / 255)


def test_palette_with_transparency_is_composited(tmp_path, crop):
    img = Image.fromarray(crop).quantize(16)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    loaded = load_image(tmp_path / "p.png")
    assert loaded.conversions == ["P with alpha composited on white"]


def test_16bit_rgb_png_keeps_all_bits(tmp_path, crop):
    rng = np.random.default_rng(0)
    deep = crop.astype(np.uint16) * 256 + rng.integers(0, 256, crop.shape, dtype=np.uint16)
    write_png16(tmp_path / "d.png", deep)
    loaded = load_image(tmp_path / "d.png")
    assert loaded.conversions == ["16-bit RGB PNG scaled to [0, 1]"]
    expected = torch.from_numpy(deep.transpose(2, 0, 1) / 65535.0).float()
    assert torch.allclose(loaded.tensor, expected, atol=1e-6)
    # The low byte matters: Pillow alone would have dropped it.
    assert (loaded.tensor - _as_float(crop)).abs().max() > 1 / 512


def test_16bit_grayscale_alpha_png(tmp_path, crop):
    gray = np.asarray(Image.fromarray(crop).convert("L")).astype(np.uint16) * 257
    alpha = np.full_like(gray, 65535)
    alpha[:10] = 0
    write_png16(tmp_path / "la.png", np.dstack([gray, alpha]))
    loaded = load_image(tmp_path / "la.png")
    assert "16-bit grayscale with alpha composited on white" in loaded.conversions
    assert torch.equal(loaded.tensor[:, :10], torch.ones(3, 10, 64))
    assert torch.allclose(loaded.tensor[0, 10:], torch.from_numpy(gray[10:] / 65535.0).float())


def test_16bit_grayscale_tiff_through_pillow(tmp_path, crop):
    gray = np.asarray(Image.fromarray(crop).convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray).save(tmp_path / "g16.tif")
    loaded = load_image(tmp_path / "g16.tif")
    assert loaded.conversions[0].startswith("16-bit grayscale")
    assert torch.allclose(loaded.tensor[1], torch.from_numpy(gray / 65535.0).float())


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_lossy_formats_load_close_to_the_photo(tmp_path, crop, suffix):
    Image.fromarray(crop).save(tmp_path / f"x{suffix}", quality=95)
    loaded = load_image(tmp_path / f"x{suffix}")
    assert loaded.conversions == []
    assert loaded.size == (48, 64)
    assert (loaded.tensor - _as_float(crop)).abs().mean() < 0.03


def test_exif_rotation_is_applied(tmp_path, crop):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(crop).save(tmp_path / "r.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.size == (64, 48)
    assert loaded.conversions == ["EXIF orientation 6 applied"]


def test_cmyk_jpeg_is_converted(tmp_path, crop):
    Image.fromarray(crop).convert("CMYK").save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").conversions == ["CMYK converted to RGB"]


def test_unreadable_files_raise_the_typed_error(tmp_path, crop):
    (tmp_path / "junk.png").write_bytes(b"definitely not an image")
    with pytest.raises(ImageReadError, match=r"junk\.png: not a readable image"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    Image.fromarray(crop).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg"):
        load_image(tmp_path / "cut.jpg")
    write_png16(tmp_path / "deep.png", crop.astype(np.uint16) * 257)
    data = (tmp_path / "deep.png").read_bytes()
    (tmp_path / "cut16.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut16\.png: not a readable image"):
        load_image(tmp_path / "cut16.png")


def test_save_png_round_trips_8bit(tmp_path, crop):
    x = _as_float(crop) + 0.001 * torch.randn(3, 48, 64)
    path = save_png(x[None], tmp_path / "sub" / "o.png")
    assert torch.equal(load_image(path).tensor, to_uint8(x))
    with pytest.raises(ValueError, match="single image"):
        save_png(torch.zeros(2, 3, 4, 4), tmp_path / "two.png")


def test_find_images_recurses_and_sorts(tmp_path, crop):
    for rel in ["b.png", "a/c.JPG", "a/d.txt", "a/e/f.webp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/c.JPG", "a/e/f.webp", "b.png"]
    assert find_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    with pytest.raises(ImageReadError, match="no such file or folder"):
        find_images(tmp_path / "nope")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _forged_png(path, width: int, height: int, bit_depth: int) -> None:
    """A few hundred bytes that declare a huge image (a decompression bomb's header)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (width * 3 * bit_depth // 8)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(row * 4))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("width,height,depth", [(30000, 30000, 16), (12000, 12000, 8)])
def test_huge_headers_are_refused_before_decoding(tmp_path, monkeypatch, width, height, depth):
    from compressai_vlic import image_io
    from compressai_vlic.errors import ImageTooLargeError

    monkeypatch.delenv("COMPRESSAI_VLIC_MAX_PIXELS", raising=False)
    path = tmp_path / "bomb.png"
    _forged_png(path, width, height, depth)
    assert path.stat().st_size < 1000

    def no_decoding(*args, **kwargs):
        raise AssertionError("a decoder ran on an image over the pixel limit")

    monkeypatch.setattr(image_io, "_deep_color", no_decoding)
    monkeypatch.setattr(image_io, "_to_tensor", no_decoding)
    with pytest.raises(ImageTooLargeError, match=rf"{width}x{height} .*COMPRESSAI_VLIC_MAX_PIXELS"):
        load_image(path)


def test_pixel_limit_is_overridable_by_env_and_argument(tmp_path, monkeypatch, crop):
    from compressai_vlic.errors import ImageTooLargeError

    Image.fromarray(crop).save(tmp_path / "a.png")
    write_png16(tmp_path / "d.png", crop.astype(np.uint16) * 257)
    monkeypatch.setenv("COMPRESSAI_VLIC_MAX_PIXELS", "3000")  # the crop has 48 * 64 = 3072
    for name in ("a.png", "d.png"):
        with pytest.raises(ImageTooLargeError, match="exceeds the limit of 3000 pixels"):
            load_image(tmp_path / name)
        assert load_image(tmp_path / name, max_pixels=3072).size == (48, 64)
        assert load_image(tmp_path / name, max_pixels=0).size == (48, 64)  # 0: no limit
    monkeypatch.setenv("COMPRESSAI_VLIC_MAX_PIXELS", "lots")
    with pytest.raises(ImageReadError, match="not a number of pixels"):
        load_image(tmp_path / "a.png")


def test_gif_is_found_and_read_as_its_first_frame(tmp_path, crop):
    frames = [Image.fromarray(crop), Image.fromarray(255 - crop)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert find_images(tmp_path) == [tmp_path / "anim.gif"]
    loaded = load_image(tmp_path / "anim.gif")
    assert loaded.size == (48, 64)
    assert "multi-frame image: first frame used" in loaded.conversions
    # the first frame (a palette approximation of the crop), not the inverted second one
    assert (loaded.tensor - _as_float(crop)).abs().mean() < 0.1


def test_nan_in_a_float_tiff_is_named(tmp_path):
    arr = np.full((8, 8), 0.5, np.float32)
    arr[2, 3] = np.nan
    arr[4, 4] = np.inf
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=r"f\.tif: 2 pixel\(s\) are NaN or infinite"):
        load_image(tmp_path / "f.tif")
    arr[2, 3] = arr[4, 4] = 0.25
    Image.fromarray(arr, mode="F").save(tmp_path / "ok.tif")
    assert load_image(tmp_path / "ok.tif").size == (8, 8)
