"""Pretrain SpaceNit-JAX.

    python -m launch.pretrain --config configs/nano.py --workdir DIR [--config.field=value ...]

With no dataset configured (config.data.path empty) a synthetic H5 dataset is generated
into DIR/data first. Restarting with the same DIR resumes from its latest checkpoint.
Multi-host: run one process per host (SLURM task / TPU worker); jax.distributed is
initialised from the environment (see launch/slurm_gpu.sbatch, launch/tpu_pod.sh).
"""

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/nano.py", "pretraining config file",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, config)",
                    required=True)


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from spacenit_jax.train import loop, multihost

    try:
        summary = loop.train(flags.FLAGS.config, flags.FLAGS.workdir)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    multihost.finalize()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
