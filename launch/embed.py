"""Embed a scene: GeoTIFFs in, a georeferenced embedding GeoTIFF (COG) out.

    python -m launch.embed --checkpoint runs/nano --input sentinel2_l2a=s2.tif \\
        [--input sentinel1=s1.tif ...] --out emb.tif [--patch-size 8 --tile 256 \\
        --overlap 32 --batch 8 --bands sentinel2_l2a=B02,B03,... --parquet tiles.parquet \\
        --quicklook emb.png]
    python -m launch.embed --checkpoint runs/nano --input-dir terramind-examples \\
        --location 38D_378R_2_3 --out emb.tif

--input LABEL=PATH may repeat (several dated files of one sensor form its time series;
PATH may also be a comma-separated list). --input-dir takes a folder with one subfolder
per sensor (sensor labels, or TerraMind's S2L2A / S1RTC / DEM; its LULC folder is not
used); --location picks one location when the folder holds several. The output holds one
pixel per patch, D bands, the input's CRS and its transform scaled by the patch size.
Progress (tiles/s, ETA) goes to stderr; the last stdout line is one JSON object: output,
raster size, CRS, tiles, compilations, seconds, ABSENT token counts and notes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from spacenit_jax import cli


def _pairs(values, what: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in values or []:
        label, sep, rest = v.partition("=")
        if not sep or not label or not rest:
            raise ValueError(f"{what} {v!r}: expected LABEL=VALUE")
        out.setdefault(label.strip(), []).extend(x.strip() for x in rest.split(",") if x.strip())
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m launch.embed",
                                description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="pretraining workdir, checkpoints/<step> folder or torch_bridge export")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--input", action="append", metavar="LABEL=PATH",
                   help="a sensor's GeoTIFF (repeat for more sensors / dates)")
    p.add_argument("--input-dir", help="a folder with one subfolder per sensor")
    p.add_argument("--location", help="with --input-dir: the location (file name without "
                   "date) to embed")
    p.add_argument("--out", required=True, help="output embedding GeoTIFF (COG)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="pixels per patch (default: the model's base patch size)")
    p.add_argument("--tile", type=int, default=256, help="tile size in pixels")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    p.add_argument("--batch", type=int, default=8, help="tiles per device call")
    p.add_argument("--bands", action="append", metavar="LABEL=B1,B2,...",
                   help="band names of a sensor's files, in file order")
    p.add_argument("--s1-units", default="auto", choices=["auto", "db", "linear"],
                   help="Sentinel-1 values: dB, linear power, or decided per file")
    p.add_argument("--nodata", type=float, default=None, help="override the files' nodata")
    p.add_argument("--parquet", help="GeoParquet of pooled per-tile embeddings")
    p.add_argument("--quicklook", help="PCA-to-RGB PNG of the embedding raster")
    p.add_argument("--no-months", action="store_true",
                   help="do not give the model the files' months")
    p.add_argument("--gdal-cache-mb", type=int, default=128,
                   help="GDAL block cache while embedding (MB)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def resolve_inputs(args, model_sensors) -> tuple[dict, dict, list[str]]:
    """({label: [paths]}, {label: band names}, notes) from --input / --input-dir."""
    from spacenit_jax.inference import convert, geotiff

    bands = {k: tuple(v) for k, v in _pairs(args.bands, "--bands").items()}
    if bool(args.input) == bool(args.input_dir):
        raise ValueError("give either --input LABEL=PATH (repeatable) or --input-dir DIR")
    if args.input:
        if args.location:
            raise ValueError("--location applies to --input-dir only")
        return _pairs(args.input, "--input"), bands, []
    folder = geotiff.discover_folder(args.input_dir, only=model_sensors)
    keys = sorted(folder.locations)
    if args.location is not None:
        if args.location not in folder.locations:
            raise ValueError(f"--location {args.location!r} not found in {args.input_dir}; "
                             f"locations: {', '.join(keys[:10])}")
        key = args.location
    elif len(keys) == 1:
        key = keys[0]
    else:
        raise ValueError(f"{args.input_dir} holds {len(keys)} locations ({', '.join(keys[:10])}"
                         f"{', ...' if len(keys) > 10 else ''}): pick one with --location")
    implied = convert.folder_bands(folder)
    implied.update(bands)
    inputs = {k: [str(p) for p in v] for k, v in folder.locations[key].items()}
    return inputs, {k: v for k, v in implied.items() if k in inputs}, list(folder.notes)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:  # every expected failure is one line (InputError is a ValueError)
        import spacenit_jax
        from spacenit_jax.inference import scene

        model = spacenit_jax.load(args.checkpoint, step=args.step)
        print(f"loaded {model}", file=sys.stderr)
        inputs, bands, notes = resolve_inputs(args, model.sensor_labels)
        result = scene.embed_scene(
            model, inputs, args.out, patch_size=args.patch_size, tile=args.tile,
            overlap=args.overlap, batch=args.batch, bands=bands, s1_units=args.s1_units,
            nodata=args.nodata, parquet=args.parquet, quicklook=args.quicklook,
            progress=not args.no_progress, use_months=not args.no_months, notes=notes,
            gdal_cache_mb=args.gdal_cache_mb)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"error: {cli.one_line(err)}", file=sys.stderr)
        return 2
    cli.print_notes(result.notes)
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
