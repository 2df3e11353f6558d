"""Tiling for any image size: pad to a grid of overlapping training-size tiles, blend MultiDiffusion-style.

Each tile is encoded on its own (so any image size works with a fixed-resolution model). At decode
time the whole padded canvas is sampled at once: at every sampler step each tile's velocity is
computed on its window of x_t and the windows are averaged with weights that ramp linearly over
the overlap margins (MultiDiffusion, Bar-Tal et al. 2023). This removes seams without a
separate blending pass, and only ``tile_batch`` tiles are in the network at any time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from compressai_vlic.errors import ConfigError


@dataclass(frozen=True)
class Tile:
    """One tile: its index in row-major order and its window in the padded canvas."""

    index: int
    top: int
    left: int
    size: int

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.size)

    @property
    def cols(self) -> slice:
        return slice(self.left, self.left + self.size)


@dataclass(frozen=True)
class TileLayout:
    """A grid of ``rows x cols`` tiles of ``tile`` px overlapping by ``overlap`` px."""

    height: int
    width: int
    tile: int
    overlap: int
    rows: int
    cols: int

    @classmethod
    def for_image(cls, height: int, width: int, tile: int, overlap: int) -> TileLayout:
        if height < 1 or width < 1:
            raise ConfigError(f"image size must be positive, got {height}x{width}")
        if tile < 1 or not 0 <= overlap < tile:
            raise ConfigError(f"need 0 <= overlap ({overlap}) < tile ({tile})")
        stride = tile - overlap
        rows = max(1, math.ceil((height - overlap) / stride))
        cols = max(1, math.ceil((width - overlap) / stride))
        return cls(height, width, tile, overlap, rows, cols)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def padded_height(self) -> int:
        return self.rows * self.stride + self.overlap

    @property
    def padded_width(self) -> int:
        return self.cols * self.stride + self.overlap

    @property
    def num_tiles(self) -> int:
        return self.rows * self.cols

    def tiles(self) -> Iterator[Tile]:
        """Tiles in row-major order (the order of the token stream)."""
        for r in range(self.rows):
            for c in range(self.cols):
                yield Tile(r * self.cols + c, r * self.stride, c * self.stride, self.tile)

    def pad(self, x: Tensor) -> Tensor:
        """Replicate-pad (B, C, H, W) on the bottom/right up to the padded canvas."""
        if x.shape[-2:] != (self.height, self.width):
            raise ValueError(f"expected {self.height}x{self.width}, got {tuple(x.shape[-2:])}")
        pad_h = self.padded_height - self.height
        pad_w = self.padded_width - self.width
        if pad_h == 0 and pad_w == 0:
            return x
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")

    def crop(self, x: Tensor) -> Tensor:
        """Drop the padding again."""
        return x[..., : self.height, : self.width]

    def split(self, canvas: Tensor) -> Tensor:
        """(1, C, Hp, Wp) canvas -> (num_tiles, C, tile, tile) windows."""
        return torch.cat([canvas[..., t.rows, t.cols] for t in self.tiles()], dim=0)

    def ramp(self, device: torch.device | None = None) -> Tensor:
        """(tile, tile) blending weight: linear ramp over the overlap margins, > 0 everywhere."""
        pos = torch.arange(self.tile, dtype=torch.float32, device=device) + 0.5
        if self.overlap == 0:
            w1 = torch.ones_like(pos)
        else:
            w1 = torch.clamp(torch.minimum(pos, self.tile - pos) / self.overlap, max=1.0)
        return w1[:, None] * w1[None, :]

    def blend(
        self,
        canvas: Tensor,
        tile_fn: Callable[[Tensor, Tensor], Tensor],
        tile_batch: int,
    ) -> Tensor:
        """MultiDiffusion: weighted average of ``tile_fn`` over all tile windows of ``canvas``.

        ``tile_fn(windows (n, C, T, T), tile_indices (n,))`` is called on at most ``tile_batch``
        tiles at a time, so peak activation memory does not grow with the image size.
        """
        if canvas.shape[-2:] != (self.padded_height, self.padded_width):
            raise ValueError(
                f"canvas must be {self.padded_height}x{self.padded_width}, "
                f"got {tuple(canvas.shape[-2:])}"
            )
        weight = self.ramp(canvas.device)
        out = torch.zeros_like(canvas, dtype=torch.float32)
        norm = torch.zeros(canvas.shape[-2:], dtype=torch.float32, device=canvas.device)
        tiles = list(self.tiles())
        for start in range(0, len(tiles), tile_batch):
            chunk = tiles[start : start + tile_batch]
            windows = torch.cat([canvas[..., t.rows, t.cols] for t in chunk], dim=0)
            ids = torch.tensor([t.index for t in chunk], dtype=torch.long)
            result = tile_fn(windows, ids).to(torch.float32)
            for j, t in enumerate(chunk):
                out[..., t.rows, t.cols] += result[j : j + 1] * weight
                norm[t.rows, t.cols] += weight
        return out / norm
