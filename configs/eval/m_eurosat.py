"""GeoBench m-eurosat classification (spec §9.7): the reference's headline in-loop task.

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_eurosat.py
    ... --config configs/eval/m_eurosat.py:synthetic   # same settings, built-in data

Data: $GEOBENCH_DIR/classification_v1.0/m-eurosat/ unless `dataset.root` is given
(`--config.dataset.root=/path/to/geobench`). Images are normalised with the pretraining
(COMPUTED) statistics of sentinel2_l2a, as the official setting does.
"""

from spacenit_jax.eval import tasks


def get_config(arg=None):
    if arg not in (None, "", "synthetic"):
        raise ValueError(f"configs/eval/m_eurosat.py: unknown arg {arg!r}; use no arg or "
                         "'synthetic'")
    if arg == "synthetic":
        dataset = tasks.synthetic_dataset()
    else:
        dataset = tasks.geobench_dataset("m-eurosat")  # root None -> $GEOBENCH_DIR
    cfg = tasks.base_config("m-eurosat", dataset)
    cfg.mode = "knn"
    cfg.patch_size = 4
    cfg.representation = "encoder"
    cfg.pooling = "mean"
    cfg.embedding_batch_size = 128
    cfg.every_n_steps = 4000  # the reference's m-eurosat interval (its README says 2000)
    cfg.knn.k, cfg.knn.tau = 20, 0.07
    cfg.probe.epochs, cfg.probe.batch_size = 50, 32
    cfg.finetune.batch_size, cfg.finetune.epochs, cfg.finetune.lr = 64, 50, 1e-4
    cfg.lock()
    return cfg
