"""The built-in synthetic segmentation task: per-pixel labels, no downloads.

sentinel2_l2a-like 32x32 images tiled into 8x8 blocks, each block one of 4 classes (the
classification set's spectral signatures and textures), labelled per pixel
(`spacenit_jax.eval.synthetic.SyntheticSegmentation`); 300 train, 100 valid, 100 test.
Linear probe by default (one feature per patch position, the reference's per-token head
upsampled to the labels; mIoU primary); `--mode finetune` trains the encoder too. An arg
"small" shrinks it (64 / 32 / 32 images of 16x16, 3 classes) for smoke runs and tests.
"""

from spacenit_jax.eval import tasks


def get_config(arg=None):
    if arg not in (None, "", "small"):
        raise ValueError(f"configs/eval/synthetic_segmentation.py: unknown arg {arg!r}; use no "
                         "arg or 'small'")
    if arg == "small":
        dataset = tasks.synthetic_segmentation_dataset(num_classes=3, image_size=16,
                                                       train_size=64, valid_size=32,
                                                       test_size=32)
    else:
        dataset = tasks.synthetic_segmentation_dataset()
    cfg = tasks.base_config("synthetic_segmentation", dataset)
    cfg.mode = "linear_probe"
    cfg.pooling = "spatial"
    cfg.every_n_steps = 1000
    if arg == "small":  # batches of 8 still divide over 8 devices
        cfg.embedding_batch_size = 8
        cfg.probe.epochs, cfg.probe.lrs = 10, (1e-2, 1e-1)
        cfg.finetune.epochs, cfg.finetune.batch_size, cfg.finetune.lr = 4, 8, 2e-2
        cfg.finetune.freeze_fraction = 0.5
        cfg.finetune.eval_batch_size = 8
    cfg.lock()
    return cfg
