"""Shared pieces of the pretraining configs (ml_collections `get_config(arg)` files).

`arg` is a comma-separated list of `key=value` or bare flags, e.g. "size=nano,smoke"
(big_vision style). Any field can then be overridden on the command line with
`--config.total_steps=100`; unknown fields are errors (the config is locked).
"""

from __future__ import annotations

from ml_collections import ConfigDict, config_dict

from spacenit_jax import sensors
from spacenit_jax.train import config as run_config


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
    """'size=base,smoke' -> ConfigDict(size='base', smoke=True) over the defaults."""
    out = dict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        if not sep:
            out[key] = True
        elif isinstance(defaults[key], bool):
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = type(defaults[key])(value)
    return ConfigDict(out)


def execution_defaults(size: str) -> dict:
    """How a model size runs by default (never what it computes), chosen so that each
    config fits its target hardware out of the box; measured with launch.aot_compile
    (README, "Check a pod run before you book it").

    nano, tiny: float32, unrolled layers (CPU-friendly, seconds to compile).
    base, large: bfloat16 matmul inputs (float32 weights, residual stream, norms and
      losses) and scanned layers (one compiled block per stack: a pod compile takes
      minutes, not tens of minutes). No rematerialisation: at 532 samples per step base
      needs 38.8 GiB of 80 per H100 (8 x H100), and on a v5p-8 (4 chips) 50.5 GiB of 95
      with `microbatches=2` (116 GiB with one); large at 608 samples on a v5p-128 19 GiB.
    The attention kernel follows the compile target (model/attention.py).
    """
    if size in ("base", "large"):
        return {"compute_dtype": "bfloat16", "scan_layers": True, "remat": "none"}
    return {"compute_dtype": "float32", "scan_layers": False, "remat": "none"}


def base_config(preset: str, size: str, smoke: bool, objective: str) -> ConfigDict:
    """The pretraining run config. Sections come from the dataclasses that own their
    defaults (spacenit_jax.train.config); only the recipe's own choices are set here."""
    c = ConfigDict()
    c.seed = 0
    c.total_steps = 300_000
    c.microbatches = 1
    c.log_every = 10
    c.init_from = ""  # a workdir / params checkpoint to initialise parameters from
    # Peak FLOP/s of one device for MFU; None: the device's datasheet bf16 dense peak when
    # known (H100, A100, TPU v4/v5e/v5p/v6e), else MFU is not reported (e.g. on a CPU).
    c.peak_flops_per_device = config_dict.placeholder(float)
    c.max_nonfinite_steps = 20  # consecutive skipped updates before stopping
    c.max_tokenless_steps = 20  # consecutive batches without any real token before stopping
    c.stop_at_step = 0  # >0: checkpoint and stop there as if preempted (time-limited jobs)
    c.model = run_config.model_section(preset, size, sensors.OFFICIAL_SENSORS)
    c.model.update(execution_defaults("nano" if smoke else size))
    c.objective = run_config.objective_section(objective)
    c.optimizer = run_config.optimizer_section()
    c.data = run_config.data_section()
    # Recipe: worker processes decode the H5 files (the original's production run used 4);
    # the pipeline's own default is 0 (in-process).
    c.data.num_workers = 4
    c.mesh = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.checkpoint = run_config.checkpoint_section()
    c.wandb = run_config.wandb_section()
    # In-loop evaluation: the original's m-eurosat kNN every 4000 steps (skipped with a
    # warning when $GEOBENCH_DIR is not set) and the built-in synthetic task. every > 0
    # overrides every task's own interval.
    c.eval = ConfigDict({"every": 0, "run_on_test": False,
                         "tasks": ("configs/eval/m_eurosat.py", "configs/eval/synthetic.py")})
    if smoke:
        shrink(c)
    return c


def shrink(c: ConfigDict) -> None:
    """Smoke settings: a tiny model, a small synthetic dataset, a few steps, CPU-friendly."""
    c.total_steps = 20
    c.log_every = 1
    c.model.sensor_labels = ("sentinel2_l2a", "sentinel1", "worldcover", "srtm")
    c.model.overrides.embed_dim = 64
    c.model.overrides.depth = 2
    c.model.overrides.num_heads = 4
    c.model.overrides.decoder_depth = 1
    c.model.overrides.decoder_num_heads = 4
    c.model.overrides.num_kv_heads = 2 if c.model.preset == "design_card" else None
    c.model.overrides.decoder_num_kv_heads = 2 if c.model.preset == "design_card" else None
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 2
    c.data.synthetic_samples = 64
    c.data.synthetic_tile_size = 32
    c.data.token_budget = 200
    c.data.patch_sizes = (2, 4, 8)
    c.data.hw_p_list = (1, 2, 3, 4)
    c.data.rows = 8  # divisible by 1, 2, 4 or 8 devices
    c.data.num_workers = 0
    c.data.masking.decode_only_sensors = ("worldcover", "srtm")
    c.checkpoint.every = 10
    c.checkpoint.async_save = False
    c.eval.tasks = ("configs/eval/synthetic.py:small",)
    c.eval.every = 10
