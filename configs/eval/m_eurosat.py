r"""GeoBench v1 m-eurosat (10 classes, 64x64 Sentinel-2, 13 bands; B10 dropped): the
reference's headline in-loop task.

Default: kNN (k 20, tau 0.07) on mean-pooled online-encoder tokens at patch 4, the
pretraining normalisation of sentinel2_l2a (the official setting); --mode linear_probe fits
the converged L-BFGS probe.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_eurosat.py \
        --config.dataset.root=/path/to/geobench [--mode knn|linear_probe|finetune]
    ... --config configs/eval/m_eurosat.py:synthetic   # same settings, built-in data

Data: <root>/classification_v1.0/m-eurosat/ ($GEOBENCH_DIR when dataset.root is unset).
The one-sample copy in tests/data/geobench runs as a smoke test with
--config.dataset.root=tests/data/geobench --config.dataset.partition=smoke.
"""

from spacenit_jax.eval import tasks


def get_config(arg=None):
    if arg not in (None, "", "synthetic"):
        raise ValueError(f"configs/eval/m_eurosat.py: unknown arg {arg!r}; use no arg or "
                         "'synthetic'")
    cfg = tasks.benchmark_config("m-eurosat")
    if arg == "synthetic":
        cfg.dataset = tasks.synthetic_dataset()
    cfg.embedding_batch_size = 128
    cfg.every_n_steps = 4000  # the reference's m-eurosat interval (its README says 2000)
    cfg.knn.k, cfg.knn.tau = 20, 0.07
    cfg.finetune.batch_size, cfg.finetune.epochs, cfg.finetune.lr = 64, 50, 1e-4
    cfg.lock()
    return cfg
