"""Command lines of the launchers: absl flags plus ml-collections config files, one style.

Every launcher follows the same pattern::

    from absl import flags
    from spacenit_jax import cli

    CONFIG = cli.define_config("config", "configs/nano.py", "pretraining config file")
    WORKDIR = flags.DEFINE_string("workdir", None, "run directory", required=True)

    def main(argv):
        config = CONFIG.value                # a locked ml_collections.ConfigDict
        ...
        if something_the_user_must_fix:
            raise cli.UsageError("what is wrong and what to do instead")
        return 0

    if __name__ == "__main__":
        cli.run(main)

On the command line a config is `--config=path.py` or `--config=path.py:arg` (the text after
the colon goes to the file's `get_config(arg)`), and any field is overridden with
`--config.<field>=<value>` (`--config.optimizer.lr=3e-4`; sequences are tuples:
`--config.data.hw_p_list='(1, 2, 4)'`). The config is locked: unknown fields are errors.

`run` turns every command-line mistake into ONE line on stderr, `error: ...`, and exit code
2 (no traceback, no usage dump): a config file that does not exist, an exception in its
`get_config(arg)`, an unknown field (with a "did you mean" suggestion), a value of the wrong
type, an unknown or missing flag. Exceptions that `main` raises and that are listed in
`errors` (by default `cli.UsageError`, exit code 2) are printed the same way; anything else
is a bug and keeps its traceback.

A relative default config path is resolved against the repository root, so a launcher
works from any working directory; a path given on the command line is taken as typed
(relative to the working directory), like any shell argument.
"""

from __future__ import annotations

import difflib
import pathlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence

from absl import app, flags
from ml_collections import ConfigDict
from ml_collections.config_flags import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
USAGE_EXIT_CODE = 2


class UsageError(Exception):
    """A mistake the user must fix (bad config, missing input); printed as one line."""


# name -> default spec (None: required) of the config flags defined with define_config
_CONFIGS: dict[str, str | None] = {}


