r"""GeoBench v1 m-so2sat: So2Sat LCZ42 (17 classes, 32x32; 10 Sentinel-2 bands stored as
reflectance / 10,000, read x 10,000; B01 <- B02 and B09 <- B8A imputed; its 8 Sentinel-1
bands are not used).

Default: kNN, patch 4; --mode linear_probe fits the converged L-BFGS probe.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_so2sat.py \
        --config.dataset.root=/path/to/geobench [--mode knn|linear_probe|finetune]

Data: <root>/classification_v1.0/m-so2sat/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file("m-so2sat")
