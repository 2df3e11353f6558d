"""Preference pairs made by the codec: two decodes of one bitstream, and the code they share.

:class:`CodecPairMaker` compresses each original once and decodes it with two noise seeds (the
pairs ``compressai-vlic judge --codec-checkpoint`` and the ablation judge); :class:`PairCodes` is
the code such a pair was sampled from, FSQ indices and tile layout, stored with the pair.

Diffusion-DPO compares how likely the trained and the reference decoder make the winner and the
loser *given the code they were decoded from*. Re-encoding the image at training time gives
another code as soon as the encoder moves (or a crop of a tiled decode), and the pair was never a
sample of the decoder given that code. So a codec pair keeps its exact token indices (read back
from the bitstream both decodes were made from) and where each tile lies in the image.

Stored as a small JSON file (``PairCodes.save`` / ``PairCodes.load``): integers only, no pickle.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from compressai_vlic.atomic import atomic_write_bytes
from compressai_vlic.errors import ConfigError, DatasetError, VLICError
from compressai_vlic.image_io import IMAGE_SUFFIXES, find_images, load_image, save_png
from compressai_vlic.judges.dataset import PairInputs, _reason, _stem_key
from compressai_vlic.options import check_option

CODES_VERSION = 1
CropType = Literal["tile", "image"]


@dataclass(frozen=True)
class PairCodes:
    """FSQ indices ``(num_tiles, K, d)`` of one image and the window of each tile.

    ``tiles`` holds ``(top, left)`` of each tile in row-major (token stream) order, in pixels of
    the padded canvas; every tile is ``tile`` px square. ``height``/``width`` is the image size.
    """

    indices: Tensor
    height: int
    width: int
    tile: int
    overlap: int
    tiles: tuple[tuple[int, int], ...]
    fsq_levels: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.indices.ndim != 3 or self.indices.shape[0] != len(self.tiles):
            raise DatasetError(
                f"pair codes: {len(self.tiles)} tiles but indices of shape {tuple(self.indices.shape)}"
            )
        if self.indices.shape[2] != len(self.fsq_levels):
            raise DatasetError(
                f"pair codes: {self.indices.shape[2]} digits per token for FSQ levels {self.fsq_levels}"
            )
        levels = torch.tensor(self.fsq_levels, dtype=torch.long)
        if self.indices.numel() and (
            bool((self.indices < 0).any()) or bool((self.indices >= levels).any())
        ):
            raise DatasetError(
                f"pair codes: an index lies outside the FSQ levels {self.fsq_levels}"
            )

    @classmethod
    def from_layout(cls, indices: Tensor, layout: Any, fsq_levels: Sequence[int]) -> PairCodes:
        """From ``VLIC.encode_image``-style indices and a :class:`~compressai_vlic.tiling.TileLayout`."""
        return cls(
            indices=indices.detach().long().cpu(),
            height=int(layout.height),
            width=int(layout.width),
            tile=int(layout.tile),
            overlap=int(layout.overlap),
            tiles=tuple((int(t.top), int(t.left)) for t in layout.tiles()),
            fsq_levels=tuple(int(v) for v in fsq_levels),
        )

    @property
    def num_tiles(self) -> int:
        return len(self.tiles)

    @property
    def num_tokens(self) -> int:
        return int(self.indices.shape[1])

    def whole_tiles(self) -> list[int]:
        """Tiles that lie entirely inside the image (no padding): the ones training can use."""
        return [
            i
            for i, (top, left) in enumerate(self.tiles)
            if top + self.tile <= self.height and left + self.tile <= self.width
        ]

    def window(self, i: int) -> tuple[slice, slice]:
        top, left = self.tiles[i]
        return slice(top, top + self.tile), slice(left, left + self.tile)

    def check_model(self, image_size: int, num_tokens: int, fsq_levels: Sequence[int]) -> None:
        """Raise a clear error when these codes were made by a codec of another shape."""
        want = (int(image_size), int(num_tokens), tuple(int(v) for v in fsq_levels))
        have = (self.tile, self.num_tokens, self.fsq_levels)
        if want != have:
            raise DatasetError(
                f"pair codes were made by a codec with tile {have[0]}, {have[1]} tokens, FSQ levels "
                f"{have[2]}; this model has tile {want[0]}, {want[1]} tokens, FSQ levels {want[2]}. "
                "Judge pairs made by the codec you post-train (compressai-vlic judge --codec-checkpoint)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CODES_VERSION,
            "height": self.height,
            "width": self.width,
            "tile": self.tile,
            "overlap": self.overlap,
            "tiles": [list(t) for t in self.tiles],
            "fsq_levels": list(self.fsq_levels),
            "indices": self.indices.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairCodes:
        try:
            if int(d.get("version", CODES_VERSION)) > CODES_VERSION:
                raise DatasetError(
                    f"pair codes version {d['version']} is newer than this package reads "
                    f"({CODES_VERSION}); upgrade compressai-vlic"
                )
            levels = tuple(int(v) for v in d["fsq_levels"])
            indices = torch.tensor(d["indices"], dtype=torch.long).reshape(
                len(d["tiles"]), -1, len(levels)
            )
            return cls(
                indices=indices,
                height=int(d["height"]),
                width=int(d["width"]),
                tile=int(d["tile"]),
                overlap=int(d["overlap"]),
                tiles=tuple((int(t[0]), int(t[1])) for t in d["tiles"]),
                fsq_levels=levels,
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise DatasetError(f"not a pair-codes record ({type(exc).__name__}: {exc})") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file, fsync, rename): a killed writer leaves no torn file."""
        from compressai_vlic.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PairCodes:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: pair codes file is missing")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: unreadable pair codes ({exc})") from exc
        try:
            return cls.from_dict(data)
        except DatasetError as exc:
            raise DatasetError(f"{path}: {exc}") from exc


