"""Pretrain SpaceNit-JAX.

    python -m launch.pretrain --config configs/nano.py --workdir DIR [--config.field=value ...]

With no dataset configured (config.data.path empty) a synthetic H5 dataset is generated
into DIR/data first. Restarting with the same DIR resumes from its latest checkpoint.
Multi-host: run one process per host (SLURM task / TPU worker); jax.distributed is
initialised from the environment (see launch/slurm_gpu.sbatch, launch/tpu_pod.sh).
The default config (configs/nano.py) is found from any working directory. A command-line
mistake (config file, field or value) prints one `error:` line and exits with code 2;
a run stopped by a training fault (non-finite losses, batches without tokens) prints one
line and exits with code 1.
"""

import json
import logging

from absl import flags

from spacenit_jax import cli

CONFIG = cli.define_config("config", "configs/nano.py", "pretraining config file")
WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, config)",
                              required=True)


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from spacenit_jax.eval import hook
    from spacenit_jax.train import loop, multihost

    try:
        trainer = loop.Trainer.create(CONFIG.value, WORKDIR.value)
        hook.attach(trainer)  # the in-loop evaluator of config.eval, if it has tasks
    except (ValueError, FileNotFoundError, KeyError) as err:  # start-up checks of the config
        raise cli.UsageError(cli.one_line(err)) from None
    summary = trainer.train()
    multihost.finalize()
    if multihost.is_main():
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    from spacenit_jax.train.loop import TrainingHalted

    cli.run(main, errors={cli.UsageError: cli.USAGE_EXIT_CODE, TrainingHalted: 1})
