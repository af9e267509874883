r"""GeoBench v1 m-cashew-plant: Benin smallholder cashew plantations (7 classes, class 0 = no
data; 256x256 Sentinel-2, 12 bands + cloud probability, which is dropped).

Default: the converged linear probe (L-BFGS) on per-patch features, patch 4.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_cashew_plant.py \
        --config.dataset.root=/path/to/geobench [--mode linear_probe|finetune]

Data: <root>/segmentation_v1.0/m-cashew-plant/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file("m-cashew-plant")
