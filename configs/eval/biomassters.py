r"""GEO-Bench-2 biomassters (BioMassters): above-ground biomass regression per pixel (Mg/ha),
32x32; 12 monthly Sentinel-2 (10 bands, cloud probability dropped, B01 <- B02 and B09 <- B8A
imputed) -> sentinel2_l2a and ascending Sentinel-1 (VV, VH, dB) -> sentinel1.

Default: the closed-form ridge probe on per-patch features (patch 4: each token predicts its
4 x 4 pixels), RMSE (Mg/ha, lower is better) with the bootstrap interval. An arg "s2",
"s1_asc" or "s1_desc" uses one input.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/biomassters.py \
        --config.dataset.root=/path/to/geobench2

Data: <root>/biomassters/*.tortilla ($GEOBENCH2_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks


def get_config(arg=None):
    if arg not in (None, "", "s2", "s1_asc", "s1_desc"):
        raise ValueError(f"configs/eval/biomassters.py: unknown arg {arg!r}; use no arg, 's2', "
                         "'s1_asc' or 's1_desc'")
    cfg = tasks.benchmark_config("biomassters", "geobench2", embedding_batch_size=32)
    if arg:
        cfg.dataset.inputs = (arg,)
    cfg.lock()
    return cfg
