r"""GeoBench v1 m-pv4ger-seg: PV4GER solar panel segmentation (2 classes, 320x320 RGB aerial at
0.1 m -> naip, IR filled).

Default: the converged linear probe (L-BFGS) on per-patch features, patch 8, gsd 0.1.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_pv4ger_seg.py \
        --config.dataset.root=/path/to/geobench [--mode linear_probe|finetune]

Data: <root>/segmentation_v1.0/m-pv4ger-seg/ ($GEOBENCH_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks

get_config = tasks.config_file("m-pv4ger-seg")
