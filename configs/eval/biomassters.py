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

get_config = tasks.config_file(
    "biomassters", "geobench2", inputs=("s2", "s1_asc", "s1_desc"), embedding_batch_size=32)
