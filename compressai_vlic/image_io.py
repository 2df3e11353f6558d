"""Reading and writing images for the codec, judges and metrics.

Every input becomes an RGB float tensor in [0, 1] of shape (3, H, W). Grayscale, palette, RGBA
and 16-bit inputs are converted, and the conversion is reported (never silent).

Size limit: the width and height in a file's header are read (Pillow's lazy open, no pixel data)
and checked against one pixel limit before any decoding, whatever decoder then reads the pixels,
so a small file that declares a huge image (a decompression bomb) is refused with
:class:`~compressai_vlic.errors.ImageTooLargeError` instead of exhausting memory. The limit is
``max_pixels`` if given, else the environment variable ``COMPRESSAI_VLIC_MAX_PIXELS``, else
:data:`DEFAULT_MAX_PIXELS`; 0 switches it off.

Animated GIF/WebP/TIFF files are read as their first frame (with a notice).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from compressai_vlic.errors import ImageReadError, ImageTooLargeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".gif")

#: Default pixel limit of :func:`load_image`: 100 megapixels (e.g. 12000x8333). Decoding one
#: such image takes about 4 GB (float64 RGB plus the float32 tensor).
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "COMPRESSAI_VLIC_MAX_PIXELS"

_PILLOW_LIMIT_LOCK = threading.Lock()


@dataclass
class LoadedImage:
    """An image as a (3, H, W) float tensor in [0, 1] plus notes on any conversion applied."""

    tensor: torch.Tensor
    path: Path | None = None
    conversions: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])


class _NonFiniteImage(ValueError):
    pass


def _to_float_rgb(img: Image.Image, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img).astype(np.float64)
        maxval = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        notes.append(f"16-bit grayscale ({mode}) scaled to [0, 1] and replicated to RGB")
        arr = np.clip(arr / maxval, 0.0, 1.0)
        return np.repeat(arr[..., None], 3, axis=-1)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if not np.isfinite(arr).all():  # before clipping, which would turn inf into 0 or 1
            bad = int((~np.isfinite(arr)).sum())
            raise _NonFiniteImage(f"{bad} pixel(s) are NaN or infinite")
        notes.append("32-bit float grayscale clipped to [0, 1] and replicated to RGB")
        return np.repeat(np.clip(arr, 0.0, 1.0)[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append(f"{mode} with alpha composited on white")
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    elif mode in ("L", "1"):
        notes.append(f"grayscale ({mode}) replicated to RGB")
        img = img.convert("RGB")
    elif mode != "RGB":
        notes.append(f"{mode} converted to RGB")
        img = img.convert("RGB")
    return np.asarray(img).astype(np.float64) / 255.0


def max_pixels_limit(max_pixels: int | None = None) -> int | None:
    """The pixel limit in force: ``max_pixels``, else ``$COMPRESSAI_VLIC_MAX_PIXELS``, else the
    default; None when switched off (0)."""
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if text:
            try:
                max_pixels = int(float(text))
            except ValueError:
                raise ImageReadError(
                    f"${MAX_PIXELS_ENV}={text!r} is not a number of pixels (0 switches the limit off)"
                ) from None
        else:
            max_pixels = DEFAULT_MAX_PIXELS
    if max_pixels < 0:
        raise ImageReadError(f"max_pixels must be >= 0 (0 = no limit), got {max_pixels}")
    return int(max_pixels) or None


@contextmanager
def _pillow_bomb_guard_off():
    """Pillow's own guard (warn at 89 MP, refuse at 179 MP) is replaced by our limit, which the
    caller has already checked; it is a module global, so it is switched off under a lock."""
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def image_header(path: str | Path) -> tuple[int, int, int]:
    """(width, height, frames) from a file's header, without decoding any pixel data."""
    path = Path(path)
    try:
        with _pillow_bomb_guard_off(), Image.open(path) as img:
            width, height = img.size
            frames = int(getattr(img, "n_frames", 1) or 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(
            f"{path}: not a readable image ({exc.__class__.__name__}: {exc})"
        ) from exc
    return int(width), int(height), frames


def check_pixel_limit(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image file; :class:`ImageTooLargeError` above the pixel limit."""
    width, height, _frames = image_header(path)
    limit = max_pixels_limit(max_pixels)
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            f"pixels; raise it with ${MAX_PIXELS_ENV} (or max_pixels=; 0 = no limit) if this "
            "image is genuine and fits in memory"
        )
    return width, height


def _png_bit_depth(path: Path) -> int:
    """Bit depth from the PNG IHDR chunk (byte 24), without decoding the image."""
    with path.open("rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return 0
    return head[24]


def _read_16bit_png(path: Path, notes: list[str]) -> np.ndarray:
    """Pillow reads 16-bit-per-channel RGB(A)/LA PNGs as 8-bit; torchvision keeps all 16 bits."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        decoded = decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    except RuntimeError as exc:
        raise ImageReadError(
            f"{path}: not a readable PNG ({exc.__class__.__name__}: {exc})"
        ) from exc
    planes = int(decoded.shape[0])
    # uint16 tensors support few operations: widen before leaving torch.
    arr = decoded.to(torch.int32).numpy().transpose(1, 2, 0).astype(np.float64) / 65535.0
    alpha = planes in (2, 4)
    grayscale = planes in (1, 2)
    color = arr[..., : planes - 1] if alpha else arr
    kind = "grayscale" if grayscale else "RGB"
    if grayscale:
        color = np.repeat(color, 3, axis=-1)
    if alpha:
        a = arr[..., planes - 1 :]
        color = color * a + (1.0 - a)
        notes.append(f"16-bit {kind} with alpha composited on white")
    notes.append(
        f"16-bit {kind} PNG scaled to [0, 1]"
        + (" and replicated to RGB" if kind == "grayscale" else "")
    )
    return color


def load_image(path: str | Path, max_pixels: int | None = None) -> LoadedImage:
    """Read one image file; raise :class:`ImageReadError` with the reason when it cannot be read.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this before decoding them
            (:class:`ImageTooLargeError`); default ``$COMPRESSAI_VLIC_MAX_PIXELS`` or
            :data:`DEFAULT_MAX_PIXELS`; 0 = no limit.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    check_pixel_limit(path, max_pixels)  # from the header, before any decoder runs
    notes: list[str] = []
    try:
        if _png_bit_depth(path) == 16:
            arr = _read_16bit_png(path, notes)
        else:
            with _pillow_bomb_guard_off(), Image.open(path) as img:
                img.load()
                if getattr(img, "n_frames", 1) > 1:
                    notes.append("multi-frame image: first frame used")
                # Cameras store rotation in EXIF; apply it so the output looks like the input.
                orientation = img.getexif().get(0x0112, 1)
                if orientation not in (0, 1):
                    img = ImageOps.exif_transpose(img)
                    notes.append(f"EXIF orientation {orientation} applied")
                arr = _to_float_rgb(img, notes)
    except _NonFiniteImage as exc:
        raise ImageReadError(
            f"{path}: {exc} (a float image with missing values); replace them (e.g. with 0) "
            "before coding or judging this image"
        ) from None
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        Image.DecompressionBombError,
    ) as exc:
        raise ImageReadError(
            f"{path}: not a readable image ({exc.__class__.__name__}: {exc})"
        ) from exc
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(f"{path}: unsupported image layout {arr.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()
    return LoadedImage(tensor=tensor, path=path, conversions=notes)


def save_png(tensor: torch.Tensor, path: str | Path, overwrite: bool = True) -> Path:
    """Write a (3, H, W) or (1, 3, H, W) tensor in [0, 1] as an 8-bit RGB PNG (atomically).

    Args:
        tensor: the image.
        path: the PNG file.
        overwrite: replace an existing file (default); False raises
            :class:`~compressai_vlic.atomic.OutputExistsError` instead.
    """
    path = Path(path)
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError("save_png takes a single image")
        tensor = tensor[0]
    from compressai_vlic.atomic import atomic_path

    with atomic_path(
        path, overwrite
    ) as tmp:  # a full disk leaves the old file (or none), never a torn PNG
        Image.fromarray(to_uint8_array(tensor), "RGB").save(tmp, format="PNG")
    return path


def quantize_uint8(tensor: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (any shape) -> uint8 on the CPU, rounded as CompressAI's eval rounds.

    The one float-to-8-bit conversion of the package: what is stored, hashed, judged and saved.
    """
    return tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def to_uint8_array(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) float image in [0, 1] -> a contiguous (H, W, 3) uint8 array (PIL, PNG)."""
    return np.ascontiguousarray(quantize_uint8(image).numpy().transpose(1, 2, 0))


def to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits the way CompressAI's eval does, returned as float in [0, 1]."""
    return tensor.clamp(0, 1).mul(255).round().div(255)


def find_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """All image files under a folder (sorted), or the file itself."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ImageReadError(f"{root}: no such file or folder")
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
