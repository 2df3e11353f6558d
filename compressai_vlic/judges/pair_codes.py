"""The code a preference pair was sampled from: FSQ indices and tile layout, stored with the pair.

Diffusion-DPO compares how likely the trained and the reference decoder make the winner and the
loser *given the code they were decoded from*. Re-encoding the image at training time gives
another code as soon as the encoder moves (or a crop of a tiled decode), and the pair was never a
sample of the decoder given that code. So a codec pair keeps its exact token indices (read back
from the bitstream both decodes were made from) and where each tile lies in the image.

Stored as a small JSON file (``PairCodes.save`` / ``PairCodes.load``): integers only, no pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from compressai_vlic.errors import DatasetError

CODES_VERSION = 1


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
