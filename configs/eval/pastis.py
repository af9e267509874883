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

get_config = tasks.config_file(
    "pastis", "geobench2", inputs=("s2", "s1_asc", "s1_desc"), embedding_batch_size=16)
