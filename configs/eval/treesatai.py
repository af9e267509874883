r"""GEO-Bench-2 treesatai (TreeSatAI): multilabel tree genera, 15 classes. Default input:
the Sentinel-2 6 x 6 patch at 10 m (12 bands) -> sentinel2_l2a, patch 2 (3 x 3 tokens);
arg "aerial": the 0.2 m colour-infrared aerial image (304 x 304) -> naip, patch 8 (needs a
model with naip).

Default: kNN (micro-F1 primary); --mode linear_probe fits the converged L-BFGS probe.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/treesatai.py \
        --config.dataset.root=/path/to/geobench2 [--mode knn|linear_probe|finetune]

Data: <root>/treesatai/*.tortilla ($GEOBENCH2_DIR when dataset.root is unset).
"""

from spacenit_jax.eval import tasks


def get_config(arg=None):
    if arg not in (None, "", "aerial"):
        raise ValueError(f"configs/eval/treesatai.py: unknown arg {arg!r}; use no arg or "
                         "'aerial'")
    cfg = tasks.benchmark_config("treesatai", "geobench2")
    if arg == "aerial":
        cfg.dataset.inputs, cfg.patch_size, cfg.gsd = ("aerial",), 8, 0.2
    cfg.lock()
    return cfg
