"""The launchers' one command-line style: a mistake is one `error:` line with exit code 2."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def launch(*argv, cwd=REPO, module="launch.pretrain"):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
    # jax's CUDA plugin may log "Could not find cuda drivers" lines at import: not ours
    return [line for line in stderr.splitlines()
            if line.strip() and "cudart_stub" not in line and "absl::InitializeLog" not in line]


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/nanoo.py"], "config file configs/nanoo.py not found"),
    (["--config.total_stepz=3"], "unknown field 'total_stepz' in the config; did you mean "
                                 "'total_steps'?"),
    (["--config.optimizer.lrr=3e-4"], "unknown field 'lrr' in optimizer; did you mean "
                                      "'optimizer.lr'?"),
    (["--config.total_steps=abc"], "--config.total_steps=abc: invalid literal for int()"),
    (["--config=configs/nano.py:smok"], "unknown config argument 'smok'"),
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
])
def test_command_line_mistakes_are_one_clean_line(tmp_path, args, expected):
    out = launch("--workdir", str(tmp_path / "run"), *args)
    lines = error_lines(out.stderr)
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_missing_required_flag_and_default_config_from_any_directory(tmp_path):
    out = launch(cwd=tmp_path)  # the default configs/nano.py is found from /tmp/...
    lines = error_lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1
    assert "--workdir must have a value" in lines[0]
