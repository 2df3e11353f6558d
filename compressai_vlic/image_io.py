"""Reading and writing images for the codec, judges and metrics.

Every input becomes an RGB float tensor in [0, 1] of shape (3, H, W). Grayscale, palette, RGBA,
16-bit, 32-bit integer and float inputs are converted, and the conversion is reported (never
silent). Every format is decoded by Pillow; a file that cannot be decoded raises
:class:`~compressai_vlic.errors.ImageReadError` naming it, whatever went wrong inside the decoder.

Limits, both checked on the file's header (Pillow's lazy open, no pixel data) before any decoding,
so a small file that declares a huge image (a decompression bomb) is refused with
:class:`~compressai_vlic.errors.ImageTooLargeError` instead of exhausting memory:

- pixels: ``max_pixels`` if given, else ``$COMPRESSAI_VLIC_MAX_PIXELS``, else
  :data:`DEFAULT_MAX_PIXELS`;
- memory: the peak memory the decode would take (estimated from the size and the pixel layout),
  ``max_image_mb`` (MiB) if given, else ``$COMPRESSAI_VLIC_MAX_IMAGE_MB``, else half of the
  machine's physical memory (:func:`default_max_image_mb`).

0 switches either limit off. Animated GIF/WebP/PNG/TIFF files are read as their first frame
(with a notice).
"""

from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from compressai_vlic.atomic import is_temporary
from compressai_vlic.errors import ImageReadError, ImageTooLargeError

# The limits' defaults live in options (command-line parsers read them without torch).
from compressai_vlic.options import IMAGE_MAX_PIXELS as DEFAULT_MAX_PIXELS
from compressai_vlic.options import MAX_IMAGE_MB_ENV, MAX_PIXELS_ENV

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".gif")

#: Budget when the physical memory cannot be read (MiB).
FALLBACK_MAX_IMAGE_MB = 8192

_PILLOW_LIMIT_LOCK = threading.Lock()
_MIB = 1 << 20
_DECODE_OVERHEAD = 32 * _MIB  # decoder state and allocator slack, whatever the size

# Pillow raw modes of 16-bit-per-channel colour data (PNG, TIFF), mapped to the raw mode that
# unpacks the other byte of every sample: Pillow keeps one byte, two passes keep both.
_OTHER_BYTE = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
}
# 16-bit grayscale with alpha: unpacked as four 8-bit planes (L high, L low, A high, A low).
_LA16 = {"LA;16B": "RGBA"}
# Unsigned integer raw modes of grayscale ("I;16" family) -> their white level.
_UNSIGNED_WHITE = {
    "I;16": 65535,
    "I;16B": 65535,
    "I;16L": 65535,
    "I;16N": 65535,
    "I;16R": 65535,
    "I;12": 4095,
}


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


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding any pixel data.

    Args:
        width, height: the first frame's size in pixels (before any EXIF rotation).
        mode: Pillow's image mode (``RGB``, ``I;16``, ``F``, ...).
        rawmode: how the samples are stored (``RGB;16B``, ``I;32S``, ...), "" if unknown.
        animated: the file holds more than one frame.
        orientation: the EXIF orientation tag (1 = none).
        format: Pillow's format name (``PNG``, ``TIFF``, ...).
    """

    width: int
    height: int
    mode: str
    rawmode: str
    animated: bool
    orientation: int
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_bytes(self) -> int:
        """Peak memory :func:`load_image` takes for this image (an upper estimate)."""
        return self.pixels * _bytes_per_pixel(self) + _DECODE_OVERHEAD


class _NonFiniteImage(ValueError):
    pass


def _bytes_per_pixel(header: ImageHeader) -> int:
    """Peak bytes per pixel of the decode below: Pillow's image(s), the numpy view, the float
    tensor; measured per path (tests/test_image_limits.py) and rounded up."""
    if header.rawmode in _OTHER_BYTE or header.rawmode in _LA16:  # two passes / byte planes
        per = 64
    elif header.mode in ("I", "F"):
        per = 48
    elif header.mode.startswith("I;16") or header.mode in ("L", "1"):
        per = 32
    elif header.mode in ("RGBA", "LA", "PA", "P"):  # alpha compositing copies
        per = 48
    else:
        per = 36
    if header.orientation not in (0, 1):
        per += 8  # the rotated copy
    return per


def _rawmode(img: Image.Image) -> str:
    tile = getattr(img, "tile", None) or []
    if not tile:
        return ""
    args = tile[0].args
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _with_rawmode(img: Image.Image, rawmode: str) -> None:
    """Make Pillow's own decoder unpack the tiles with another raw mode of the same bit width."""
    tiles = []
    for tile in img.tile:
        args = tile.args
        args = (rawmode, *args[1:]) if isinstance(args, tuple) else rawmode
        tiles.append(tile._replace(args=args))
    img.tile = tiles


