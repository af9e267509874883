"""Config files: every default lives once (in the dataclasses), every field can be
overridden on the command line (ml_collections config_flags refuses list-valued fields, so
sequences are tuples), typos are errors, and a resolved config.json replays as overrides."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

from configs import nano, reference_head, reference_v1
from spacenit_jax import checkpoint
from spacenit_jax.data.pipeline import PipelineConfig
from spacenit_jax.model.config import make_config
from spacenit_jax.train import config as run_config
from spacenit_jax.train import objectives, step, tracking

REPO = pathlib.Path(__file__).resolve().parents[1]
SPECS = ["configs/nano.py", "configs/nano.py:smoke", "configs/tiny.py", "configs/base.py",
         "configs/large.py", "configs/reference_head.py:size=nano,smoke",
         "configs/reference_v1.py:size=base"]
# launch.pretrain's own flag parser (config_flags registers the override flags on the
# global FLAGS, hence a fresh interpreter per parse)
PARSE = """
import json, sys
sys.path.insert(0, "tests")
import launch.pretrain
from spacenit_jax import cli
from test_configs import _leaves

cli.parse(["prog", "--workdir=unused", *sys.argv[1:]])
c = launch.pretrain.CONFIG.value
print(json.dumps({"lists": [k for k, v in _leaves(c) if isinstance(v, list)],
                  "config": json.loads(c.to_json_best_effort())}))
"""


def parse(*argv):
    out = subprocess.run([sys.executable, "-c", PARSE, *argv], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    return out.returncode, out.stdout, out.stderr


def test_each_dataclass_built_from_the_default_config_has_its_defaults():
    c = nano.get_config()
    assert run_config.optimizer_config(c) == step.OptimizerConfig()
    assert run_config.objective_config(c) == objectives.ObjectiveConfig()
    assert run_config.checkpoint_policy(c) == checkpoint.CheckpointPolicy()
    assert run_config.wandb_config(c) == tracking.WandbConfig()
    got = run_config.pipeline_config(c, "/data", run_config.objective_config(c))
    want = PipelineConfig(path="/data", num_views=2, seed=c.seed)
    # the one recipe choice the pretraining configs make on purpose (configs/common.py):
    # worker processes decode the H5 files, as in the original's production run
    assert got.num_workers == 4 and want.num_workers == 0
    assert dataclasses.replace(got, num_workers=0) == want
    # execution switches: the ModelConfig defaults; architecture: the preset's values
    model_cfg = run_config.model_config(c)
    assert model_cfg == make_config("design_card", "nano")
    # and the section of any dataclass round-trips to its defaults
    for cls in (step.OptimizerConfig, objectives.ObjectiveConfig, checkpoint.CheckpointPolicy,
                tracking.WandbConfig):
        assert run_config.build(cls, run_config.section(cls)) == cls()
    with pytest.raises(ValueError, match=r"unknown OptimizerConfig fields \['lrr'\]"):
        run_config.build(step.OptimizerConfig, {"lrr": 1.0})


@pytest.mark.parametrize("config", [nano.get_config("smoke"),
                                    reference_head.get_config("size=tiny"),
                                    reference_v1.get_config("size=nano")])
def test_resolved_config_rebuilds_the_same_model(config):
    resolved = json.loads(json.dumps(run_config.resolved(config)))  # as read from config.json
    assert run_config.model_config(resolved) == run_config.model_config(config)
    assert checkpoint.model_config(resolved) == (run_config.model_config(config),
                                                 run_config.model_kind(config))
    assert run_config.resolved(resolved) == resolved  # resolving is idempotent


@pytest.mark.parametrize("spec", SPECS)
def test_no_list_fields(spec):
    rc, out, err = parse(f"--config={spec}")
    assert rc == 0, err[-2000:]
    lists = json.loads(out)["lists"]
    assert not lists, f"{spec}: list fields cannot be overridden on the command line: {lists}"


def _flag_value(value) -> str:
    if isinstance(value, list):  # JSON list -> the tuple literal config_flags parses
        items = [_flag_value(v) if isinstance(v, list) else repr(v) for v in value]
        return "(" + "".join(f"{x}, " for x in items) + ")"
    return str(value)


def _leaves(d, prefix=""):
    """(dotted key, value) of every leaf of a nested dict or ConfigDict."""
    for k, v in d.items():
        if hasattr(v, "items"):
            yield from _leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v


def test_every_key_of_a_resolved_config_is_an_override():
    """config.json of a run, replayed as --config.<key>=<value>, parses to itself."""
    resolved = json.loads(json.dumps(run_config.resolved(reference_head.get_config(
        "size=nano,smoke"))))
    argv = ["--config=configs/nano.py"]  # another file: every value must come from overrides
    for key, value in _leaves(resolved):
        if value is not None:  # a placeholder left unset; its key is checked below
            argv.append(f"--config.{key}={_flag_value(value)}")
    rc, out, err = parse(*argv)
    assert rc == 0, err[-3000:]
    parsed = json.loads(out)["config"]
    assert dict(_leaves(parsed)).keys() == dict(_leaves(resolved)).keys()
    for key, value in _leaves(resolved):
        if value is not None:
            assert dict(_leaves(parsed))[key] == value, key
    assert run_config.resolved(_as_config(parsed)) == resolved


def _as_config(d):
    from ml_collections import ConfigDict

    return ConfigDict(d)


def test_sequence_and_scalar_overrides():
    rc, out, err = parse("--config=configs/nano.py:smoke", "--config.eval.tasks=()",
                         "--config.data.hw_p_list=(1, 2)",
                         "--config.model.sensor_labels=('sentinel2_l2a',)",
                         "--config.data.masking.decode_only_sensors=()",
                         "--config.optimizer.lr=3e-4", "--config.model.overrides.max_grid=32")
    assert rc == 0, err[-2000:]
    c = json.loads(out)["config"]
    assert c["eval"]["tasks"] == [] and c["data"]["hw_p_list"] == [1, 2]
    assert c["model"]["sensor_labels"] == ["sentinel2_l2a"]
    assert c["data"]["masking"]["decode_only_sensors"] == []
    assert c["optimizer"]["lr"] == 3e-4 and c["model"]["overrides"]["max_grid"] == 32
    rc, _, err = parse("--config=configs/nano.py:smoke", "--config.optimizer.lrr=3e-4")
    assert rc != 0 and "did you mean 'optimizer.lr'?" in err
