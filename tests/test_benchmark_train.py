"""launch.benchmark_train: one JSON line, no recompilation, overrides in the one CLI style."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_benchmark_train_prints_one_json_line():
    out = subprocess.run(
        [sys.executable, "-m", "launch.benchmark_train",
         "--config", "configs/reference_head.py:size=nano,smoke", "--samples", "2",
         "--patch_size", "4", "--crop_patches", "2", "--timesteps", "2", "--steps", "2",
         "--warmup", "1", "--peak_flops", "measure", "--config.model.overrides.drop_path=0.0"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["compilations"] == 0
    assert result["tokens_per_s"] > 0 and result["samples_per_s"] > 0
    assert result["peak_flops_per_device"] > 1e8 and 0 < result["mfu"] < 1
    assert result["model_flops_per_s"] == result["model_flops_per_step"] / result["step_s_median"]
