r"""GeoBench v1 m-SA-crop-type: South-Africa crop type (10 classes, class 0 = No Data; 256x256
Sentinel-2, 12 bands + cloud probability, which is dropped; the pre-release samples are
8-bit scaled, which selects the dataset normalisation).

Default: the converged linear probe (L-BFGS) on per-patch features, patch 4.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_sa_crop_type.py \
        --config.dataset.root=/path/to/geobench [--mode linear_probe|finetune]

Data: <root>/segmentation_v1.0/m-SA-crop-type/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file("m-SA-crop-type")
