"""Codecs under comparison, each producing real bytes and the image a decoder returns.

- Classical codecs through Pillow (JPEG, WebP, AVIF when this Pillow has it) at *matched rates*:
  a binary search on the integer quality finds the setting whose real file size is closest to a
  requested bpp (``0.25``), or a fixed quality is used (``q50``).
- CompressAI models: zoo weights already in the torch hub cache (never downloaded) or a
  checkpoint file (``from_state_dict`` + ``update(force=True)``, as ``eval_model`` does).
- VLIC: ``vlic:WEIGHTS``, any weights spec of :func:`compressai_vlic.pretrained.load_weights`
  (``vlic:tiny``, ``vlic:random:test``, ``vlic:PATH``, ``vlic:owner/name``).

Spec strings (CLI; ``NAME=SPEC`` sets the codec's name): ``jpeg``, ``webp@0.1,0.3``, ``jpeg@q30,q70``, ``avif``,
``compressai:bmshj2018-factorized@1,2,3``, ``compressai-ckpt:ARCH:PATH``, ``vlic:WEIGHTS`` (older
aliases: ``vlic@Q`` random weights, ``vlic-pretrained@Q``, ``vlic-ckpt:PATH``),
``folder:PATH[@POINT,...]`` (reconstructions on disk) and
``hub:REPO@ENTRY,...`` (a torch.hub codec); the last two are in :mod:`.external`.
"""

from __future__ import annotations

import io
import math
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, features

from compressai_vlic.checkpoints import checkpoint_label
from compressai_vlic.digest import file_sha256
from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.image_io import to_uint8_array

PILLOW_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
PILLOW_QUALITY_RANGE = {"jpeg": (1, 95), "webp": (0, 100), "avif": (0, 100)}


@dataclass(frozen=True)
class CodedImage:
    """One image through one codec at one rate point: real size, reconstruction, timings."""

    num_bytes: int
    bpp: float
    reconstruction: torch.Tensor  # (3, H, W) float in [0, 1], 8-bit values
    setting: str  # what produced it, e.g. "q=37" or "quality=test seed=0"
    encode_s: float
    decode_s: float
    target_bpp: float | None = None  # for matched-rate codecs: what was asked for


class Codec(ABC):
    """A codec with a fixed list of rate points; ``code`` is deterministic for caching."""

    name: str
    description: str

    @property
    @abstractmethod
    def rate_points(self) -> list[str]:
        """Labels of the rate points this codec is evaluated at."""

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """Everything that changes the output (settings, weight hashes), as a string."""

    @abstractmethod
    def code(self, image: torch.Tensor, rate_point: str) -> CodedImage:
        """Encode and decode a (3, H, W) image in [0, 1] at ``rate_point``."""


def _from_uint8_array(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 255.0


# --------------------------------------------------------------------------- Pillow codecs
def pillow_format_available(format_type: str) -> bool:
    """Whether this Pillow build can write the format (AVIF needs Pillow >= 11.2 with libavif)."""
    feature = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}.get(format_type)
    return feature is not None and bool(features.check(feature))


