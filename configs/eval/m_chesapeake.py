r"""GeoBench v1 m-chesapeake: Chesapeake land cover (7 classes, class 6 = no-data; 256x256 RGB +
NIR aerial at 1 m -> naip).

Default: the converged linear probe (L-BFGS) on per-patch features, patch 4, gsd 1.0;
--config.dataset.ignore_nodata=true ignores class 6.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_chesapeake.py \
        --config.dataset.root=/path/to/geobench [--mode linear_probe|finetune]

Data: <root>/segmentation_v1.0/m-chesapeake/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file("m-chesapeake")
