"""Benchmark tiled scene inference; print one JSON line.

    python -m launch.benchmark_embed [--size 4000] [--tile 256] [--overlap 32] [--batch 8]
        [--patch-size 8] [--workdir DIR]

Generates a multi-sensor GeoTIFF scene of size x size pixels at 10 m (Sentinel-2 L2A, 12
uint16 bands with band names; Sentinel-1, 2 float32 dB bands on a 20 m grid, so it is
reprojected on the fly; SRTM, int16), strip by strip, and a random nano model
(design-card nano, the official sensors) saved as a checkpoint; compiles the tile batch
once (reported apart), then runs `embed_scene` and reports:

  scene_pixels_per_s, tiles_per_s, seconds (steady state: the compile is excluded);
  peak_rss_during_scene_bytes (resident memory sampled every 20 ms while the scene runs,
  JAX runtime and compiled program included), rss_before_scene_bytes and their difference
  rss_growth_during_scene_bytes (what the scene itself costs: tile batches, the row
  accumulator, GDAL's capped block cache, the COG copy), and peak_python_alloc_bytes
  (numpy/Python allocations traced by tracemalloc during the run);
  scene_float32_bytes: the inputs as float32 on the 10 m grid (H * W * 15 * 4).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import threading
import time
import tracemalloc

import numpy as np


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every)

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def make_scene(directory, size: int, seed: int = 0) -> dict[str, list[str]]:
    """Write the scene's GeoTIFFs strip by strip (bounded memory); {label: [path]}."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from spacenit_jax.inference.prepare import DEFAULT_FILE_BANDS

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x0, y0 = 400000.0, 5600000.0
    specs = {  # label: (bands, dtype, pixel size)
        "sentinel2_l2a": (DEFAULT_FILE_BANDS["sentinel2_l2a"], "uint16", 10.0),
        "sentinel1": (("VV", "VH"), "float32", 20.0),
        "srtm": (("srtm",), "int16", 10.0),
    }
    phase = rng.uniform(0, 2 * np.pi, 8)
    out = {}
    for label, (bands, dtype, pitch) in specs.items():
        n = int(round(size * 10.0 / pitch))
        path = directory / f"{label}.tif"
        profile = dict(driver="GTiff", width=n, height=n, count=len(bands), dtype=dtype,
                       crs="EPSG:32633", transform=from_origin(x0, y0, pitch, pitch),
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                       BIGTIFF="IF_SAFER")
        with rasterio.open(path, "w", **profile) as ds:
            ds.descriptions = tuple(bands)
            cols = np.arange(n) * pitch / 10.0
            for r0 in range(0, n, 256):
                rows = np.arange(r0, min(r0 + 256, n))[:, None] * pitch / 10.0
                field = (np.sin(rows / 97 + phase[0]) * np.cos(cols / 131 + phase[1])
                         + 0.5 * np.sin((rows + cols) / 41 + phase[2]))
                noise = rng.standard_normal((len(bands), *field.shape)) * 0.1
                if label == "sentinel2_l2a":
                    base = np.linspace(800, 3000, len(bands))[:, None, None]
                    data = np.clip(base * (1 + 0.4 * field + noise), 0, 20000)
                elif label == "sentinel1":
                    data = np.array([-11.0, -18.0])[:, None, None] + 4 * field + 3 * noise
                else:
                    data = 300 + 250 * field[None] + 10 * noise
                ds.write(data.astype(dtype), window=Window(0, r0, n, field.shape[0]))
        out[label] = [str(path)]
    return out


def make_model(directory) -> pathlib.Path:
    from flax import nnx

    from spacenit_jax.checkpoint import write_params_checkpoint
    from spacenit_jax.model import models
    from spacenit_jax.model.config import config_to_dict, make_config

    cfg = make_config("design_card", "nano")
    model = models.build_model(cfg, "encoder")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    write_params_checkpoint(directory, params, {"model": {"config": config_to_dict(cfg),
                                                          "kind": "encoder"},
                                                "data": {"normalize": True}}, step=0)
    return pathlib.Path(directory)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4000, help="scene pixels a side (10 m)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--workdir", default=None, help="where to write the scene (default: temp)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)

    import jax
    import rasterio

    import spacenit_jax
    from spacenit_jax.inference import geotiff, scene

    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(args.workdir or tmp)
        t0 = time.perf_counter()
        with rasterio.Env(GDAL_CACHEMAX=scene.GDAL_CACHE_MB):
            inputs = make_scene(work / "scene", args.size)
        gen_s = time.perf_counter() - t0
        model = spacenit_jax.load(make_model(work / "model"))
        # compile the tile batch shape once, outside the timed run
        t0 = time.perf_counter()
        c = args.tile
        warm = {"sentinel2_l2a": np.zeros((args.batch, c, c, 1, 12), np.float32),
                "sentinel1": np.zeros((args.batch, c, c, 1, 2), np.float32),
                "srtm": np.zeros((args.batch, c, c, 1), np.float32)}
        jax.block_until_ready(model.run(warm, patch_size=args.patch_size, pooling="spatial"))
        compile_s = time.perf_counter() - t0
        opened = geotiff.open_scene(inputs, max_timesteps=model.cfg.max_timesteps)
        rss_before = rss_bytes()
        tracemalloc.start()
        with opened, RssSampler() as sampler:
            res = scene.embed_scene(model, opened, work / "emb.tif", patch_size=args.patch_size,
                                    tile=args.tile, overlap=args.overlap, batch=args.batch,
                                    progress=args.progress)
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out_bytes = os.path.getsize(work / "emb.tif")
    pixels = args.size * args.size
    print(json.dumps({
        "scene_px": [args.size, args.size], "tile": args.tile, "overlap": args.overlap,
        "batch": args.batch, "patch_size": args.patch_size, "model": "design_card nano",
        "sensors": list(inputs), "device": str(jax.devices()[0].platform),
        "tiles": res.tiles, "seconds": round(res.seconds, 2),
        "scene_pixels_per_s": round(pixels / res.seconds, 1),
        "tiles_per_s": round(res.tiles / res.seconds, 3),
        "compilations_during_scene": res.compilations, "compile_s": round(compile_s, 2),
        "peak_rss_during_scene_bytes": sampler.peak, "rss_before_scene_bytes": rss_before,
        "rss_growth_during_scene_bytes": sampler.peak - rss_before,
        "peak_python_alloc_bytes": py_peak, "scene_float32_bytes": pixels * 15 * 4,
        "output_bytes": out_bytes, "output_px": [res.height, res.width],
        "scene_generation_s": round(gen_s, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