def _white_level(img: Image.Image, rawmode: str, notes: list[str]) -> np.ndarray:
    """A one-channel integer or float image as float32 in [0, 1], never clipped.

    Unsigned 12/16-bit samples are divided by their white level. Samples without one (signed or
    32-bit integers, floats outside [0, 1]) are scaled linearly from their real range, or by
    65535 when they lie within [0, 65535] (16-bit data stored in 32 bits).
    """
    mode = img.mode
    arr = np.asarray(img)
    if mode == "F":
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise _NonFiniteImage(f"{bad} pixel(s) are NaN or infinite")
        low, high = float(arr.min()), float(arr.max())
        if low >= 0.0 and high <= 1.0:
            notes.append("32-bit float grayscale with values in [0, 1] kept")
            return arr.astype(np.float32)
        return _stretch(arr, low, high, "32-bit float", notes)
    white = _UNSIGNED_WHITE.get(rawmode)
    if white is None and mode.startswith("I;16") and not mode.endswith("S"):
        white = 65535
    bits = "12-bit" if white == 4095 else "16-bit"
    if white is not None:
        notes.append(f"{bits} grayscale ({rawmode or mode}) scaled to [0, 1] by {white}")
        return arr.astype(np.float32) / np.float32(white)
    low, high = float(arr.min()), float(arr.max())
    kind = f"integer grayscale ({rawmode or mode})"
    if low >= 0 and high <= 65535:
        notes.append(f"{kind}, values in [{low:g}, {high:g}], scaled to [0, 1] by 65535")
        return (arr.astype(np.float64) / 65535.0).astype(np.float32)
    return _stretch(arr, low, high, kind, notes)


def _stretch(arr: np.ndarray, low: float, high: float, kind: str, notes: list[str]) -> np.ndarray:
    if not high > low:
        raise ImageReadError(
            f"{kind} image with the constant value {low:g}, outside [0, 1]: no range to scale; "
            "convert it to an 8- or 16-bit image first"
        )
    notes.append(f"{kind} with values in [{low:g}, {high:g}] scaled linearly to [0, 1]")
    return ((arr.astype(np.float64) - low) / (high - low)).astype(np.float32)


def _gray_to_tensor(gray: np.ndarray) -> torch.Tensor:
    plane = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))
    return plane.unsqueeze(0).expand(3, *plane.shape).contiguous()


def _rgb8_to_tensor(img: Image.Image) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only view, copied at once by .contiguous()
        warnings.simplefilter("ignore", UserWarning)
        planes = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).contiguous()  # uint8
    return planes.float().div_(255.0)


