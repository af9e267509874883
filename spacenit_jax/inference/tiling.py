"""Sliding-window tiles over a scene, blend weights, and a streaming row accumulator.

Tiles: a fixed size (pixels, a multiple of the patch size) with a fixed overlap; origins
0, s, 2s, ... (s = tile - overlap) along each axis until the scene is covered. Tiles at
the right and bottom edges reach past the scene: those pixels are read as nodata (ABSENT
tokens), so every tile, and every batch, has one shape.

Blending happens at patch resolution. Each tile's embeddings are weighted by a separable
raised-cosine ramp over the overlap, w(u) = sin^2(pi u / 2) with u = (i + 1/2) / o rising
from the tile border over the o overlap patches (1 inside). Two neighbouring ramps sum
to exactly 1 over their shared overlap (sin^2 + cos^2), so overlaps are a smooth convex
combination of the tiles' embeddings and no seam shows; ABSENT positions get weight 0.
The output is sum(w * e) / sum(w), NaN where no tile has data.

Rows are streamed: tiles arrive in row-major order, so when the first tile of a new tile
row arrives, every output row above its origin is final and is handed out; memory is one
tile row of the output (tile height x scene width x D), not the scene.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class TileGrid:
    height: int  # scene pixels
    width: int
    tile: int  # pixels a side
    overlap: int  # pixels
    patch: int  # pixels per patch side

    def __post_init__(self):
        if self.patch < 1 or self.tile < self.patch:
            raise ValueError(f"tile size {self.tile} must be at least one patch ({self.patch})")
        if self.tile % self.patch or self.overlap % self.patch:
            raise ValueError(f"tile size {self.tile} and overlap {self.overlap} must be "
                             f"multiples of the patch size {self.patch}")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap {self.overlap} must be in [0, tile size {self.tile})")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"empty scene {self.height}x{self.width}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def _count(self, n: int) -> int:
        return max(1, math.ceil((n - self.overlap) / self.stride))

    @property
    def rows(self) -> int:
        return self._count(self.height)

    @property
    def cols(self) -> int:
        return self._count(self.width)

    def __len__(self) -> int:
        return self.rows * self.cols

    @property
    def out_shape(self) -> tuple[int, int]:
        """The scene in patches (a partial last patch counts)."""
        return math.ceil(self.height / self.patch), math.ceil(self.width / self.patch)

    @property
    def tile_patches(self) -> int:
        return self.tile // self.patch

    def origins(self) -> Iterator[tuple[int, int, int, int]]:
        """(tile row, tile col, pixel row, pixel col) in row-major order."""
        for i in range(self.rows):
            for j in range(self.cols):
                yield i, j, i * self.stride, j * self.stride


def ramp(n: int, overlap: int) -> np.ndarray:
    """(n,) raised-cosine weights over `overlap` cells at both ends (module docstring)."""
    i = np.arange(n, dtype=np.float64)
    if overlap <= 0:
        return np.ones(n, np.float32)
    u = np.minimum(1.0, np.minimum(i + 0.5, n - i - 0.5) / overlap)
    return (np.sin(0.5 * np.pi * u) ** 2).astype(np.float32)


def blend_weights(tile_patches: int, overlap_patches: int) -> np.ndarray:
    r = ramp(tile_patches, overlap_patches)
    return np.outer(r, r)


class RowAccumulator:
    """Weighted sums of tile embeddings for the rows in flight (module docstring)."""

    def __init__(self, out_height: int, out_width: int, dim: int, tile_patches: int):
        self.h, self.w, self.d, self.g = out_height, out_width, dim, tile_patches
        self.base = 0  # first output row held
        self.sum = np.zeros((tile_patches, out_width, dim), np.float32)
        self.wsum = np.zeros((tile_patches, out_width), np.float32)

    def add(self, row: int, col: int, emb: np.ndarray, weight: np.ndarray):
        """Add a tile's (g, g, D) embeddings at output patch (row, col), with (g, g)
        weights (0 where ABSENT). Returns the rows made final by it (see `flush`)."""
        done = self.flush(row) if row > self.base else []
        g = self.g
        rr, cc = min(g, self.h - row), min(g, self.w - col)
        if rr <= 0 or cc <= 0:
            return done
        w = weight[:rr, :cc]
        e = np.where(w[..., None] > 0, emb[:rr, :cc], 0.0)
        r0 = row - self.base
        self.sum[r0:r0 + rr, col:col + cc] += w[..., None] * e
        self.wsum[r0:r0 + rr, col:col + cc] += w
        return done

    def flush(self, until: int) -> list[tuple[int, np.ndarray]]:
        """Hand out rows [base, until) as (first row, (n, W, D) blended float32)."""
        n = min(until, self.h) - self.base
        if n <= 0:
            return []
        out = self._blend(n)
        self.sum = np.concatenate([self.sum[n:], np.zeros((n, self.w, self.d), np.float32)])
        self.wsum = np.concatenate([self.wsum[n:], np.zeros((n, self.w), np.float32)])
        first, self.base = self.base, self.base + n
        return [(first, out)]

    def _blend(self, n: int) -> np.ndarray:
        wsum = self.wsum[:n, :, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(wsum > 0, self.sum[:n] / wsum, np.nan).astype(np.float32)

    def finish(self) -> list[tuple[int, np.ndarray]]:
        return self.flush(self.h)
