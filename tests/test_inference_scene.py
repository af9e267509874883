"""Tiled scene inference on a real TerraMind location: tiles equal whole-tile encodes,
blended overlaps, georeferencing of the COG, nodata -> ABSENT, one compile per scene,
co-registration by reprojection, GeoParquet and quicklook outputs, input errors."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pytest
import rasterio
from inference_tiny import save_tiny
from rasterio.transform import Affine

import spacenit_jax
from spacenit_jax.inference import geotiff, tiling
from spacenit_jax.inference.scene import embed_scene

LOC = "38D_378R_2_3"
S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
FOLDERS = {"sentinel2_l2a": "S2L2A", "sentinel1": "S1RTC", "srtm": "DEM"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return spacenit_jax.load(save_tiny(tmp_path_factory.mktemp("tiny"), seed=1))


@pytest.fixture(scope="module")
def inputs(data_dir):
    root = data_dir / "terramind-examples"
    return {k: [str(root / v / f"{LOC}.tif")] for k, v in FOLDERS.items()}


def read_all(inputs):
    out = {}
    for label, (path,) in inputs.items():
        with rasterio.open(path) as ds:
            out[label] = ds.read().transpose(1, 2, 0).astype(np.float32)
    return out


def tile_windows(raw, grid: tiling.TileGrid):
    """Each tile's pixels, NaN beyond the scene (independent of the scene reader)."""
    out = {k: [] for k in raw}
    for _, _, y0, x0 in grid.origins():
        for k, v in raw.items():
            t = np.full((grid.tile, grid.tile, v.shape[-1]), np.nan, np.float32)
            part = v[y0:y0 + grid.tile, x0:x0 + grid.tile]
            t[:part.shape[0], :part.shape[1]] = part
            out[k].append(t)
    return {k: np.stack(v) for k, v in out.items()}


def test_ramp_weights_are_a_partition_of_unity():
    r = tiling.ramp(8, 2)
    assert r[2:6].tolist() == [1.0] * 4 and 0 < r[0] < r[1] < 1
    np.testing.assert_allclose(r[6:] + r[:2], 1.0, atol=1e-6)  # neighbours' overlap
    g = tiling.TileGrid(224, 224, 64, 16, 8)
    assert (g.rows, g.cols, g.out_shape, g.stride) == (5, 5, (28, 28), 48)
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        tiling.TileGrid(100, 100, 60, 16, 8)


