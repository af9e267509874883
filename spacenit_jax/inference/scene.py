"""Tiled inference over a scene of any size: GeoTIFFs in, an embedding COG out.

    result = embed_scene("runs/nano", {"sentinel2_l2a": ["s2.tif"]}, "emb.tif")

Steps: open the inputs as one co-registered scene (`geotiff.open_scene`: band names,
units, dates, reprojection, the plausibility check on a decimated read); cut it into
fixed-size overlapping tiles (`tiling.TileGrid`); for each batch of tiles read the
windows, prepare them exactly like `InferenceModel.encode` does (band order, missing
pixels, normalisation) and run the model's jitted encoder with "spatial" pooling (one
D-vector per patch position: the mean over sensors, spectral groups and timesteps); the
last batch is padded with empty tiles, so the whole scene compiles one program; blend
the tiles (`tiling`) and stream finished rows into the output (`writers`).

Memory is bounded by the tile batch and one tile row of the output: inputs are read
window by window, outputs written row strip by row strip, and GDAL's block cache is
capped (`gdal_cache_mb`). While the device works on a
batch, the host reads the next one (JAX dispatches asynchronously).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Mapping, Sequence

import numpy as np
import rasterio
from rasterio import windows
from rasterio.transform import Affine

from spacenit_jax import sensors, tracing
from spacenit_jax.inference import geotiff, prepare, tiling, writers
from spacenit_jax.inference.api import TRACE_NAME, InferenceModel, load
from spacenit_jax.sensors import SensorKind

log = logging.getLogger(__name__)
GDAL_CACHE_MB = 128


@dataclasses.dataclass
class SceneResult:
    output: pathlib.Path
    width: int  # output raster, in patches
    height: int
    bands: int
    crs: str
    transform: tuple
    scene_width: int  # input, in pixels
    scene_height: int
    patch_size: int
    tiles: int
    tiles_computed: int  # tiles that had any data
    compilations: int
    seconds: float
    absent_tokens: dict[str, int]
    tokens: dict[str, int]
    notes: list[str]
    parquet: pathlib.Path | None = None
    quicklook: pathlib.Path | None = None

    def summary(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("output", "parquet", "quicklook"):
            d[k] = None if d[k] is None else str(d[k])
        d["seconds"] = round(self.seconds, 3)
        return d

    def json(self) -> str:
        return json.dumps(self.summary())


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def embed_scene(model, inputs, out, *, patch_size: int | None = None, tile: int = 256,
                overlap: int = 32, batch: int = 8, bands: Mapping[str, Sequence[str]] | None
                = None, s1_units: str | None = None, nodata: float | None = None,
                parquet=None, quicklook=None, progress: bool = True, check: bool = True,
                use_months: bool = True, notes: Sequence[str] = (),
                gdal_cache_mb: int = GDAL_CACHE_MB) -> SceneResult:
    """Embed a scene; see the module docstring.

    model: an InferenceModel or a path for `load`. inputs: {sensor label: [GeoTIFF paths]}
    (one per timestep) or an opened `geotiff.Scene`. out: the embedding COG to write.
    tile / overlap: pixels (multiples of the patch size). batch: tiles per device call.
    bands: {sensor: band names} for files without band descriptions. s1_units: "auto"
    (default), "db" or "linear". nodata: overrides the files' nodata value. parquet /
    quicklook: optional GeoParquet of pooled per-tile embeddings and PCA PNG. use_months:
    give the model each timestep's month when the files are dated. gdal_cache_mb: GDAL's
    block cache while the scene runs (GDAL's default, 5% of RAM, would keep most of a
    large input scene in memory).
    """
    with rasterio.Env(GDAL_CACHEMAX=int(gdal_cache_mb)):
        return _embed_scene(model, inputs, out, patch_size, tile, overlap, batch, bands,
                            s1_units, nodata, parquet, quicklook, progress, check, use_months,
                            notes)


def _embed_scene(model, inputs, out, patch_size, tile, overlap, batch, bands, s1_units, nodata,
                 parquet, quicklook, progress, check, use_months, notes) -> SceneResult:
    t_start = time.perf_counter()
    if not isinstance(model, InferenceModel):
        model = load(model)
    p = model.resolve_patch_size(patch_size)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    own_scene = not isinstance(inputs, geotiff.Scene)
    if own_scene:
        for label in inputs:
            prepare.resolve_sensor(label, model.sensor_labels)
        scene = geotiff.open_scene(inputs, bands=bands, s1_units=s1_units, nodata=nodata,
                                   check=check, max_timesteps=model.cfg.max_timesteps,
                                   notes=list(notes))
    else:
        scene = inputs
    try:
        return _run(model, scene, out, p, tile, overlap, batch, parquet, quicklook, progress,
                    use_months, t_start)
    finally:
        if own_scene:
            scene.close()


def _run(model: InferenceModel, scene: geotiff.Scene, out, p, tile, overlap, batch, parquet,
         quicklook, progress, use_months, t_start) -> SceneResult:
    for label in scene.files:
        prepare.resolve_sensor(label, model.sensor_labels)
    grid = tiling.TileGrid(scene.grid.height, scene.grid.width, tile, overlap, p)
    g = grid.tile_patches
    if g > model.max_grid:
        raise ValueError(f"tile {tile} px at patch {p} is a {g}x{g} patch grid, more than the "
                         f"model's max_grid {model.max_grid}: use --tile {model.max_grid * p} "
                         "or less")
    out_h, out_w = grid.out_shape
    transform = scene.grid.transform @ Affine.scale(p)
    tags = {"spacenit_patch_size": p, "spacenit_model": model.path, "spacenit_step": model.step,
            "spacenit_kind": model.kind, "spacenit_preset": model.cfg.preset,
            "spacenit_sensors": ",".join(scene.files),
            "spacenit_normalisation": model.normalization.describe(),
            "spacenit_timesteps": ",".join(scene.dates)}
    writer = writers.EmbeddingRasterWriter(out, width=out_w, height=out_h,
                                           dim=model.embed_dim, crs=scene.grid.crs,
                                           transform=transform, tags=tags)
    acc = tiling.RowAccumulator(out_h, out_w, model.embed_dim, g)
    weights = tiling.blend_weights(g, overlap // p)
    months = None
    if use_months and scene.months is not None:
        months = np.broadcast_to(np.asarray(scene.months, np.int32), (batch, len(scene.months)))
    traces0 = tracing.trace_count(TRACE_NAME)
    absent = {label: 0 for label in scene.files}
    tokens = {label: 0 for label in scene.files}
    tile_rows, tile_embs = [], []
    computed = 0
    bar = _progress(len(grid), progress)
    try:
        pending = None
        for chunk in _batches(list(grid.origins()), batch):
            prepared, has_data = _read_batch(model, scene, chunk, tile, batch)
            dispatched = None
            if has_data.any():
                dispatched = model.run(prepared, patch_size=p, months=months,
                                       pooling="spatial")
            if pending is not None:  # the previous batch, while this one computes
                computed += _collect(pending, acc, writer, weights, p, scene, grid, absent,
                                     tokens, tile_rows, tile_embs, parquet is not None, bar,
                                     model)
            pending = (chunk, dispatched, has_data)
        if pending is not None:
            computed += _collect(pending, acc, writer, weights, p, scene, grid, absent, tokens,
                                 tile_rows, tile_embs, parquet is not None, bar, model)
        for row, strip in acc.finish():
            writer.write(row, strip)
        bar.close()
        writer.close()
    except BaseException:
        bar.close()
        writer.abort()
        raise
    result = SceneResult(
        output=pathlib.Path(out), width=out_w, height=out_h, bands=model.embed_dim,
        crs="" if scene.grid.crs is None else scene.grid.crs.to_string(),
        transform=tuple(transform)[:6], scene_width=scene.grid.width,
        scene_height=scene.grid.height, patch_size=p, tiles=len(grid),
        tiles_computed=computed, compilations=tracing.trace_count(TRACE_NAME) - traces0,
        seconds=0.0, absent_tokens=absent, tokens=tokens, notes=list(scene.notes))
    if parquet is not None:
        emb = (np.stack(tile_embs) if tile_embs
               else np.zeros((0, model.embed_dim), np.float32))
        result.parquet = writers.write_tiles_parquet(parquet, tile_rows, emb, scene.grid.crs)
    if quicklook is not None:
        result.quicklook = writers.pca_quicklook(out, quicklook)
    result.seconds = time.perf_counter() - t_start
    return result


def _read_batch(model: InferenceModel, scene: geotiff.Scene, chunk, tile: int, batch: int):
    """Model input of a batch of tiles, padded to `batch` tiles with empty ones."""
    stacks: dict[str, list[np.ndarray]] = {label: [] for label in scene.files}
    has_data = np.zeros(batch, bool)
    for k, (_, _, y0, x0) in enumerate(chunk):
        raw = scene.read(y0, x0, tile, tile)
        for label, x in raw.items():
            prep = prepare.prepare_sensor(
                label, x, check=False, normalized=False,
                apply_normalization=model.normalization.enabled, what="scene")
            stacks[label].append(prep.array)
            has_data[k] |= prep.missing_pixels < x.shape[0] * x.shape[1] * x.shape[2]
    out = {}
    for label, arrs in stacks.items():
        while len(arrs) < batch:
            arrs.append(np.full_like(arrs[0], sensors.MISSING_VALUE))
        x = np.stack(arrs)
        out[label] = x if sensors.get(label).kind == SensorKind.SPACE_TIME else x[:, :, :, 0]
    return out, has_data


def _collect(pending, acc, writer, weights, p, scene, grid, absent, tokens, tile_rows,
             tile_embs, want_rows, bar, model) -> int:
    chunk, dispatched, has_data = pending
    g = grid.tile_patches
    if dispatched is not None:
        mean, count, absent_b = _fetch(dispatched)
    computed = 0
    for k, (ti, tj, y0, x0) in enumerate(chunk):
        if dispatched is not None and has_data[k]:
            computed += 1
            emb, cnt = mean[k], count[k]
            for label in scene.files:
                absent[label] += int(absent_b[label][k])
        else:
            emb = np.full((g, g, model.embed_dim), np.nan, np.float32)
            cnt = np.zeros((g, g), np.float32)
        for label, files in scene.files.items():
            tokens[label] += (len(files) * len(model.cfg.layout.sensor_groups(label)) * g * g)
            if not (dispatched is not None and has_data[k]):
                absent[label] += len(files) * len(model.cfg.layout.sensor_groups(label)) * g * g
        for row, strip in acc.add(y0 // p, x0 // p, emb, weights * (cnt > 0)):
            writer.write(row, strip)
        if want_rows:
            total = cnt.sum()
            pooled = (np.nansum(emb * cnt[..., None], axis=(0, 1)) / total if total > 0
                      else np.full(model.embed_dim, np.nan, np.float32))
            h = min(grid.tile, grid.height - y0)
            w = min(grid.tile, grid.width - x0)
            bounds = windows.bounds(windows.Window(x0, y0, w, h), scene.grid.transform)
            tile_rows.append({"tile_row": ti, "tile_col": tj, "row_off": y0, "col_off": x0,
                              "height": h, "width": w, "present_tokens": int(total),
                              "bounds": bounds})
            tile_embs.append(pooled.astype(np.float32))
        bar.update(1)
    return computed


def _fetch(dispatched):
    mean, count, absent = dispatched
    return np.asarray(mean), np.asarray(count), {k: np.asarray(v) for k, v in absent.items()}


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="tile", desc="embedding", dynamic_ncols=True,
                smoothing=0.1)
