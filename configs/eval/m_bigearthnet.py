r"""GeoBench v1 m-bigearthnet: multilabel BigEarthNet (43 classes, 120x120 Sentinel-2, 12 bands;
B10 is not stored).

Default: kNN (micro-F1 primary), patch 4; --mode linear_probe fits the converged L-BFGS
probe.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_bigearthnet.py \
        --config.dataset.root=/path/to/geobench [--mode knn|linear_probe|finetune]

Data: <root>/classification_v1.0/m-bigearthnet/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

# the reference's embedding batch for this task
get_config = tasks.config_file(
    "m-bigearthnet", embedding_batch_size=64)
