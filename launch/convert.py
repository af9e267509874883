"""Convert GeoTIFFs into the H5 training format; print where the dataset went.

    # a folder of co-registered per-sensor GeoTIFFs (e.g. TerraMind's examples)
    python -m launch.convert folder --input-dir terramind-examples --out data/terramind \\
        [--tile-size 64] [--sensors sentinel2_l2a sentinel1 srtm] [--date 2021-07-01]
    # the original's raw tile dataset (manifests + per-group rasters)
    python -m launch.convert tiles --tile-path /data/tiles --out data/h5 \\
        --sensors sentinel2_l2a sentinel1 srtm worldcover [--required sentinel2_l2a] \\
        [--tile-size 128] [--workers 8]

Notes (what was dropped or assumed, and why) go to stderr; the last stdout line is one
JSON object whose "path" is the `<num_samples>` directory that pretraining takes:
    python -m launch.pretrain --config configs/nano.py --workdir runs/x --config.data.path=PATH
"""

from __future__ import annotations

import argparse
import json
import sys

from spacenit_jax import cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m launch.convert",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)

    def common(q):
        q.add_argument("--out", required=True, help="root directory of the H5 dataset")
        q.add_argument("--tile-size", type=int, default=None,
                       help="sample edge in 10 m pixels (divides 256)")
        q.add_argument("--compression", default="zstd", choices=["zstd", "gzip", "lz4", "none"])
        q.add_argument("--compression-opts", type=int, default=3,
                       help="zstd clevel / gzip level (ignored for lz4 and none)")
        q.add_argument("--shuffle", action="store_true", help="gzip shuffle filter")
        q.add_argument("--overwrite", action="store_true")

    f = sub.add_parser("folder", help="a folder of per-sensor subfolders of GeoTIFFs")
    f.add_argument("--input-dir", required=True)
    f.add_argument("--sensors", nargs="+", default=None,
                   help="the dataset's sensors (default: every sensor folder found)")
    f.add_argument("--bands", action="append", metavar="LABEL=B1,B2,...",
                   help="band names of a sensor's files, in file order")
    f.add_argument("--s1-units", default="auto", choices=["auto", "db", "linear"])
    f.add_argument("--date", default=None, help="YYYY-MM-DD for files without a date")
    common(f)
    t = sub.add_parser("tiles", help="the original's raw tile dataset (manifests + rasters)")
    t.add_argument("--tile-path", required=True)
    t.add_argument("--sensors", nargs="+", required=True, help="supported sensors")
    t.add_argument("--required", nargs="*", default=[], help="sensors every sample must have")
    t.add_argument("--workers", type=int, default=1)
    common(t)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from spacenit_jax.inference import convert

    comp = None if args.compression == "none" else args.compression
    shuffle = True if args.shuffle else None
    try:
        if args.mode == "folder":
            from launch.embed import _pairs

            bands = {k: tuple(v) for k, v in _pairs(args.bands, "--bands").items()}
            result = convert.convert_folder(
                args.input_dir, args.out, tile_size=args.tile_size or 64,
                sensor_labels=args.sensors, bands=bands,
                s1_units=args.s1_units, date=convert.parse_date(args.date), compression=comp,
                compression_opts=args.compression_opts, shuffle=shuffle,
                overwrite=args.overwrite)
        else:
            result = convert.convert_tiles(
                args.tile_path, args.out, supported=args.sensors, required=args.required,
                tile_size=args.tile_size or 256, compression=comp,
                compression_opts=args.compression_opts, shuffle=shuffle,
                workers=args.workers, overwrite=args.overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, OSError) as err:
        print(f"error: {cli.one_line(err)}", file=sys.stderr)
        return 2
    cli.print_notes(result.notes)
    cli.print_notes([f"{reason}: {n}" for reason, n in sorted(result.dropped.items())],
                    "dropped")
    print(json.dumps(result.summary() | {"notes": len(result.notes)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
