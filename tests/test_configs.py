"""Config files: every field can be overridden on the command line (ml_collections
config_flags refuses list-valued fields, so sequences are tuples); typos are errors."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SPECS = ["configs/nano.py", "configs/nano.py:smoke", "configs/tiny.py", "configs/base.py",
         "configs/large.py", "configs/reference_head.py:size=nano,smoke",
         "configs/reference_v1.py:size=base"]
# launch.pretrain's own flag definitions (config_flags registers the override flags on the
# global FLAGS, hence a fresh interpreter per parse)
PARSE = """
import json, sys
from absl import flags
import launch.pretrain  # noqa: F401
from ml_collections import ConfigDict

def leaves(c, prefix=""):
    for k, v in c.items():
        if isinstance(v, ConfigDict):
            yield from leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v

flags.FLAGS(["prog", "--workdir=unused", *sys.argv[1:]])
c = flags.FLAGS.config
print(json.dumps({"lists": [k for k, v in leaves(c) if isinstance(v, list)],
                  "config": json.loads(c.to_json_best_effort())}))
"""


def parse(*argv):
    out = subprocess.run([sys.executable, "-c", PARSE, *argv], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.parametrize("spec", SPECS)
def test_no_list_fields(spec):
    rc, out, err = parse(f"--config={spec}")
    assert rc == 0, err[-2000:]
    lists = json.loads(out)["lists"]
    assert not lists, f"{spec}: list fields cannot be overridden on the command line: {lists}"


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
    assert rc != 0 and "Did you mean \"lr\"" in err