class PillowCodec(Codec):
    """JPEG / WebP / AVIF through Pillow; rate points are target bpps or fixed ``qNN`` qualities."""

    def __init__(self, format_type: str, rate_points: list[str] | None = None) -> None:
        if format_type not in PILLOW_FORMATS:
            raise ConfigError(
                f"unknown Pillow codec {format_type!r}; choose {sorted(PILLOW_FORMATS)}"
            )
        if not pillow_format_available(format_type):
            raise ConfigError(f"this Pillow build cannot write {format_type.upper()}")
        self.format_type = format_type
        self.name = format_type
        self.description = f"{PILLOW_FORMATS[format_type]} (Pillow {Image.__version__})"
        self._rate_points = list(rate_points or ["0.25", "0.5", "1.0"])
        for point in self._rate_points:
            _parse_pillow_point(point)

    @property
    def rate_points(self) -> list[str]:
        return self._rate_points

    @property
    def cache_key(self) -> str:
        return f"pillow:{self.format_type}:{Image.__version__}"

    def encode(self, arr: np.ndarray, quality: int) -> bytes:
        """Real file bytes at an integer quality (defaults of Pillow otherwise)."""
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(
            buf, format=PILLOW_FORMATS[self.format_type], quality=quality
        )
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))

    def match_bpp(self, arr: np.ndarray, target_bpp: float) -> tuple[int, bytes]:
        """Binary search on quality for the file whose bpp is closest to ``target_bpp``.

        File size grows with quality (monotone up to small wiggles): find the last quality at or
        below the target, then keep whichever neighbour is closer.
        """
        pixels = arr.shape[0] * arr.shape[1]
        lo, hi = PILLOW_QUALITY_RANGE[self.format_type]
        cache: dict[int, bytes] = {}

        def size_bpp(q: int) -> float:
            if q not in cache:
                cache[q] = self.encode(arr, q)
            return len(cache[q]) * 8 / pixels

        if size_bpp(lo) >= target_bpp:
            best = lo
        elif size_bpp(hi) <= target_bpp:
            best = hi
        else:
            a, b = lo, hi  # invariant: bpp(a) < target <= bpp(b)
            while b - a > 1:
                mid = (a + b) // 2
                if size_bpp(mid) < target_bpp:
                    a = mid
                else:
                    b = mid
            best = min((a, b), key=lambda q: abs(size_bpp(q) - target_bpp))
        return best, cache[best]

    def code(self, image: torch.Tensor, rate_point: str) -> CodedImage:
        arr = to_uint8_array(image)
        kind, value = _parse_pillow_point(rate_point)
        start = time.perf_counter()
        if kind == "q":
            quality, data = int(value), self.encode(arr, int(value))
        else:
            quality, data = self.match_bpp(arr, value)
        encode_s = time.perf_counter() - start
        return self.decoded(arr, quality, data, encode_s, None if kind == "q" else value)

    def decoded(
        self, arr: Any, quality: int, data: bytes, encode_s: float, target_bpp: float | None
    ) -> CodedImage:
        """Decode ``data`` (timed) into the :class:`CodedImage` of an ``arr`` coded at ``quality``."""
        start = time.perf_counter()
        rec = self.decode(data)
        decode_s = time.perf_counter() - start
        return CodedImage(
            num_bytes=len(data),
            bpp=len(data) * 8 / (arr.shape[0] * arr.shape[1]),
            reconstruction=_from_uint8_array(rec),
            setting=f"q={quality}",
            encode_s=encode_s,
            decode_s=decode_s,
            target_bpp=target_bpp,
        )


def _parse_pillow_point(point: str) -> tuple[str, float]:
    text = point.strip().lower()
    try:
        if text.startswith("q"):
            return "q", float(int(text[1:]))
        value = float(text.removesuffix("bpp"))
    except ValueError as exc:
        raise ConfigError(
            f"rate point {point!r}: give a target bpp (0.25) or a quality (q50)"
        ) from exc
    if not value > 0:
        raise ConfigError(f"rate point {point!r}: target bpp must be > 0")
    return "bpp", value


# --------------------------------------------------------------------------- learned codecs
def _run_compressai_model(
    net: Any, image: torch.Tensor, device: torch.device
) -> tuple[int, torch.Tensor, float, float]:
    """CompressAI eval_model's bitstream path: pad to 64, compress, decompress, unpad, count bytes."""
    from compressai.ops import compute_padding

    x = image.unsqueeze(0).to(device)
    h, w = x.shape[-2:]
    pad, unpad = compute_padding(h, w, min_div=64)
    start = time.perf_counter()
    with torch.no_grad():
        out = net.compress(F.pad(x, pad, mode="constant", value=0))
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        x_hat = F.pad(net.decompress(out["strings"], out["shape"])["x_hat"], unpad)
    decode_s = time.perf_counter() - start
    num_bytes = sum(len(s) for strings in out["strings"] for s in strings)
    rec = x_hat[0].clamp(0, 1).mul(255).round().div(255).cpu().float()
    return num_bytes, rec, encode_s, decode_s