def test_tiled_inference_equals_whole_tile_inference(model, inputs, tmp_path):
    out = tmp_path / "emb.tif"
    res = embed_scene(model, inputs, out, tile=64, overlap=16, batch=4, progress=False)
    assert res.compilations == 1 and res.tiles == 25 and res.tiles_computed == 25
    grid = tiling.TileGrid(224, 224, 64, 16, 8)
    tiles = tile_windows(read_all(inputs), grid)
    enc = model.encode_batch(tiles, bands={"sentinel2_l2a": S2_ORDER}, pooling="spatial")
    emb = enc.embeddings  # (25, 8, 8, D), NaN beyond the scene
    w = tiling.blend_weights(8, 2)
    num = np.zeros((28, 28, model.embed_dim))
    den = np.zeros((28, 28))
    cover = np.zeros((28, 28), int)
    lo = np.full((28, 28, model.embed_dim), np.inf)
    hi = -lo
    for k, (_, _, y0, x0) in enumerate(grid.origins()):
        r, c = y0 // 8, x0 // 8
        e = emb[k][: 28 - r, : 28 - c]
        ok = np.isfinite(e[..., 0])
        ww = np.where(ok, w[: e.shape[0], : e.shape[1]], 0.0)
        num[r:r + e.shape[0], c:c + e.shape[1]] += ww[..., None] * np.nan_to_num(e)
        den[r:r + e.shape[0], c:c + e.shape[1]] += ww
        cover[r:r + e.shape[0], c:c + e.shape[1]] += ok
        sl = (slice(r, r + e.shape[0]), slice(c, c + e.shape[1]))
        lo[sl] = np.where(ok[..., None], np.minimum(lo[sl], e), lo[sl])
        hi[sl] = np.where(ok[..., None], np.maximum(hi[sl], e), hi[sl])
    with rasterio.open(out) as ds:
        got = ds.read().transpose(1, 2, 0)
    np.testing.assert_allclose(got, num / den[..., None], atol=2e-5, rtol=1e-5)
    # inside a tile (one tile covers it): that tile's own encoding, to float32 round-off
    single = cover == 1
    assert single.sum() > 300
    first = {}
    for k, (_, _, y0, x0) in enumerate(grid.origins()):
        for i in range(8):
            for j in range(8):
                first.setdefault((y0 // 8 + i, x0 // 8 + j), emb[k][i, j])
    for (i, j), e in first.items():
        if i < 28 and j < 28 and single[i, j]:
            np.testing.assert_allclose(got[i, j], e, atol=1e-5, rtol=1e-5)
    # overlaps: a convex blend, within the tiles' range
    multi = cover > 1
    assert multi.sum() > 100
    assert np.all(got[multi] >= lo[multi] - 1e-5) and np.all(got[multi] <= hi[multi] + 1e-5)


def test_output_is_a_georeferenced_cog_in_patches(model, inputs, tmp_path):
    out = tmp_path / "emb.tif"
    n0 = None
    res = embed_scene(model, inputs, out, tile=112, overlap=16, batch=3, progress=False,
                      patch_size=16)
    with rasterio.open(inputs["sentinel2_l2a"][0]) as src, rasterio.open(out) as ds:
        assert ds.crs == src.crs and ds.crs.to_epsg() == 32736
        assert ds.transform == src.transform @ Affine.scale(16)
        assert (ds.width, ds.height, ds.count) == (14, 14, model.embed_dim)
        assert ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.compression.name == "deflate" and ds.descriptions[0] == "emb_000"
        assert ds.tags()["spacenit_patch_size"] == "16"
    assert res.compilations == 1 and (res.width, res.height) == (14, 14)
    assert res.crs == "EPSG:32736" and n0 is None
    again = embed_scene(model, inputs, tmp_path / "again.tif", tile=112, overlap=16, batch=3,
                        progress=False, patch_size=16)
    assert again.compilations == 0  # same tile batch shape: nothing recompiles


def write_with_nodata(src_path, dst, region, value, nodata):
    with rasterio.open(src_path) as src:
        profile, data = src.profile, src.read()
    data[:, region[0], region[1]] = value
    profile.update(nodata=nodata)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)


def test_nodata_pixels_and_tiles_become_absent(model, inputs, tmp_path):
    region = (slice(0, 100), slice(0, 100))
    new = {}
    for label, (path,) in inputs.items():
        dst = tmp_path / f"{label}.tif"
        value = {"sentinel2_l2a": -9999, "sentinel1": np.nan, "srtm": -32768}[label]
        write_with_nodata(path, dst, region, value, None if label == "sentinel1" else value)
        new[label] = [str(dst)]
    out = tmp_path / "emb.tif"
    res = embed_scene(model, new, out, tile=64, overlap=16, batch=4, progress=False)
    with rasterio.open(out) as ds:
        got = ds.read(1)
    assert np.isnan(got[:13, :13]).all()  # patches with any nodata pixel (0..103 px)
    got[:13, :13] = 0
    assert np.isfinite(got).all()
    assert res.tiles_computed == 24  # the top-left tile is nodata only: not computed
    assert res.absent_tokens["srtm"] >= 13 * 13 and res.absent_tokens["sentinel2_l2a"] >= 3 * 169


def test_other_grids_are_reprojected_onto_the_first(inputs, tmp_path):
    """An S1 file on a larger grid (10 px margin, other size) is warped onto the S2 grid
    with WarpedVRT: at whole-pixel alignment the values come back exactly."""
    with rasterio.open(inputs["sentinel1"][0]) as src:
        profile, data = src.profile, src.read()
    big = np.full((2, 244, 244), np.nan, data.dtype)
    big[:, 10:234, 10:234] = data
    t = profile["transform"]
    profile.update(width=244, height=244, transform=Affine(t.a, 0, t.c - 100, 0, t.e, t.f + 100))
    s1 = tmp_path / "s1_big.tif"
    with rasterio.open(s1, "w", **profile) as out:
        out.write(big)
    scene = geotiff.open_scene({"sentinel2_l2a": inputs["sentinel2_l2a"],
                                "sentinel1": [str(s1)]})
    with scene:
        assert any("reprojected onto it with rasterio WarpedVRT" in n for n in scene.notes)
        got = scene.read(0, 0, 224, 224)["sentinel1"][:, :, 0]
        edge = scene.read(-8, 200, 32, 32)["sentinel1"][:, :, 0]
    np.testing.assert_array_equal(got, data.transpose(1, 2, 0).astype(np.float32))
    assert np.isnan(edge[:8]).all() and np.isnan(edge[:, 24:]).all()  # outside the scene
    np.testing.assert_array_equal(edge[8:, :24], got[:24, 200:])


def test_parquet_rows_and_quicklook(model, inputs, tmp_path):
    pytest.importorskip("geopandas", reason="GeoParquet needs the optional 'geo' extra")
    import geopandas as gpd

    res = embed_scene(model, inputs, tmp_path / "emb.tif", tile=64, overlap=16, batch=4,
                      progress=False, parquet=tmp_path / "tiles.parquet",
                      quicklook=tmp_path / "q.png")
    df = gpd.read_parquet(tmp_path / "tiles.parquet")
    assert len(df) == 25 and df.crs.to_epsg() == 32736
    with rasterio.open(inputs["sentinel2_l2a"][0]) as src:
        x0, y0 = src.transform.c, src.transform.f
    first = df.iloc[0]
    assert first.geometry.bounds == pytest.approx((x0, y0 - 640, x0 + 640, y0))
    last = df.iloc[-1]  # the corner tile, clipped to the scene
    assert last.geometry.bounds == pytest.approx((x0 + 1920, y0 - 2240, x0 + 2240, y0 - 1920))
    assert (last.height, last.width) == (32, 32)
    grid = tiling.TileGrid(224, 224, 64, 16, 8)
    tiles = tile_windows(read_all(inputs), grid)
    pooled = model.encode_batch(tiles, bands={"sentinel2_l2a": S2_ORDER}, pooling="mean")
    cols = [c for c in df.columns if c.startswith("emb_")]
    np.testing.assert_allclose(df[cols].to_numpy(), pooled.embeddings, atol=2e-5)
    with rasterio.open(res.quicklook) as q:
        assert (q.count, q.width, q.height, q.dtypes[0]) == (4, 28, 28, "uint8")
        img = q.read()
    assert img[3].min() == 255 and img[:3].std() > 10


def test_scene_input_errors(model, inputs, tmp_path):
    with pytest.raises(ValueError, match="max_grid 64: use --tile 512"):
        embed_scene(model, inputs, tmp_path / "a.tif", tile=520, overlap=0, progress=False)
    with pytest.raises(ValueError, match="is not one of this model's sensors"):
        embed_scene(model, {"landsat": inputs["srtm"]}, tmp_path / "a.tif", progress=False)
    with pytest.raises(geotiff.InputError, match="disagree|12 band names given"):
        embed_scene(model, {"sentinel1": inputs["sentinel1"]}, tmp_path / "a.tif",
                    bands={"sentinel1": S2_ORDER}, progress=False)
    two = tmp_path / "s2_2021-07-01.tif"
    three = tmp_path / "s2_2021-07-20.tif"
    shutil.copy(inputs["sentinel2_l2a"][0], two)
    shutil.copy(inputs["sentinel2_l2a"][0], three)
    with pytest.raises(geotiff.InputError, match="fall in the same month"):
        embed_scene(model, {"sentinel2_l2a": [str(two), str(three)]}, tmp_path / "a.tif",
                    progress=False)
    with pytest.raises(geotiff.InputError, match="cannot align timesteps"):
        embed_scene(model, {"sentinel2_l2a": inputs["sentinel2_l2a"] * 2,
                            "sentinel1": inputs["sentinel1"]}, tmp_path / "a.tif",
                    progress=False)
    assert geotiff.file_date(two, {}) == dt.date(2021, 7, 1)
    assert geotiff.file_date("x.tif", {"datetime": "2023-06-10T16:04:18"}) == dt.date(2023, 6, 10)
    assert geotiff.location_key(two) == "s2"
    assert not (tmp_path / "a.tif").exists()


def test_dated_files_form_the_time_axis(model, inputs, tmp_path):
    """Two dated S2 files and one S1 file: months are the axis, S1 fills its month."""
    a, b = tmp_path / "s2_2023-05-03.tif", tmp_path / "s2_2023-06-20.tif"
    shutil.copy(inputs["sentinel2_l2a"][0], a)
    shutil.copy(inputs["sentinel2_l2a"][0], b)
    scene = geotiff.open_scene({"sentinel2_l2a": [str(b), str(a)], "sentinel1": inputs["sentinel1"]})
    with scene:
        assert scene.dates == ["2023-05", "2023-06"] and scene.months == [4, 5]
        assert [f.path.name for f in scene.files["sentinel2_l2a"]] == [a.name, b.name]
        assert scene.files["sentinel1"][0] is None  # S1 is dated 2023-06-10
        assert scene.timestamps().tolist() == [[3, 4, 2023], [10, 5, 2023]]
        x = scene.read(0, 0, 16, 16)
    assert x["sentinel2_l2a"].shape == (16, 16, 2, 12) and np.isnan(x["sentinel1"][:, :, 0]).all()
