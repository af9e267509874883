"""Outputs of scene inference: the embedding GeoTIFF (Cloud-Optimized), per-tile
GeoParquet, and a PCA-to-RGB quicklook PNG. All raster writing is rasterio's.

Embedding raster: float32, D bands ("emb_000", ...), NaN as nodata, the input's CRS and
the input transform scaled by the patch size (one pixel per patch). Rows are streamed
into an uncompressed tiled temporary GeoTIFF next to the output (partial block writes
would otherwise re-compress blocks), which GDAL's COG driver then copies into the final
Cloud-Optimized GeoTIFF: 256 x 256 blocks, DEFLATE with the floating-point predictor,
pixel-interleaved (one block read gives whole embeddings), averaged overviews, BigTIFF
when needed. Both steps stream block by block; the COG is renamed into place at the end,
so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import warnings

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

log = logging.getLogger(__name__)
BLOCK = 256


class EmbeddingRasterWriter:
    """Streams (rows, W, D) float32 strips into a COG at `path` (module docstring)."""

    def __init__(self, path, *, width: int, height: int, dim: int, crs, transform,
                 tags: dict | None = None, compress: str = "DEFLATE"):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.partial.tif")
        self.width, self.height, self.dim = width, height, dim
        self.compress = compress
        self.rows_written = 0
        block = {}
        if width >= 16 and height >= 16:
            block = dict(tiled=True, blockxsize=min(BLOCK, _mult16(width)),
                         blockysize=min(BLOCK, _mult16(height)))
        self._ds = rasterio.open(
            self.tmp, "w", driver="GTiff", width=width, height=height, count=dim,
            dtype="float32", crs=crs, transform=transform, nodata=float("nan"),
            interleave="pixel", BIGTIFF="IF_SAFER", **block)
        self._ds.descriptions = tuple(f"emb_{i:03d}" for i in range(dim))
        if tags:
            self._ds.update_tags(**{k: str(v) for k, v in tags.items()})

    def write(self, row: int, data: np.ndarray) -> None:
        """Rows [row, row + n) of the raster: (n, width, dim) float32."""
        n = data.shape[0]
        if data.shape[1:] != (self.width, self.dim):
            raise ValueError(f"strip shape {data.shape} does not fit a {self.width}-wide, "
                             f"{self.dim}-band raster")
        self._ds.write(np.ascontiguousarray(np.moveaxis(data, -1, 0), np.float32),
                       window=Window(0, row, self.width, n))
        self.rows_written += n

    def close(self) -> pathlib.Path:
        """Finish: build the COG (with overviews) and remove the temporary file."""
        self._ds.close()
        try:
            if self.rows_written != self.height:
                raise RuntimeError(f"{self.path}: {self.rows_written} of {self.height} rows "
                                   "were written")
            cog = self.path.with_name(f".{self.path.name}.cog.tif")
            rasterio.shutil.copy(
                self.tmp, cog, driver="COG", COMPRESS=self.compress, PREDICTOR="YES",
                BLOCKSIZE=str(BLOCK), OVERVIEWS="AUTO", RESAMPLING="AVERAGE",
                BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
            os.replace(cog, self.path)  # a crash never leaves a half-written output
        finally:
            for f in (self.tmp, self.path.with_name(f".{self.path.name}.cog.tif")):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._ds.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp)


def _mult16(n: int) -> int:
    return max(16, n // 16 * 16)


# --------------------------------------------------------------------------- GeoParquet


def write_tiles_parquet(path, rows: list[dict], embeddings: np.ndarray, crs) -> pathlib.Path:
    """One row per tile: its footprint polygon (input CRS), tile indices, pixel window,
    present-token count, and the pooled embedding (columns emb_000, ...). Needs the
    optional `geo` extra (geopandas, pyarrow)."""
    try:
        import geopandas as gpd
        import pandas as pd
        from shapely.geometry import box
    except ImportError as err:
        raise ImportError("writing GeoParquet needs the optional 'geo' extra: pip install "
                          f"'spacenit-jax[geo]' ({err})") from None
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "bounds"} for r in rows])
    emb = pd.DataFrame(np.asarray(embeddings, np.float32),
                       columns=[f"emb_{i:03d}" for i in range(embeddings.shape[1])])
    geom = [box(*r["bounds"]) for r in rows]
    gdf = gpd.GeoDataFrame(pd.concat([table, emb], axis=1), geometry=geom,
                           crs=None if crs is None else crs.to_wkt())
    gdf.to_parquet(path, index=False)
    return path


# --------------------------------------------------------------------------- quicklook


def pca_quicklook(raster_path, png_path, *, max_side: int = 1024, strip: int = 64
                  ) -> pathlib.Path:
    """PCA of the embedding raster to RGB: the first three principal components of the
    raster read at most `max_side` pixels a side (block averages), each stretched between
    its 2nd and 98th percentile; nodata is black with alpha 0. Two streaming passes over
    row strips (covariance, then projection), so memory is a strip of D-band pixels plus
    the small RGB image. Written as PNG with rasterio."""
    png_path = pathlib.Path(png_path)
    with rasterio.open(raster_path) as ds:
        k = max(1, -(-max(ds.height, ds.width) // max_side))
        h, w, d = max(1, ds.height // k), max(1, ds.width // k), ds.count
        resampling = Resampling.average if k > 1 else Resampling.nearest

        def strips():
            for r0 in range(0, h, strip):
                n = min(strip, h - r0)
                win = Window(0, r0 * k, ds.width, min(n * k, ds.height - r0 * k))
                x = ds.read(window=win, out_shape=(d, n, w), resampling=resampling)
                yield r0, x.reshape(d, -1).T.astype(np.float64)

        count, total, outer = 0, np.zeros(d), np.zeros((d, d))
        for _, x in strips():
            x = x[np.isfinite(x).all(axis=1)]
            count += x.shape[0]
            total += x.sum(axis=0)
            outer += x.T @ x
        proj = np.zeros((h * w, 3))
        valid = np.zeros(h * w, bool)
        if count >= 2:
            mean = total / count
            cov = outer / count - np.outer(mean, mean)
            _, vecs = np.linalg.eigh(cov)
            comps = vecs[:, ::-1][:, :3]
            for r0, x in strips():
                ok = np.isfinite(x).all(axis=1)
                sl = slice(r0 * w, r0 * w + x.shape[0])
                proj[sl][ok] = (x[ok] - mean) @ comps
                valid[sl] = ok
    rgb = np.zeros((h * w, 3))
    if valid.sum() >= 2:
        lo, hi = np.percentile(proj[valid], [2, 98], axis=0)
        rgb[valid] = np.clip((proj[valid] - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    img = (rgb.T.reshape(3, h, w) * 255).round().astype(np.uint8)
    alpha = (valid.reshape(h, w) * 255).astype(np.uint8)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # a PNG has no georeferencing, by design
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(png_path, "w", driver="PNG", width=w, height=h, count=4,
                           dtype="uint8") as out:
            out.write(np.concatenate([img, alpha[None]]))
    aux = png_path.with_name(png_path.name + ".aux.xml")
    with contextlib.suppress(FileNotFoundError):
        os.remove(aux)
    return png_path
