r"""GeoBench v1 m-NeonTree: NEON tree crowns (2 classes, 400x400 RGB at 0.1 m -> naip, IR
filled; its canopy height and 369 hyperspectral bands are dropped).

Default: the converged linear probe (L-BFGS) on per-patch features, patch 8, gsd 0.1.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_neontree.py \
        --config.dataset.root=/path/to/geobench [--mode linear_probe|finetune]

Data: <root>/segmentation_v1.0/m-NeonTree/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file("m-NeonTree")
