r"""GeoBench v1 m-pv4ger: PV4GER solar panels (2 classes, 320x320 RGB aerial at 0.1 m -> naip;
IR filled with the pretraining mean; a model without naip gets the sentinel2_l2a fallback
with a note).

Default: kNN, patch 8, gsd 0.1; --mode linear_probe fits the converged L-BFGS probe.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_pv4ger.py \
        --config.dataset.root=/path/to/geobench [--mode knn|linear_probe|finetune]

Data: <root>/classification_v1.0/m-pv4ger/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file("m-pv4ger")
