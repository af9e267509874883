r"""GEO-Bench-2 pastis (PASTIS-R): crop-type segmentation from time series, 19 classes (void
label ignored); Sentinel-2 (10 bands, B01 <- B02 and B09 <- B8A imputed) -> sentinel2_l2a and
ascending Sentinel-1 (VV, VH) -> sentinel1, as monthly means over the last 12 months.

Default: the converged linear probe (L-BFGS) on per-patch features, patch 4. An arg "s2",
"s1_asc" or "s1_desc" uses one input.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/pastis.py \
        --config.dataset.root=/path/to/geobench2 [--config.dataset.timesteps=6]

Data: <root>/pastis/*.tortilla ($GEOBENCH2_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks


def get_config(arg=None):
    if arg not in (None, "", "s2", "s1_asc", "s1_desc"):
        raise ValueError(f"configs/eval/pastis.py: unknown arg {arg!r}; use no arg, 's2', "
                         "'s1_asc' or 's1_desc'")
    cfg = tasks.benchmark_config("pastis", "geobench2", embedding_batch_size=16)
    if arg:
        cfg.dataset.inputs = (arg,)
    cfg.lock()
    return cfg
