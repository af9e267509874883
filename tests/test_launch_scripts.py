"""Cluster launch scripts pass every argument through intact (spaces, parentheses, quotes)."""

import os
import pathlib
import stat
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]

# A fake gcloud that runs the ssh --command string with bash, as the TPU worker would, in
# a fake home; a fake python that records the argv it gets, one argument per line.
FAKE_GCLOUD = """#!/bin/bash
printf '%s\\n' "$@" > "$RECORD_DIR/gcloud_argv"
while [ $# -gt 0 ]; do
  if [ "$1" = "--command" ]; then shift; exec bash -c "$1"; fi
  shift
done
exit 3
"""
FAKE_PYTHON = """#!/bin/bash
printf '%s\\0' "$@" > "$RECORD_DIR/python_argv"
echo "WANDB_MODE=$WANDB_MODE" > "$RECORD_DIR/python_env"
"""


def _executable(path: pathlib.Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_tpu_pod_script_quotes_arguments(tmp_path):
    bin_dir, home, record = tmp_path / "bin", tmp_path / "home", tmp_path / "record"
    for d in (bin_dir, home / "spacenit-jax", record):
        d.mkdir(parents=True)
    _executable(bin_dir / "gcloud", FAKE_GCLOUD)
    _executable(bin_dir / "python", FAKE_PYTHON)
    args = ["my-tpu", "us-central2-b", "configs/large.py", "gs://bucket/runs/a b",
            "--config.data.hw_p_list=(1, 2, 4)", "--config.eval.tasks=()",
            "--config.wandb.entity=it's $HOME"]
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(home),
               RECORD_DIR=str(record))
    env.pop("WANDB_MODE", None)
    out = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), *args], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    gcloud = (record / "gcloud_argv").read_text().splitlines()
    assert gcloud[:6] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone"]
    argv = (record / "python_argv").read_text().split("\0")[:-1]
    assert argv == ["-m", "launch.pretrain", "--config", "configs/large.py", "--workdir",
                    "gs://bucket/runs/a b", "--config.mesh.fsdp=-1", "--config.mesh.data=1",
                    "--config.data.hw_p_list=(1, 2, 4)", "--config.eval.tasks=()",
                    "--config.wandb.entity=it's $HOME"]
    assert (record / "python_env").read_text().strip() == "WANDB_MODE=offline"


def test_local_multiprocess_drops_only_the_collectives_chatter():
    from launch.local_multiprocess import _is_gloo_chatter

    # pieces of the gloo messages, printed by several threads at once
    chatter = ["[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected "
               "peer ranks is : 1", "[Gloo] Rank [Gloo] Rank 1 is connected to 1 peer ranks.",
               "0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1",
               "1", " peer ranks. "]
    assert all(_is_gloo_chatter(line) for line in chatter)
    assert not _is_gloo_chatter('{"workdir": "/runs/mp", "final_step": 3}')
    assert not _is_gloo_chatter("error: something the user must see")
