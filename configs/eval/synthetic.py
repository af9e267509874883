"""The built-in synthetic classification task: needs no downloads (the default eval task).

Ten classes of sentinel2_l2a-like 32x32 images whose class shows in the mean spectrum and
in a stripe texture (`spacenit_jax.eval.synthetic`); 300 train, 100 valid, 100 test. An
arg "small" shrinks it (64 / 32 / 32 images of 16x16, 4 classes) for smoke runs and tests.
"""

from spacenit_jax.eval import tasks


def get_config(arg=None):
    if arg not in (None, "", "small"):
        raise ValueError(f"configs/eval/synthetic.py: unknown arg {arg!r}; use no arg or 'small'")
    if arg == "small":
        dataset = tasks.synthetic_dataset(num_classes=4, image_size=16, train_size=64,
                                          valid_size=32, test_size=32)
    else:
        dataset = tasks.synthetic_dataset()
    cfg = tasks.base_config("synthetic", dataset)
    cfg.mode = "knn"
    cfg.every_n_steps = 1000
    if arg == "small":  # batches of 8 still divide over 8 devices
        cfg.embedding_batch_size = 8
        cfg.knn.k = 5
        cfg.probe.epochs, cfg.probe.lrs = 10, (1e-3, 1e-2)
        cfg.finetune.epochs, cfg.finetune.batch_size, cfg.finetune.lr = 3, 16, 5e-3
        cfg.finetune.eval_batch_size = 8
    cfg.lock()
    return cfg
