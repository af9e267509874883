"""python -m launch.embed and python -m launch.benchmark_embed, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from inference_tiny import save_tiny

from launch import benchmark_embed
from launch import embed as embed_cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"), seed=2)


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_embed_a_terramind_location_from_its_folder(ckpt, data_dir, tmp_path, capsys):
    out = tmp_path / "emb.tif"
    folder = str(data_dir / "terramind-examples")
    rc = embed_cli.main(["--checkpoint", str(ckpt), "--input-dir", folder, "--location",
                         "282D_485L_3_3", "--out", str(out), "--tile", "112", "--overlap", "0",
                         "--batch", "2", "--no-progress", "--quicklook", str(tmp_path / "q.png")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = last_json(captured.out)
    assert summary["output"] == str(out) and summary["crs"] == "EPSG:32722"
    assert (summary["width"], summary["height"], summary["bands"]) == (28, 28, 32)
    assert summary["tiles"] == 4 and summary["compilations"] in (0, 1)
    assert summary["seconds"] > 0 and summary["quicklook"].endswith("q.png")
    assert "LULC: not used" in captured.err  # the land-cover folder is not a model sensor
    with rasterio.open(out) as ds:
        assert np.isfinite(ds.read()).all()


def test_embed_with_explicit_inputs_and_band_names(ckpt, data_dir, tmp_path, capsys):
    root = data_dir / "terramind-examples"
    s2 = root / "S2L2A" / "38D_378R_2_3.tif"
    names = "B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B11,B12"
    rc = embed_cli.main(["--checkpoint", str(ckpt), "--input", f"sentinel2_l2a={s2}",
                         "--bands", f"sentinel2_l2a={names}", "--out", str(tmp_path / "e.tif"),
                         "--tile", "112", "--overlap", "16", "--batch", "3", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "ASSUMING" not in captured.err  # the names were given
    assert last_json(captured.out)["tiles"] == 9


@pytest.mark.parametrize("args,match", [
    (["--input-dir", "{root}"], "holds 2 locations \\(282D_485L_3_3, 38D_378R_2_3\\): pick "
                                "one with --location"),
    (["--input-dir", "{root}", "--location", "nowhere"], "--location 'nowhere' not found"),
    (["--input", "sentinel2l2a={root}/S2L2A/38D_378R_2_3.tif"],
     "'sentinel2l2a' is not a known sensor .*did you mean 'sentinel2_l2a'"),
    (["--input", "srtm={root}/S2L2A/38D_378R_2_3.tif"], "12 bands and no band names"),
    (["--input", "sentinel1={root}/S1RTC/38D_378R_2_3.tif", "--s1-units", "linear"],
     "units 'linear' declared but values are negative"),
    (["--input", "srtm={root}/DEM/missing.tif"], "no such file"),
    (["--input", "srtm"], "expected LABEL=VALUE"),
])
def test_embed_errors_are_one_line(ckpt, data_dir, tmp_path, capsys, args, match):
    root = str(data_dir / "terramind-examples")
    args = [a.replace("{root}", root) for a in args]
    rc = embed_cli.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "e.tif"),
                         "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ")
    import re

    assert re.search(match, err[-1]), err[-1]
    assert not (tmp_path / "e.tif").exists()


def test_benchmark_smoke(tmp_path, capsys):
    assert benchmark_embed.main(["--size", "200", "--tile", "64", "--overlap", "16",
                                 "--batch", "4", "--workdir", str(tmp_path)]) == 0
    out = last_json(capsys.readouterr().out)
    assert out["tiles"] == 16 and out["compilations_during_scene"] == 0
    assert out["scene_float32_bytes"] == 200 * 200 * 15 * 4
    assert out["output_px"] == [25, 25]
    for key in ("scene_pixels_per_s", "tiles_per_s", "peak_rss_during_scene_bytes",
                "peak_python_alloc_bytes"):
        assert out[key] > 0
