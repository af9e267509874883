#!/bin/bash
# Pretraining on a Cloud TPU pod slice: the same command on every worker.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/large.py gs://bucket/runs/large \
#       --config.data.path=/mnt/disks/data/.../1138828 --config.data.hw_p_list='(1, 2, 4)'
# jax.distributed.initialize() discovers the TPU workers by itself. The repository and
# its environment must already be installed on every worker (e.g. `pip install -e .`).
# Every argument reaches launch.pretrain on the workers exactly as given here: each is
# quoted for the workers' bash (printf %q) before it goes into the ssh command string.
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir}
shift 4
ARGS=$(printf ' %q' --config "$CONFIG" --workdir "$WORKDIR" --config.mesh.fsdp=-1 \
    --config.mesh.data=1 "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
    "cd ~/spacenit-jax && WANDB_MODE=\${WANDB_MODE:-offline} python -m launch.pretrain$ARGS"