def codes_from_stream(data: bytes, model: Any) -> PairCodes:
    """The exact tokens and layout inside a VLIC container (decoded with ``model``'s prior)."""
    from compressai_vlic.bitstream import unpack

    header, payload = unpack(data)
    layout = model.check_stream(header, len(payload))  # model, weights, limits, payload length
    with torch.no_grad():
        indices = model.token_coder.decode(
            payload, model.prior, batch=layout.num_tiles, num_tokens=model.config.num_tokens
        )
    return PairCodes.from_layout(indices, layout, model.config.fsq_levels)


# --------------------------------------------------------------------------- pairs from a codec


class CodecPairMaker:
    """Two decodes of the same bitstream with different noise seeds, per original (VLIC pairs).

    Each original (or tile-size crop of it) is compressed once; the container is re-packed with
    each decode seed (same tokens, new seed in the header) and decoded. The token indices and tile
    layout are read back from that bitstream and stored beside it (``PairCodes`` JSON, the row's
    ``codes``), so post-training conditions on exactly the code both decodes were sampled from.
    Crops, decodes, bitstream and codes are written atomically under ``decode_dir`` and reused by a
    resumed run.

    Args:
        crop_type: "tile" (default): each pair is a tile-size crop of an original, coded as one
            tile, so A and B are exact samples of the decoder given that code, and the judge
            rates exactly the images training uses. "image": the whole original, decoded with
            tile blending (what a user of the codec sees; training then takes one whole tile of
            it with that tile's code, an approximation near the blended margins).
        tiles_per_image: with "tile", how many crops per original: the non-overlapping tile grid
            centred in the image, nearest the centre first (default 1, the centre crop).
        num_steps: sampler steps of the two decodes (default None: the stream's own, i.e. the
            config's). More steps give more distinct pairs (docs/ablation.md).
    """

    def __init__(
        self,
        model: Any,
        decode_dir: Path,
        pairs_per_image: int = 1,
        base_seed: int = 0,
        identity: dict[str, Any] | None = None,
        crop_type: CropType = "tile",
        tiles_per_image: int = 1,
        num_steps: int | None = None,
    ):
        if pairs_per_image < 1:
            raise ConfigError(f"pairs_per_image must be >= 1, got {pairs_per_image}")
        check_option("crop_type", crop_type, CropType)
        if tiles_per_image < 1:
            raise ConfigError(f"tiles_per_image must be >= 1, got {tiles_per_image}")
        if num_steps is not None and num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1 (or None for the stream's), got {num_steps}")
        self._check_identity(Path(decode_dir), identity or {})
        self.model = model.eval()
        self.decode_dir = Path(decode_dir)
        self.pairs_per_image = pairs_per_image
        self.base_seed = base_seed
        self.crop_type = crop_type
        self.tiles_per_image = tiles_per_image
        self.num_steps = num_steps
        self._crops: dict[str, tuple[Path, int, int]] = {}  # crop reference -> (source, top, left)
        #: originals :meth:`plan` left out (unreadable, over a limit, too small) -> reason
        self.skipped: dict[str, str] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def _check_identity(decode_dir: Path, identity: dict[str, Any]) -> None:
        """Decodes on disk are reused only if the same codec made them."""
        marker = decode_dir / "codec.json"
        want = json.loads(json.dumps(identity, sort_keys=True))
        if marker.is_file():
            have = json.loads(marker.read_text())
            if have != want:
                raise ConfigError(
                    f"{decode_dir} holds decodes of another codec ({have}); this run uses {want}. "
                    "Use another --decode-dir / --output."
                )
            return
        _atomic_write(marker, json.dumps(want, sort_keys=True).encode())

    def seeds(self, i: int) -> tuple[int, int]:
        return self.base_seed + 2 * i, self.base_seed + 2 * i + 1

    def _sources(self, f: Path, key: str) -> list[tuple[str, Path]]:
        """(key, reference file) of each crop of one original, per ``crop_type``."""
        height, width = _image_size(f)  # the header, within the pixel and memory limits
        if self.crop_type == "image":
            return [(key, f)]
        tile = int(self.model.config.image_size)
        if height < tile or width < tile:
            raise DatasetError(
                f"{f}: {height}x{width} is smaller than the codec's {tile}-px tile; use larger "
                "originals or --crop-type image"
            )
        if (height, width) == (tile, tile):
            return [(key, f)]
        rows, cols = height // tile, width // tile
        top0, left0 = (height - rows * tile) // 2, (width - cols * tile) // 2
        cells = [(top0 + r * tile, left0 + c * tile) for r in range(rows) for c in range(cols)]
        cy, cx = (height - tile) / 2, (width - tile) / 2
        cells.sort(key=lambda p: ((p[0] - cy) ** 2 + (p[1] - cx) ** 2, p))
        out = []
        for top, left in cells[: self.tiles_per_image]:
            crop_key = f"{key}@y{top}x{left}"
            ref = self.decode_dir / f"{crop_key}.png"
            self._crops[str(ref)] = (f, top, left)
            out.append((crop_key, ref))
        return out

    def plan(self, originals: Path) -> list[PairInputs]:
        """Every pair this run will judge (no decoding yet). An original that cannot be used
        (unreadable header, over the pixel limit or memory budget, smaller than a tile) is left
        out with its reason in :attr:`skipped`; the others are still planned."""
        root = Path(originals)
        files = find_images(root)
        if not files:
            raise DatasetError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
        base = root if root.is_dir() else root.parent
        pairs = []
        for f in files:
            try:
                sources = self._sources(f, _stem_key(f, base))
            except VLICError as exc:
                self.skipped[_stem_key(f, base)] = _reason(exc)
                continue
            for key, reference in sources:
                for i in range(self.pairs_per_image):
                    s1, s2 = self.seeds(i)
                    pairs.append(
                        PairInputs(
                            pair_id=f"{key}#s{s1}-s{s2}",
                            reference=reference,
                            a=self.decode_dir / f"{key}.s{s1}.png",
                            b=self.decode_dir / f"{key}.s{s2}.png",
                            seeds=(s1, s2),
                            bitstream=self.decode_dir / f"{key}.vlic",
                            codes=self.decode_dir / f"{key}.codes.json",
                        )
                    )
        return pairs

    def _reference(self, pair: PairInputs) -> None:
        """Write the tile-size crop a pair judges (once; a resumed run reuses it)."""
        crop = self._crops.get(str(pair.reference))
        if crop is None or pair.reference.is_file():
            return
        source, top, left = crop
        tile = int(self.model.config.image_size)
        x = load_image(source).tensor[:, top : top + tile, left : left + tile]
        save_png(x, pair.reference)  # atomic

    def _codes(self, pair: PairInputs, data: bytes) -> None:
        """Store the tokens and layout inside the bitstream (exactly what A and B decode)."""
        if pair.codes is None or pair.codes.is_file():
            return
        codes_from_stream(data, self.model).save(pair.codes)

    def _bitstream(self, pair: PairInputs) -> bytes:
        assert pair.bitstream is not None and pair.seeds is not None
        if pair.bitstream.is_file():
            return self.model.read_stream(pair.bitstream)
        x = load_image(pair.reference).tensor[None]
        with torch.no_grad():
            data = bytes(self.model.compress(x, seed=pair.seeds[0])["strings"][0][0])
        _atomic_write(pair.bitstream, data)
        return data

    def _decode(self, data: bytes, seed: int, out: Path) -> None:
        from compressai_vlic.bitstream import resample, unpack

        header, _ = unpack(data)
        stream = resample(data, seed, self.num_steps)  # same tokens, new noise
        # a stream this maker wrote with its own step count: the model's own limit does not apply
        limit = {"max_evaluations_per_tile": None} if self.num_steps else {}
        with torch.no_grad():
            x_hat = self.model.decompress([[stream]], (header.height, header.width), **limit)
        save_png(x_hat["x_hat"][0], out)  # atomic

    def _make(self, pair: PairInputs) -> None:
        self._reference(pair)
        data = self._bitstream(pair)
        self._codes(pair, data)
        assert pair.seeds is not None
        for seed, path in zip(pair.seeds, (pair.a, pair.b)):
            if not path.is_file():
                self._decode(data, seed, path)

    async def prepare(self, pair: PairInputs) -> PairInputs:
        done = [pair.a, pair.b, pair.reference] + ([pair.codes] if pair.codes else [])
        if not all(p.is_file() for p in done):
            async with self._lock:  # one decode at a time: the codec uses all cores itself
                await asyncio.to_thread(self._make, pair)
        return pair


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) as ``load_image`` will return it (EXIF rotation applied), from the header;
    :class:`ImageReadError` for an unreadable file or one over the image limits."""
    from compressai_vlic.image_io import check_image_limits

    header = check_image_limits(path)
    width, height = header.width, header.height
    if header.orientation in (5, 6, 7, 8):  # rotated by 90 degrees
        width, height = height, width
    return height, width


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
