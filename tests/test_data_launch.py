"""Command-line entry points: make_dataset prints a readable dataset; benchmark prints JSON."""

import json
import pathlib

from launch import benchmark_data, make_dataset
from spacenit_jax.data import h5


def test_make_dataset_then_benchmark(tmp_path, capsys):
    assert make_dataset.main(["--out", str(tmp_path), "--num-samples", "6", "--tile-size", "32",
                              "--seed", "1", "--workers", "1"]) == 0
    path = pathlib.Path(capsys.readouterr().out.strip())
    assert path.name == "6" and path.parent.parent.name == "h5py_data_w_missing_timesteps_zstd_3_32_x_64"
    assert len(h5.H5Source(path, ["sentinel2_l2a", "sentinel1"])) >= 1
    # a second call reuses the dataset and prints the same path
    make_dataset.main(["--out", str(tmp_path), "--num-samples", "6", "--tile-size", "32",
                       "--seed", "1", "--workers", "1"])
    assert capsys.readouterr().out.strip() == str(path)
    assert benchmark_data.main(["--data", str(path), "--batches", "2", "--warmup", "0",
                                "--rows", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["samples_per_s"] > 0 and 0 <= out["padding_fraction"] < 1
    assert set(out["plan"]) >= {"L_t", "L_o", "L_d", "K"}