def _deep_color(path: Path, rawmode: str, fmt: str, notes: list[str]) -> torch.Tensor:
    """16-bit-per-channel colour through Pillow's own decoders: Pillow keeps one byte of every
    sample, so the file is unpacked twice (high and low bytes) or, for 16-bit grayscale with
    alpha, as four byte planes."""
    if rawmode in _LA16:
        with _open(path) as img:
            _with_rawmode(img, _LA16[rawmode])
            img.load()
            planes = np.asarray(img).astype(np.float32)
        gray = (planes[..., 0] * 256 + planes[..., 1]) / 65535.0
        alpha = (planes[..., 2] * 256 + planes[..., 3]) / 65535.0
        color = np.repeat((gray * alpha + (1.0 - alpha))[..., None], 3, axis=-1)
        notes.append("16-bit grayscale with alpha composited on white")
        notes.append(f"16-bit grayscale {fmt} scaled to [0, 1] and replicated to RGB")
        return torch.from_numpy(np.ascontiguousarray(color.transpose(2, 0, 1)))
    big_endian = rawmode.endswith("B")
    parts = {}
    for raw in (rawmode, _OTHER_BYTE[rawmode]):
        with _open(path) as img:
            _with_rawmode(img, raw)
            img.load()
            parts[raw] = np.asarray(img)
    # ";16B" unpacks the first byte of each sample, ";16L" the second one.
    first, second = parts[rawmode], parts[_OTHER_BYTE[rawmode]]
    high, low = (first, second) if big_endian else (second, first)
    del parts, first, second
    arr = (high.astype(np.float32) * 256 + low) / 65535.0
    del high, low
    if arr.shape[-1] == 4:
        alpha = arr[..., 3:]
        arr = arr[..., :3] * alpha + (1.0 - alpha)
        notes.append("16-bit RGB with alpha composited on white")
    notes.append(f"16-bit RGB {fmt} scaled to [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


# EXIF orientation -> the (3, H, W) tensor operation ImageOps.exif_transpose applies.
_ORIENT = {
    2: lambda t: t.flip(2),
    3: lambda t: t.flip(1, 2),
    4: lambda t: t.flip(1),
    5: lambda t: t.transpose(1, 2),
    6: lambda t: torch.rot90(t, -1, (1, 2)),
    7: lambda t: t.transpose(1, 2).flip(1, 2),
    8: lambda t: torch.rot90(t, 1, (1, 2)),
}


def _to_tensor(img: Image.Image, rawmode: str, notes: list[str]) -> torch.Tensor:
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;"):
        gray = _white_level(img, rawmode, notes)
        notes[-1] += " and replicated to RGB"
        return _gray_to_tensor(gray)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append(f"{mode} with alpha composited on white")
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
        del rgba, background
    elif mode in ("L", "1"):
        notes.append(f"grayscale ({mode}) replicated to RGB")
        return _gray_to_tensor(np.asarray(img.convert("L")).astype(np.float32) / np.float32(255))
    elif mode != "RGB":
        notes.append(f"{mode} converted to RGB")
        img = img.convert("RGB")
    return _rgb8_to_tensor(img)


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


def default_max_image_mb() -> int:
    """Half of the machine's physical memory in MiB (:data:`FALLBACK_MAX_IMAGE_MB` if unknown):
    one image never takes the memory the rest of the run needs."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return FALLBACK_MAX_IMAGE_MB
    return max(1, int(total // 2 // _MIB)) if total > 0 else FALLBACK_MAX_IMAGE_MB


def max_image_memory(max_image_mb: float | None = None) -> int | None:
    """The decode memory budget in force, in bytes: ``max_image_mb`` (MiB), else
    ``$COMPRESSAI_VLIC_MAX_IMAGE_MB``, else :func:`default_max_image_mb`; None when off (0)."""
    if max_image_mb is None:
        text = os.environ.get(MAX_IMAGE_MB_ENV, "").strip()
        if text:
            try:
                max_image_mb = float(text)
            except ValueError:
                raise ImageReadError(
                    f"${MAX_IMAGE_MB_ENV}={text!r} is not a number of MiB (0 switches the "
                    "budget off)"
                ) from None
        else:
            max_image_mb = default_max_image_mb()
    if not max_image_mb >= 0:
        raise ImageReadError(f"max_image_mb must be >= 0 (0 = no budget), got {max_image_mb}")
    return int(max_image_mb * _MIB) or None


@contextmanager
def _pillow_bomb_guard_off():
    """Pillow's own guard (warn at 89 MP, refuse at 179 MP) is replaced by our limits, which the
    caller has already checked; it is a module global, so it is switched off under a lock."""
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextmanager
def _open(path: Path):
    with _pillow_bomb_guard_off():
        img = Image.open(path)
    with img:
        yield img


def _unreadable(path: Path, exc: BaseException) -> ImageReadError:
    return ImageReadError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation, read without decoding: Pillow's PNG reader decodes the whole image
    to look for an eXIf chunk after the pixel data, so a PNG counts only one placed before it."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except (TypeError, ValueError):
        return 1


def read_header(path: str | Path) -> ImageHeader:
    """The :class:`ImageHeader` of an image file, without decoding any pixel data.

    Raises :class:`ImageReadError` (naming the file) for anything Pillow cannot identify.
    """
    path = Path(path)
    try:
        with _open(path) as img:
            width, height = img.size
            rawmode = _rawmode(img)
            return ImageHeader(
                width=int(width),
                height=int(height),
                mode=img.mode,
                rawmode=rawmode,
                animated=bool(getattr(img, "is_animated", False)),
                orientation=_orientation(img),
                format=str(img.format or ""),
            )
    except MemoryError as exc:
        raise ImageTooLargeError(f"{path}: out of memory reading the header") from exc
    except Exception as exc:  # a hostile header can make any plugin raise anything
        raise _unreadable(path, exc) from exc


def image_header(path: str | Path) -> tuple[int, int, int]:
    """(width, height, frames) from a file's header, without decoding any pixel data; frames is
    1, or 2 for any animated file (counting them all would decode every frame)."""
    header = read_header(path)
    return header.width, header.height, 2 if header.animated else 1


def check_image_limits(
    path: str | Path, max_pixels: int | None = None, max_image_mb: float | None = None
) -> ImageHeader:
    """The header of an image file; :class:`ImageTooLargeError` when it is over the pixel limit
    or its decode would exceed the memory budget (see the module docstring)."""
    header = read_header(path)
    limit = max_pixels_limit(max_pixels)
    if limit is not None and header.pixels > limit:
        raise ImageTooLargeError(
            f"{path}: {header.width}x{header.height} = {header.pixels} pixels exceeds the limit "
            f"of {limit} pixels; raise it with ${MAX_PIXELS_ENV} (--max-pixels; 0 = no limit) "
            "if this image is genuine and fits in memory"
        )
    budget = max_image_memory(max_image_mb)
    if budget is not None and header.decode_bytes > budget:
        raise ImageTooLargeError(
            f"{path}: decoding this {header.width}x{header.height} {header.mode} image takes "
            f"about {header.decode_bytes / _MIB:.0f} MiB, over the memory budget of "
            f"{budget / _MIB:.0f} MiB; raise it with ${MAX_IMAGE_MB_ENV} (--max-image-mb; "
            "0 = no budget) if the machine has the memory"
        )
    return header


def check_pixel_limit(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image file; :class:`ImageTooLargeError` above the pixel limit."""
    header = check_image_limits(path, max_pixels, max_image_mb=0)
    return header.width, header.height


def load_image(
    path: str | Path, max_pixels: int | None = None, max_image_mb: float | None = None
) -> LoadedImage:
    """Read one image file; raise :class:`ImageReadError` with the reason when it cannot be read.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this before decoding them
            (:class:`ImageTooLargeError`); default ``$COMPRESSAI_VLIC_MAX_PIXELS`` or
            :data:`DEFAULT_MAX_PIXELS`; 0 = no limit.
        max_image_mb: refuse images whose decode would take more memory than this (MiB),
            before decoding them (:class:`ImageTooLargeError`); default
            ``$COMPRESSAI_VLIC_MAX_IMAGE_MB`` or half the physical memory; 0 = no budget.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    header = check_image_limits(path, max_pixels, max_image_mb)  # before any decoder runs
    notes: list[str] = []
    try:
        if header.rawmode in _OTHER_BYTE or header.rawmode in _LA16:
            tensor = _deep_color(path, header.rawmode, header.format, notes)
            if header.orientation in _ORIENT:
                tensor = _ORIENT[header.orientation](tensor).contiguous()
                notes.append(f"EXIF orientation {header.orientation} applied")
        else:
            with _open(path) as img:
                img.load()
                if header.animated:
                    notes.append("multi-frame image: first frame used")
                # Cameras store rotation in EXIF; apply it so the output looks like the input.
                orientation = _orientation(img)  # after load(): a PNG's late eXIf counts too
                if orientation not in (0, 1):
                    img = ImageOps.exif_transpose(img)
                    notes.append(f"EXIF orientation {orientation} applied")
                tensor = _to_tensor(img, header.rawmode, notes)
    except _NonFiniteImage as exc:
        raise ImageReadError(
            f"{path}: {exc} (a float image with missing values); replace them (e.g. with 0) "
            "before coding or judging this image"
        ) from None
    except ImageReadError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except MemoryError as exc:
        raise ImageTooLargeError(
            f"{path}: ran out of memory decoding this {header.width}x{header.height} image; "
            f"lower ${MAX_IMAGE_MB_ENV} (--max-image-mb) to refuse such images up front"
        ) from exc
    except Exception as exc:  # a damaged file can make any decoder raise anything
        raise _unreadable(path, exc) from exc
    if tensor.dim() != 3 or tensor.shape[0] != 3 or tensor.shape[1] < 1 or tensor.shape[2] < 1:
        raise ImageReadError(f"{path}: unsupported image layout {tuple(tensor.shape)}")
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
    """All image files under a folder (sorted), or the file itself; the temporary files of an
    interrupted write (:func:`compressai_vlic.atomic.is_temporary`) are never listed."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ImageReadError(f"{root}: no such file or folder")
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_temporary(p)
    )
