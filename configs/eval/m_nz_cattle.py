r"""GeoBench v1 m-nz-cattle: New Zealand cattle (2 classes, 500x500 RGB aerial at 0.1 m -> naip,
IR filled).

Default: the converged linear probe (L-BFGS) on per-patch features, patch 10 (50 x 50
tokens), gsd 0.1.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_nz_cattle.py \
        --config.dataset.root=/path/to/geobench [--mode linear_probe|finetune]

Data: <root>/segmentation_v1.0/m-nz-cattle/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file("m-nz-cattle")