class CompressAICodec(Codec):
    """A CompressAI image model per rate point (zoo quality from local cache, or a checkpoint)."""

    def __init__(
        self,
        architecture: str,
        qualities: list[str] | None = None,
        metric: str = "mse",
        checkpoint: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        from compressai.zoo.image import model_architectures

        if architecture not in model_architectures:
            raise ConfigError(
                f"unknown CompressAI architecture {architecture!r}; choose {sorted(model_architectures)}"
            )
        self.architecture = architecture
        self.metric = metric
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.device = torch.device(device)
        self.name = f"compressai-{architecture}" + ("" if checkpoint is None else "-ckpt")
        self.description = f"CompressAI {architecture} ({metric})"
        if self.checkpoint is not None:
            if not self.checkpoint.is_file():
                raise CheckpointError(f"{self.checkpoint}: no such checkpoint")
            self._rate_points = [checkpoint_label(self.checkpoint)]
            self._digests = {self._rate_points[0]: file_sha256(self.checkpoint, 16)}
        else:
            self._rate_points = [str(q) for q in (qualities or ["1", "3", "6"])]
            self._digests = {q: file_sha256(self._zoo_file(q), 16) for q in self._rate_points}
        self._nets: dict[str, Any] = {}

    def _zoo_file(self, quality: str) -> Path:
        from compressai.zoo.image import model_urls

        try:
            url = model_urls[self.architecture][self.metric][int(quality)]
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"CompressAI has no pretrained {self.architecture} {self.metric} quality {quality}"
            ) from exc
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if not path.is_file():
            raise CheckpointError(
                f"CompressAI {self.architecture} q{quality} weights are not on this machine (nothing "
                f"is downloaded at run time): fetch {url} into {path.parent}, or pass a checkpoint "
                f"with compressai-ckpt:{self.architecture}:PATH"
            )
        return path

    @property
    def rate_points(self) -> list[str]:
        return self._rate_points

    @property
    def cache_key(self) -> str:
        digests = ",".join(f"{k}={v}" for k, v in sorted(self._digests.items()))
        return f"compressai:{self.architecture}:{self.metric}:{digests}"

    def _net(self, rate_point: str) -> Any:
        if rate_point not in self._nets:
            from compressai.zoo import load_state_dict
            from compressai.zoo.image import model_architectures

            path = self.checkpoint if self.checkpoint is not None else self._zoo_file(rate_point)
            from compressai_vlic.checkpoints import load_state_dict as read_state

            state = read_state(path)  # weights only; nested keys as eval_model accepts them
            try:
                net = model_architectures[self.architecture].from_state_dict(load_state_dict(state))
            except (KeyError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{path} is not a {self.architecture} checkpoint: {exc}"
                ) from exc
            net.update(force=True)
            self._nets[rate_point] = net.eval().to(self.device)
        return self._nets[rate_point]

    def code(self, image: torch.Tensor, rate_point: str) -> CodedImage:
        num_bytes, rec, enc, dec = _run_compressai_model(self._net(rate_point), image, self.device)
        h, w = image.shape[-2:]
        return CodedImage(
            num_bytes, num_bytes * 8 / (h * w), rec, f"quality={rate_point}", enc, dec
        )


class VLICCodec(Codec):
    """VLIC through its real container bytes (``compress`` / ``decompress``).

    Args:
        weights: one weights spec per rate point (see :func:`compressai_vlic.pretrained.load_weights`);
            default ``["random:test"]``.
        seed: the coding seed.
        device: where the model runs.
        checkpoint: the older way to give one checkpoint file (same as ``weights=[checkpoint]``).
    """

    def __init__(
        self,
        weights: list[str] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        checkpoint: str | Path | None = None,
    ) -> None:
        from compressai_vlic.pretrained import load_weights

        specs = [str(checkpoint)] if checkpoint is not None else list(weights or ["random:test"])
        found = [load_weights(spec) for spec in specs]
        self._weights = {w.label: w for w in found}
        self.seed = seed
        self.device = torch.device(device)
        self._nets: dict[str, Any] = {}
        if all(w.state is None for w in found):
            self.name, self.description = "vlic-untrained", "VLIC with random (untrained) weights"
        elif all(w.quality is not None for w in found):
            self.name, self.description = "vlic", "VLIC zoo weights"
        else:
            self.name = "vlic-ckpt"
            self.description = "VLIC checkpoint " + ", ".join(Path(w.source).name for w in found)
        self._identity = ",".join(
            f"random-init-seed{w.seed}" if w.state is None else w.identity[:16] for w in found
        )

    @property
    def rate_points(self) -> list[str]:
        return list(self._weights)

    @property
    def cache_key(self) -> str:
        return f"vlic:{self._identity}:seed={self.seed}"

    def _net(self, rate_point: str) -> Any:
        if rate_point not in self._nets:
            self._nets[rate_point] = self._weights[rate_point].model().to(self.device)
        return self._nets[rate_point]

    def code(self, image: torch.Tensor, rate_point: str) -> CodedImage:
        net = self._net(rate_point)
        x = image.unsqueeze(0).to(self.device)
        start = time.perf_counter()
        out = net.compress(x, seed=self.seed)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        x_hat = net.decompress(out["strings"], out["shape"])["x_hat"][
            ..., : x.shape[-2], : x.shape[-1]
        ]
        decode_s = time.perf_counter() - start
        num_bytes = sum(len(s) for strings in out["strings"] for s in strings)
        h, w = image.shape[-2:]
        rec = x_hat[0].clamp(0, 1).mul(255).round().div(255).cpu().float()
        return CodedImage(
            num_bytes,
            num_bytes * 8 / (h * w),
            rec,
            f"quality={rate_point} seed={self.seed}",
            encode_s,
            decode_s,
        )


