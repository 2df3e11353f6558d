"""Codecs this package does not run itself: a folder of reconstructions, or a ``torch.hub`` model.

Generative codecs (MS-ILLM, HiFiC, PerCo, GLC, StableCodec, DiffEIC, CDC, FlowMo, ...) have public
code but are not CompressAI models, and their reconstructions are often on disk already.

**Folder codec** (``folder:PATH``, ``folder:PATH@LOW,HIGH``): one subfolder per rate point::

    PATH/
      <rate point>/               its name is the rate point's label
        <stem>.png                the reconstruction of the original <stem>.* (any image the
                                  package reads; PNG keeps the decoder's pixels exactly)
        bitstreams/<stem>.<ext>   the codec's file for that image: its size is the rate, or
        bytes.json                {"<stem>": bytes, ...}, or
        bytes.csv                 columns ``image`` (stem or file name) and ``bytes``

A folder that holds reconstructions itself (no subfolders) is one rate point named after it.
Without ``@`` the rate points are the subfolders sorted by name (give them low to high with
``@`` when the order matters, e.g. for the adaptor's rate level). Reconstructions are matched to
the originals by file stem. A malformed manifest, a bitstream or manifest entry without a
reconstruction (or the reverse), two files with one stem, or a rate that cannot be real (zero,
negative, not an integer) raise :class:`ReconstructionFolderError` when the codec is built. An
original without a reconstruction, a reconstruction of another size, or more bytes than the raw
8-bit RGB image raise it when that image is coded, so ``compare`` and ``vlm-bench`` skip that
image with the reason; reconstructions of images that are not in the set are reported.

**Hub codec** (``hub:REPO@ENTRY1,ENTRY2``): each rate point is a ``torch.hub`` entry point of
``REPO``, a local folder with a ``hubconf.py`` (loaded with ``source="local"``) or an
``owner/name[:ref]`` already in the hub cache (``torch.hub.get_dir()``, e.g.
``~/.cache/torch/hub/facebookresearch_NeuralCompression_main``). Nothing is downloaded: an entry
whose weights are not in ``<hub dir>/checkpoints`` raises :class:`CheckpointError` naming the
URL and that folder. Two interfaces are run:

- MS-ILLM's (NeuralCompression ``HiFiCAutoencoder``): ``compress(x, force_cpu=...)`` returns a
  ``HyperpriorCompressedOutput`` (``latent_strings``, ``hyper_latent_strings``, ``image_size``,
  ``padded_size``) and ``decompress(compressed, force_cpu=...)`` the image tensor, padding
  handled by the model; on a GPU, ``update_tensor_devices("compress")`` first, as
  NeuralCompression's ``eval_folder_example.py`` does.
- CompressAI's: ``compress(x)`` returns ``{"strings", "shape"}`` and ``decompress(strings,
  shape)`` ``{"x_hat"}``; input padded to a multiple of 64 as ``eval_model`` does.

The rate is the bytes of every ``bytes`` object in what ``compress`` returned (the entropy-coded
strings), not a pickle of it: NeuralCompression's published bpp uses ``pickle_size_of``, which
adds the pickle framing and the two size tuples (a few hundred bytes per image).
"""

from __future__ import annotations

import ast
import contextlib
import csv
import hashlib
import inspect
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compressai_vlic.errors import CheckpointError, ConfigError, DatasetError
from compressai_vlic.evaluation.codecs import Codec, CodedImage
from compressai_vlic.image_io import IMAGE_SUFFIXES, load_image

MANIFEST_JSON = "bytes.json"
MANIFEST_CSV = "bytes.csv"
BITSTREAM_DIR = "bitstreams"


class ReconstructionFolderError(DatasetError):
    """A folder of reconstructions or its rates is malformed or does not match the images."""


def _images_in(folder: Path) -> dict[str, Path]:
    """stem -> reconstruction file of ``folder`` (not recursive); two files per stem raise."""
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in out:
                raise ReconstructionFolderError(
                    f"{folder}: two reconstructions of {path.stem!r} ({out[path.stem].name}, "
                    f"{path.name})"
                )
            out[path.stem] = path
    return out


