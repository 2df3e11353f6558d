"""How images reach a judge: 8-bit RGB, lossless PNG, full resolution.

A JPEG-recompressed or downscaled copy would hide exactly the artifacts being judged, so images
are never resized or lossily re-encoded here (OpenAI-style servers also get ``detail: high``).
The content digest hashes the 8-bit pixels and the shape, not the PNG bytes, so the cache key
does not depend on the PNG encoder's settings.
"""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import torch
from PIL import Image

from compressai_vlic import image_io
from compressai_vlic.errors import JudgeError


def _all_finite(image: torch.Tensor) -> bool:
    """No NaN or infinity. On the CPU one numpy reduction: a finite sum has none (the elementwise
    check runs only when the sum is not finite, which overflow alone can also cause); numpy
    keeps this off torch's thread pool, which a judge's many small images only contend for."""
    if image.device.type != "cpu" or image.requires_grad or not image.is_floating_point():
        return bool(torch.isfinite(image).all())
    arr = image.numpy() if image.dtype != torch.bfloat16 else image.float().numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(arr.sum()) or np.isfinite(arr).all())


def check_image(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """Return a (3, H, W) float tensor in [0, 1] or raise :class:`JudgeError` saying what is wrong."""
    if not isinstance(image, torch.Tensor):
        raise JudgeError(f"{what}: expected a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
        raise JudgeError(f"{what}: expected shape (3, H, W), got {tuple(image.shape)}")
    if not _all_finite(image):
        raise JudgeError(f"{what}: contains NaN or infinite values")
    return image


def check_triplet(
    reference: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Validate one 2AFC question: A and B (and the reference, when there is one) are RGB images
    of the same size. ``reference=None`` is a question without an original (reference-free)."""
    ref = None if reference is None else check_image(reference, "reference")
    ia = check_image(a, "image A")
    ib = check_image(b, "image B")
    if ia.shape != ib.shape or (ref is not None and ref.shape != ia.shape):
        shapes = ", ".join(str(tuple(x.shape)) for x in (ref, ia, ib) if x is not None)
        what = "reference, A and B" if ref is not None else "A and B"
        raise JudgeError(f"{what} must have the same size, got {shapes}")
    return ref, ia, ib


def to_uint8_array(image: torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8, rounded the way CompressAI's eval rounds (after checking the image)."""
    return image_io.to_uint8_array(check_image(image))


def array_digest(arr: np.ndarray) -> str:
    """sha256 of an (H, W, 3) uint8 array and its shape."""
    h = hashlib.sha256()
    h.update(f"{arr.shape[0]}x{arr.shape[1]}x{arr.shape[2]}:".encode())
    h.update(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
    return h.hexdigest()


def image_digest(image: torch.Tensor) -> str:
    """Content hash of the 8-bit pixels the judge actually sees."""
    return array_digest(to_uint8_array(image))


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8_array(image), "RGB")


def png_bytes(image: torch.Tensor) -> bytes:
    """Lossless PNG at full resolution."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_data_url(image: torch.Tensor) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def decode_data_url(url: str) -> np.ndarray:
    """(H, W, 3) uint8 from a ``data:image/...;base64,`` URL (used by the loopback server)."""
    if not url.startswith("data:image/") or ";base64," not in url:
        raise JudgeError("not a base64 image data URL")
    payload = base64.b64decode(url.split(";base64,", 1)[1])
    with Image.open(io.BytesIO(payload)) as img:
        return np.asarray(img.convert("RGB"))


def data_url_format(url: str) -> str:
    """The image format the data URL declares ("png", "jpeg", ...)."""
    return url[len("data:image/") : url.index(";")] if url.startswith("data:image/") else ""