# --------------------------------------------------------------------------- spec parsing
_NAMED_SPEC = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=(?P<spec>.+)$")


def make_codec(
    spec: str, default_bpps: list[float] | None = None, device: str | torch.device = "cpu"
) -> Codec:
    """Build a codec from a spec string (see the module docstring); ``NAME=SPEC`` renames it."""
    named = _NAMED_SPEC.match(spec)
    if named:
        codec = make_codec(named["spec"], default_bpps, device)
        codec.name = named["name"]
        return codec
    head, _, points_text = spec.partition("@")
    points = [p for p in points_text.split(",") if p] if points_text else None
    kind, _, arg = head.partition(":")
    kind = kind.strip().lower()
    if kind in PILLOW_FORMATS:
        if points is None and default_bpps:
            points = [_format_bpp(b) for b in default_bpps]
        return PillowCodec(kind, points)
    if kind == "compressai":
        if not arg:
            raise ConfigError("compressai codec needs an architecture: compressai:ARCH@Q1,Q2")
        return CompressAICodec(arg, points, device=device)
    if kind == "compressai-ckpt":
        arch, _, path = arg.partition(":")
        if not path:
            raise ConfigError("compressai-ckpt needs compressai-ckpt:ARCH:PATH")
        return CompressAICodec(arch, checkpoint=path, device=device)
    if kind == "vlic" and arg:  # vlic:WEIGHTS, the one spelling (a spec may hold ':' or '@')
        return VLICCodec([spec.partition(":")[2]], device=device)
    if kind in ("vlic", "vlic-pretrained"):  # aliases: vlic@Q (random), vlic-pretrained@Q
        prefix = "random:" if kind == "vlic" else ""
        return VLICCodec([prefix + q for q in points or ["test"]], device=device)
    if kind == "vlic-ckpt":  # alias of vlic:PATH
        if not arg:
            raise ConfigError("vlic-ckpt needs vlic-ckpt:PATH")
        return VLICCodec([spec.partition(":")[2]], device=device)
    if kind == "folder":
        from compressai_vlic.evaluation.external import FolderCodec

        if not arg:
            raise ConfigError("folder needs folder:PATH (one subfolder per rate point)")
        return FolderCodec(arg, points)
    if kind == "hub":
        from compressai_vlic.evaluation.external import HubCodec

        if not arg or not points:
            raise ConfigError("hub needs hub:REPO@ENTRY1,ENTRY2 (REPO: a folder or owner/name)")
        return HubCodec(arg, points, device=device)
    raise ConfigError(
        f"unknown codec {spec!r}; use jpeg, webp, avif, compressai:ARCH, compressai-ckpt:ARCH:PATH, "
        "vlic:WEIGHTS (vlic@QUALITY, vlic-pretrained@QUALITY, vlic-ckpt:PATH), folder:PATH or "
        "hub:REPO@ENTRY"
    )


def _format_bpp(value: float) -> str:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"target bpp must be a positive number, got {value}")
    return f"{value:g}"