def define_config(name: str, default: str | None, help: str, *,
                  flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
    """A config-file flag `--<name>=path.py[:arg]` with `--<name>.<field>=value` overrides.

    `default` (or None: the flag is required) is a config spec; a relative default path is
    taken from the repository root. Defining the flag never loads a file: the config is
    loaded when the command line is parsed by `parse` / `run`, so a broken config is a
    clean error there and never an import-time traceback. Returns the flag holder
    (`holder.value` is the locked ConfigDict after parsing).
    """
    if default is not None:
        path, sep, arg = default.partition(":")
        if not pathlib.Path(path).is_absolute():
            path = str(REPO / path)
        default = path + sep + arg
    _CONFIGS[name] = default
    return config_flags.DEFINE_config_file(name, None, help, flag_values=flag_values,
                                           lock_config=True)


def _config_spec(name: str, argv: Sequence[str]) -> tuple[int, str | None]:
    """(index in argv or -1, spec) of `--name=spec` / `--name spec`."""
    for i, arg in enumerate(argv):
        m = re.match(rf"^--?{re.escape(name)}(=(.*))?$", arg)
        if m:
            if m.group(1) is not None:
                return i, m.group(2)
            return i, argv[i + 1] if i + 1 < len(argv) else None
    return -1, None


def _overrides(name: str, argv: Sequence[str]) -> list[str]:
    """Field paths of the `--name.<path>[=value]` arguments."""
    out = []
    for arg in argv:
        m = re.match(rf"^--?(no)?{re.escape(name)}\.([^=]+)", arg)
        if m:
            out.append(m.group(2))
    return out


def _load(name: str, spec: str) -> ConfigDict:
    path = spec.split(":", 1)[0]
    if not pathlib.Path(path).is_file():
        raise UsageError(f"--{name}: config file {path} not found (a relative path is taken "
                         f"from the working directory {pathlib.Path.cwd()})")
    try:
        config = config_flags.ConfigFileFlagParser(name, lock_config=True).parse(spec)
    except (TypeError, ValueError) as err:  # raised by the file's get_config(arg)
        raise UsageError(f"--{name}={spec}: {_last_line(str(err))}") from None
    if not isinstance(config, ConfigDict):
        try:  # ml_collections defers load errors until the value is used
            config.keys()
        except Exception as err:
            raise UsageError(f"--{name}={spec}: {one_line(err)}") from None
        raise UsageError(f"--{name}={spec}: get_config() must return a ConfigDict, got "
                         f"{type(config).__name__}")
    return config


def _check_field(name: str, config: ConfigDict, path: str) -> None:
    node, walked = config, []
    for part in path.split("."):
        if not isinstance(node, ConfigDict) or part not in node:
            known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            where = ".".join(walked) or "the config"
            guess = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {'.'.join([*walked, guess[0]])!r}?" if guess else ""
            if not isinstance(node, ConfigDict):
                raise UsageError(f"--{name}.{path}: {where} is a value, not a section")
            raise UsageError(f"--{name}.{path}: unknown field {part!r} in {where}{hint}")
        node = node[part]
        walked.append(part)


def parse(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS,
          configs: Mapping[str, str | None] | None = None) -> list[str]:
    """Parse the command line into `flag_values`; returns the remaining arguments.

    Raises UsageError (one line) for every mistake described in the module docstring.
    configs: {flag name: default spec, or None if required} of the config flags (default:
    those defined with `define_config`); a launcher that parses into its own FlagValues
    (several command lines in one process) gives its own.
    """
    argv = list(argv)
    for name, default in (_CONFIGS if configs is None else configs).items():
        index, spec = _config_spec(name, argv[1:])
        if index < 0:
            if default is None:
                raise UsageError(f"--{name}=path.py[:arg] is required")
            spec = default
            argv.insert(1, f"--{name}={default}")
        elif spec is None:
            raise UsageError(f"--{name} needs a value (a config file path.py[:arg])")
        config = _load(name, spec)
        for path in _overrides(name, argv[1:]):
            _check_field(name, config, path)
    # ml_collections reads the override flags from sys.argv: let it see this command line
    saved, sys.argv = sys.argv, argv
    try:
        return flag_values(argv)
    except flags.Error as err:
        raise UsageError(_last_line(str(err)) if "Traceback" in str(err) else one_line(err)
                         ) from None
    except (KeyError, AttributeError, TypeError, ValueError) as err:
        raise UsageError(one_line(err)) from None
    finally:
        sys.argv = saved


def one_line(err: BaseException | str) -> str:
    """An error message on one line (continuation lines joined with ' | ')."""
    text = str(err)
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines) or type(err).__name__


def print_notes(notes: Sequence[str], kind: str = "note") -> None:
    """Print each of `notes` on stderr as one `<kind>: ...` line."""
    for note in notes:
        print(f"{kind}: {one_line(note)}", file=sys.stderr)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tail = [line for line in lines if not line.startswith("Pass --help")]
    return tail[-1] if tail else text


def fail(message: str, code: int = USAGE_EXIT_CODE):
    """Print `error: message` on stderr and exit with `code`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(main: Callable[[list[str]], int | None],
        errors: Mapping[type[BaseException], int] | None = None) -> None:
    """absl.app.run(main) with the clean error handling described in the module docstring.

    errors: exception types raised by `main` to print as one line, with their exit codes
    (default {UsageError: 2}; a more specific type listed first wins).
    """
    handled = dict(errors or {UsageError: USAGE_EXIT_CODE})

    def parser(argv):
        try:
            return parse(argv)
        except UsageError as err:
            fail(one_line(err))

    def wrapped(argv):
        try:
            return main(argv)
        except tuple(handled) as err:
            code = next(c for t, c in handled.items() if isinstance(err, t))
            fail(one_line(err), code)

    app.run(wrapped, flags_parser=parser)