def _positive_bytes(value: Any, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ReconstructionFolderError(f"{where}: bytes {value!r} is not a number") from None
    if number != int(number) or isinstance(value, bool):
        raise ReconstructionFolderError(f"{where}: bytes {value!r} is not a whole number")
    if number <= 0:
        raise ReconstructionFolderError(
            f"{where}: {int(number)} bytes cannot be a real rate (a codec writes at least one byte)"
        )
    return int(number)


def _stem(name: str) -> str:
    path = Path(name)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else name


def _read_rates(folder: Path) -> tuple[dict[str, int], str]:
    """stem -> bytes of one rate-point folder, and where they came from."""
    sources = [
        p
        for p in (folder / BITSTREAM_DIR, folder / MANIFEST_JSON, folder / MANIFEST_CSV)
        if p.exists()
    ]
    if not sources:
        raise ReconstructionFolderError(
            f"{folder}: no rates: add {BITSTREAM_DIR}/<stem>.<ext> (the codec's files), "
            f"{MANIFEST_JSON} or {MANIFEST_CSV} (bytes per image)"
        )
    if len(sources) > 1:
        raise ReconstructionFolderError(
            f"{folder}: rates given twice ({', '.join(p.name for p in sources)}); keep one"
        )
    source = sources[0]
    rates: dict[str, int] = {}
    if source.name == BITSTREAM_DIR:
        for path in sorted(source.iterdir()):
            if not path.is_file():
                continue
            stem = path.stem if path.suffix else path.name
            if stem in rates:
                raise ReconstructionFolderError(f"{source}: two bitstream files for {stem!r}")
            rates[stem] = _positive_bytes(path.stat().st_size, str(path))
    elif source.name == MANIFEST_JSON:
        try:
            data = json.loads(source.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ReconstructionFolderError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not data:
            raise ReconstructionFolderError(
                f'{source}: expected an object {{"<image stem>": bytes, ...}}'
            )
        for name, value in data.items():
            stem = _stem(str(name))
            if stem in rates:
                raise ReconstructionFolderError(f"{source}: {stem!r} is listed twice")
            rates[stem] = _positive_bytes(value, f"{source} [{name!r}]")
    else:
        try:
            with open(source, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                fields = set(reader.fieldnames or [])
                if not {"image", "bytes"} <= fields:
                    raise ReconstructionFolderError(
                        f"{source}: needs columns 'image' and 'bytes', has {sorted(fields)}"
                    )
                for line, row in enumerate(reader, start=2):
                    stem = _stem(str(row["image"] or "").strip())
                    if not stem:
                        raise ReconstructionFolderError(f"{source}:{line}: empty image name")
                    if stem in rates:
                        raise ReconstructionFolderError(
                            f"{source}:{line}: {stem!r} is listed twice"
                        )
                    rates[stem] = _positive_bytes(row["bytes"], f"{source}:{line}")
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ReconstructionFolderError(f"{source}: cannot be read ({exc})") from None
        if not rates:
            raise ReconstructionFolderError(f"{source}: no rows")
    return rates, source.name


class FolderCodec(Codec):
    """Reconstructions on disk with their real rates (see the module docstring for the layout)."""

    def __init__(self, path: str | Path, rate_points: Sequence[str] | None = None) -> None:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ReconstructionFolderError(f"{root}: no such folder of reconstructions")
        self.root = root
        self.name = root.name or "folder"
        self.description = f"reconstructions in {root}"
        subfolders = sorted(
            p.name for p in root.iterdir() if p.is_dir() and p.name != BITSTREAM_DIR
        )
        flat = bool(_images_in(root))
        if rate_points:
            points = list(rate_points)
        elif flat:
            points = [""]
        else:
            points = subfolders
        if not points:
            raise ReconstructionFolderError(
                f"{root}: no reconstructions (one subfolder per rate point, or images here)"
            )
        self._labels: list[str] = []
        self._images: dict[str, dict[str, Path]] = {}
        self._bytes: dict[str, dict[str, int]] = {}
        self._rate_source: dict[str, str] = {}
        identity = hashlib.sha256()
        for point in points:
            folder = root / point if point else root
            label = point or root.name
            if not folder.is_dir():
                raise ReconstructionFolderError(
                    f"{root}: no rate-point folder {point!r} (has {subfolders})"
                )
            images = _images_in(folder)
            if not images:
                raise ReconstructionFolderError(f"{folder}: no reconstructions")
            rates, source = _read_rates(folder)
            orphans = sorted(set(rates) - set(images))
            if orphans:
                raise ReconstructionFolderError(
                    f"{folder}: {len(orphans)} rate(s) without a reconstruction (e.g. "
                    f"{', '.join(orphans[:3])})"
                )
            unrated = sorted(set(images) - set(rates))
            if unrated:
                raise ReconstructionFolderError(
                    f"{folder}: {len(unrated)} reconstruction(s) without a rate in {source} "
                    f"(e.g. {', '.join(unrated[:3])})"
                )
            self._labels.append(label)
            self._images[label] = images
            self._bytes[label] = rates
            self._rate_source[label] = source
            for stem in sorted(images):
                stat = images[stem].stat()
                identity.update(
                    f"{label}/{images[stem].name}:{stat.st_size}:{stat.st_mtime_ns}:{rates[stem]};".encode()
                )
        if len(set(self._labels)) != len(self._labels):
            raise ReconstructionFolderError(f"{root}: rate points repeat: {self._labels}")
        self._identity = identity.hexdigest()[:16]

    @property
    def rate_points(self) -> list[str]:
        return self._labels

    @property
    def cache_key(self) -> str:
        return f"folder:{self.root.resolve()}:{self._identity}"

    def _find(self, rate_point: str, names: Sequence[str]) -> str:
        images = self._images[rate_point]
        for name in names:
            stem = _stem(name)
            if stem in images:
                return stem
        raise ReconstructionFolderError(
            f"{self.root}: no reconstruction of {names[0] if names else '?'} at rate point "
            f"{rate_point!r}"
        )

    def code(self, image: torch.Tensor, rate_point: str) -> CodedImage:
        raise ReconstructionFolderError(
            f"{self.name}: a folder codec finds its reconstructions by image name; use "
            "code_named (compare and vlm-bench do)"
        )

    def code_named(self, image: torch.Tensor, rate_point: str, names: Sequence[str]) -> CodedImage:
        """The stored reconstruction of the image called one of ``names`` and its real rate."""
        stem = self._find(rate_point, names)
        path = self._images[rate_point][stem]
        start = time.perf_counter()
        rec = load_image(path).tensor
        decode_s = time.perf_counter() - start
        if rec.shape != image.shape:
            raise ReconstructionFolderError(
                f"{path}: reconstruction is {rec.shape[-1]}x{rec.shape[-2]}, the original "
                f"{image.shape[-1]}x{image.shape[-2]}"
            )
        h, w = image.shape[-2:]
        num_bytes = self._bytes[rate_point][stem]
        raw = 3 * h * w
        if num_bytes > raw:
            raise ReconstructionFolderError(
                f"{self.root}/{rate_point}: {num_bytes} bytes for {stem} is more than its raw "
                f"8-bit RGB size ({raw} bytes): not a real rate"
            )
        return CodedImage(
            num_bytes=num_bytes,
            bpp=num_bytes * 8 / (h * w),
            reconstruction=rec,
            setting=f"{rate_point}/{path.name} ({self._rate_source[rate_point]})",
            encode_s=0.0,
            decode_s=decode_s,
        )

    def unmatched(self, names: Sequence[Sequence[str]]) -> dict[str, list[str]]:
        """Per rate point, the reconstructions that match none of the images' ``names``."""
        wanted = {_stem(n) for group in names for n in group}
        out = {}
        for label, images in self._images.items():
            extra = sorted(set(images) - wanted)
            if extra:
                out[label] = extra
        return out


# ----------------------------------------------------------------------------- torch.hub
def _hub_repo_dir(repo: str) -> Path:
    """A local folder with hubconf.py, or ``owner/name[:ref]`` resolved in the hub cache."""
    path = Path(repo).expanduser()
    if path.is_dir():
        if not (path / "hubconf.py").is_file():
            raise CheckpointError(f"{path}: no hubconf.py (not a torch.hub repository)")
        return path
    hub_dir = Path(torch.hub.get_dir())
    if repo.count("/") != 1 or path.exists():
        raise CheckpointError(
            f"{repo!r} is neither a folder with a hubconf.py nor a GitHub owner/name[:ref]"
        )
    owner_name, _, ref = repo.partition(":")
    owner, name = owner_name.split("/")
    refs = [ref.replace("/", "_")] if ref else ["main", "master"]
    for candidate in refs:
        folder = hub_dir / f"{owner}_{name}_{candidate}"
        if (folder / "hubconf.py").is_file():
            return folder
    raise CheckpointError(
        f"torch.hub repository {owner_name} is not in the hub cache {hub_dir} (looked for "
        f"{', '.join(f'{owner}_{name}_{r}' for r in refs)}; nothing is downloaded here): run "
        f"torch.hub.load({owner_name!r}, ENTRY) once on a machine with internet and copy the "
        "folder, or give the path of a clone (hub:PATH@ENTRY)"
    )


def _hub_entries(hubconf: Path) -> set[str]:
    """Public callables a hubconf.py defines or imports (read, not run: importing may be slow)."""
    try:
        tree = ast.parse(hubconf.read_text(encoding="utf-8"), filename=str(hubconf))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{hubconf}: cannot be read ({exc})") from None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_") and n != "dependencies"}


@contextlib.contextmanager
def _no_downloads() -> Iterator[None]:
    """Turn torch.hub's downloader into an error naming the URL and the hub checkpoints folder."""
    original = torch.hub.download_url_to_file

    def refuse(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise CheckpointError(
            f"weights {url} are not in the torch hub cache (nothing is downloaded here): put "
            f"the file at {dst} (hub dir {torch.hub.get_dir()})"
        )

    torch.hub.download_url_to_file = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original  # type: ignore[assignment]


def _strings_bytes(obj: Any) -> int:
    """Bytes of every ``bytes`` object inside what ``compress`` returned."""
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, dict):
        return sum(_strings_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_strings_bytes(v) for v in obj)
    return 0


def _state_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class HubCodec(Codec):
    """A ``torch.hub`` model per rate point, from a local folder or the hub cache (never fetched).

    Args:
        repo: a folder with ``hubconf.py``, or ``owner/name[:ref]`` in the hub cache.
        entries: one entry point per rate point, low to high rate.
        kwargs: keyword arguments of every entry point (default ``{}``: the entry's own
            defaults; NeuralCompression's hubconf loads pretrained weights by default).
        device: torch device the models run on.
    """

    def __init__(
        self,
        repo: str | Path,
        entries: Sequence[str],
        kwargs: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if not entries:
            raise ConfigError("a hub codec needs entry points: hub:REPO@ENTRY1,ENTRY2")
        self.repo_dir = _hub_repo_dir(str(repo))
        self.repo = str(repo)
        available = _hub_entries(self.repo_dir / "hubconf.py")
        unknown = [e for e in entries if e not in available]
        if unknown:
            raise ConfigError(
                f"{self.repo_dir}/hubconf.py has no entry {unknown[0]!r}; it has {sorted(available)}"
            )
        self.entries = list(entries)
        self.kwargs = dict(kwargs or {})
        self.device = torch.device(device)
        self.name = Path(self.repo.rstrip("/")).name.split(":")[0] or "hub"
        self.description = f"torch.hub {self.repo} ({', '.join(self.entries)})"
        self._nets: dict[str, Any] = {}
        self._digests: dict[str, str] = {}

    @property
    def rate_points(self) -> list[str]:
        return self.entries

    @property
    def cache_key(self) -> str:
        for entry in self.entries:  # weights decide the output: load to know them
            self._net(entry)
        digests = ",".join(f"{k}={self._digests[k]}" for k in self.entries)
        options = json.dumps(self.kwargs, sort_keys=True, default=str)
        return f"hub:{digests}:{options}"

    def _net(self, entry: str) -> Any:
        if entry not in self._nets:
            sys_path = list(sys.path)
            try:
                with _no_downloads():
                    net = torch.hub.load(
                        str(self.repo_dir), entry, source="local", trust_repo=True, **self.kwargs
                    )
            finally:
                sys.path[:] = sys_path
            if not (
                callable(getattr(net, "compress", None))
                and callable(getattr(net, "decompress", None))
            ):
                raise ConfigError(
                    f"{self.repo_dir}:{entry} returned {type(net).__name__}, which has no "
                    "compress/decompress"
                )
            net = net.eval()
            self._digests[entry] = _state_digest(net)
            net = net.to(self.device)
            if self.device.type != "cpu" and callable(getattr(net, "update_tensor_devices", None)):
                net.update_tensor_devices("compress")  # entropy models on the CPU (MS-ILLM)
            elif callable(getattr(net, "update", None)):
                try:
                    net.update(force=True)
                except TypeError:
                    net.update()
            self._nets[entry] = net
        return self._nets[entry]

    def code(self, image: torch.Tensor, rate_point: str) -> CodedImage:
        net = self._net(rate_point)
        h, w = image.shape[-2:]
        x = image.unsqueeze(0).to(self.device)
        extra = {}
        if "force_cpu" in inspect.signature(net.compress).parameters:
            extra["force_cpu"] = self.device.type == "cpu"
        with torch.no_grad():
            start = time.perf_counter()
            if extra:  # MS-ILLM: the model pads and crops itself
                compressed = net.compress(x, **extra)
                encode_s = time.perf_counter() - start
                start = time.perf_counter()
                out = net.decompress(compressed, **extra)
                pad = None
            else:
                from compressai.ops import compute_padding

                pad, unpad = compute_padding(h, w, min_div=64)
                compressed = net.compress(F.pad(x, pad, mode="constant", value=0))
                encode_s = time.perf_counter() - start
                start = time.perf_counter()
                if isinstance(compressed, dict) and {"strings", "shape"} <= set(compressed):
                    out = net.decompress(compressed["strings"], compressed["shape"])
                else:
                    out = net.decompress(compressed)
            decode_s = time.perf_counter() - start
        x_hat = out["x_hat"] if isinstance(out, dict) else out
        if pad is not None:
            x_hat = F.pad(x_hat, unpad)
        x_hat = x_hat[..., :h, :w]
        num_bytes = _strings_bytes(compressed)
        if num_bytes <= 0:
            raise ConfigError(
                f"{self.name}@{rate_point}: compress returned no bytes objects "
                f"({type(compressed).__name__}); cannot measure its rate"
            )
        rec = x_hat[0].clamp(0, 1).mul(255).round().div(255).cpu().float()
        return CodedImage(
            num_bytes, num_bytes * 8 / (h * w), rec, f"entry={rate_point}", encode_s, decode_s
        )
