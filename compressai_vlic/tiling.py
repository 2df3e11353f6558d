"""Tiling for any image size: pad to a grid of training-size tiles, sample the canvas jointly.

Each tile is encoded on its own (so any image size works with a fixed-resolution model). At decode
time the whole padded canvas is sampled at once: at every sampler step each tile's velocity is
computed on its window of x_t and the windows are averaged with weights that ramp linearly over
the overlap margins (MultiDiffusion, Bar-Tal et al. 2023); only ``tile_batch`` tiles are in the
network at any time.

Coded overlap costs rate: every overlapping pixel is coded twice, and at 4-8 px of overlap the
fewest covering tiles of a 768x512 image nearly double. A *seamless* layout therefore codes whole
tiles without overlap (the rate of the image's area, rounded up to whole tiles) and removes the
seams at decode time only: at every sampler step the model's clean-image estimate
x0 = x_t - t v is deblocked (:meth:`TileLayout.deblock`: the jump across each tile border, less the
local gradient and averaged along the border, is spread linearly over a band on both sides) and
the velocity is recomputed from it. The smoothing removes offsets in colour and brightness between
tiles, which is what makes seams visible, and leaves texture crossing the border alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from compressai_vlic.errors import ConfigError

#: Value of the stream header's 1-byte overlap field for a seamless layout (no coded overlap can
#: be 255: the model refuses overlaps of half a tile or more, and tiles are at most 256 px here).
SEAMLESS_FIELD = 255


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
    """A grid of ``rows x cols`` tiles of ``tile`` px overlapping by ``overlap`` px.

    ``seamless``: whole tiles (overlap 0) whose borders are deblocked at decode time.
    """

    height: int
    width: int
    tile: int
    overlap: int
    rows: int
    cols: int
    seamless: bool = False

    @classmethod
    def for_image(
        cls, height: int, width: int, tile: int, overlap: int, seamless: bool = False
    ) -> TileLayout:
        """The fewest tiles that cover ``height x width`` at this overlap.

        Args:
            seamless: whole tiles with decode-time deblocking; needs ``overlap == 0``.
        """
        if height < 1 or width < 1:
            raise ConfigError(f"image size must be positive, got {height}x{width}")
        if tile < 1 or not 0 <= overlap < tile:
            raise ConfigError(f"need 0 <= overlap ({overlap}) < tile ({tile})")
        if seamless and overlap != 0:
            raise ConfigError(f"a seamless layout codes whole tiles, got overlap {overlap}")
        stride = tile - overlap
        rows = max(1, math.ceil((height - overlap) / stride))
        cols = max(1, math.ceil((width - overlap) / stride))
        return cls(height, width, tile, overlap, rows, cols, seamless)

    @classmethod
    def from_header(cls, height: int, width: int, tile: int, overlap_field: int) -> TileLayout:
        """The layout a stream's 1-byte overlap field names (:data:`SEAMLESS_FIELD`: seamless)."""
        if overlap_field == SEAMLESS_FIELD:
            return cls.for_image(height, width, tile, 0, seamless=True)
        return cls.for_image(height, width, tile, overlap_field)

    @property
    def header_field(self) -> int:
        """The value of the stream header's overlap byte for this layout."""
        return SEAMLESS_FIELD if self.seamless else self.overlap

    @property
    def deblock_width(self) -> int:
        """Half-width in px of the band each side of a border that :meth:`deblock` corrects."""
        return max(1, self.tile // 8)

    @property
    def deblock_span(self) -> int:
        """Length in px (odd) along a border over which the jump is averaged."""
        return self.tile // 4 + 1

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

    def border_mask(self, axis: Literal["rows", "cols"]) -> Tensor:
        """Bool mask over the image's neighbour differences that cross a tile border.

        ``"cols"``: (width - 1,) True where x[..., j + 1] - x[..., j] crosses a border (or lies in
        an overlap); ``"rows"`` likewise over (height - 1,). The seam metric compares the mean
        absolute difference there with the mean elsewhere.
        """
        n = self.width if axis == "cols" else self.height
        mask = torch.zeros(max(n - 1, 0), dtype=torch.bool)
        for k in range(1, self.cols if axis == "cols" else self.rows):
            start = k * self.stride
            for j in range(start - 1, start + self.overlap):
                if 0 <= j < n - 1:
                    mask[j] = True
        return mask

    def deblock(self, x: Tensor) -> Tensor:
        """Smooth the jump across every internal tile border of a (B, C, Hp, Wp) canvas.

        Per border position, the jump is the difference across the border less the mean of the
        gradients just inside the two tiles; it is averaged along the border over
        :attr:`deblock_span` px (so edges that merely cross the border keep their contrast) and
        spread over :attr:`deblock_width` px on each side, half to each tile, falling linearly.
        """
        if self.overlap != 0:
            raise ConfigError("deblocking is for whole tiles (overlap 0)")
        w = min(self.deblock_width, self.tile // 2)
        k = self.deblock_span
        ramp = (1.0 - (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) / w) / 2
        y = x.clone()
        for dim, count in ((-1, self.cols), (-2, self.rows)):
            z = y.movedim(dim, -1)  # borders along the last dim, a view of y
            for b in range(1, count):
                c = b * self.tile
                left, right = z[..., c - 2 : c], z[..., c : c + 2]
                inner = (left[..., 1] - left[..., 0] + right[..., 1] - right[..., 0]) / 2
                jump = right[..., 0] - left[..., 1] - inner  # (..., L) along the border
                flat = jump.reshape(-1, 1, jump.shape[-1])
                flat = F.pad(flat, (k // 2, k // 2), mode="replicate")
                jump = F.avg_pool1d(flat, k, stride=1).reshape(jump.shape)
                z[..., c - w : c] += jump[..., None] * ramp.flip(0)
                z[..., c : c + w] -= jump[..., None] * ramp
        return y

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


def seam_ratio(image: Tensor, layout: TileLayout) -> float:
    """How much stronger the image's edges are across tile borders than elsewhere.

    The mean absolute difference between neighbouring pixels (luma as the channel mean) over the
    pairs that cross a tile border of ``layout`` (or lie in an overlap), divided by the mean over
    all other pairs. A photo without tiling gives about 1; a hard seam raises it well above.

    Args:
        image: (1, C, H, W) or (C, H, W) image of the layout's size.
        layout: the tile grid whose borders are measured.
    """
    g = image.reshape(-1, *image.shape[-3:])[0].float().mean(0)
    if tuple(g.shape) != (layout.height, layout.width):
        raise ValueError(f"expected {layout.height}x{layout.width}, got {tuple(g.shape)}")
    dx = (g[:, 1:] - g[:, :-1]).abs()
    dy = (g[1:] - g[:-1]).abs()
    cols, rows = layout.border_mask("cols"), layout.border_mask("rows")
    border = torch.cat([dx[:, cols].flatten(), dy[rows].flatten()])
    inside = torch.cat([dx[:, ~cols].flatten(), dy[~rows].flatten()])
    if border.numel() == 0 or inside.numel() == 0:
        raise ValueError("the layout has no internal tile border inside the image")
    return float(border.mean() / inside.mean().clamp_min(1e-12))
