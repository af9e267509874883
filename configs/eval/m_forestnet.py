r"""GeoBench v1 m-forestnet: ForestNet drivers of deforestation (12 classes, 332x332 Landsat-8
at 15 m, 8-bit B4, B3, B2, B5, B6, B7; other landsat bands imputed; dataset normalisation
mean +- 2 std as the reference). Centre-cropped to 328 so that patches of 8 tile it within
the model's 64 x 64 position limit.

Default: kNN, patch 8; --mode linear_probe fits the converged L-BFGS probe.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_forestnet.py \
        --config.dataset.root=/path/to/geobench [--mode knn|linear_probe|finetune]

Data: <root>/classification_v1.0/m-forestnet/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

# the reference's embedding batch for this task
get_config = tasks.config_file(
    "m-forestnet", embedding_batch_size=64)
