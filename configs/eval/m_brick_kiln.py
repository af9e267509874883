r"""GeoBench v1 m-brick-kiln: brick kiln detection (2 classes, 64x64 Sentinel-2, 13 bands; B10
dropped). The pre-release samples hold 8-bit scaled B10-B12, which selects the dataset
normalisation (norm 'auto').

Default: kNN, patch 4; --mode linear_probe fits the converged L-BFGS probe.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_brick_kiln.py \
        --config.dataset.root=/path/to/geobench [--mode knn|linear_probe|finetune]

Data: <root>/classification_v1.0/m-brick-kiln/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file("m-brick-kiln")
