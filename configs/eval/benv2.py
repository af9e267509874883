r"""GEO-Bench-2 benv2 (BigEarthNet v2): multilabel, 19 classes, 120x120 at 10 m; Sentinel-2
(12 bands) -> sentinel2_l2a and Sentinel-1 (VV, VH, dB) -> sentinel1, one date.

Default: kNN on mean-pooled tokens of both sensors (micro-F1 primary), patch 4;
--mode linear_probe fits the converged L-BFGS probe. An arg "s2" or "s1" uses one sensor
(fine-tuning takes one).

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/benv2.py \
        --config.dataset.root=/path/to/geobench2 [--mode knn|linear_probe]

Data: <root>/benv2/*.tortilla ($GEOBENCH2_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file(
    "benv2", "geobench2", inputs=("s2", "s1"), embedding_batch_size=64)
