"""The run config: ConfigDict sections made from the frozen dataclasses, and back.

Every default is written once, in the frozen dataclass of the code that uses it:

    section       dataclass                                  fields
    optimizer     train.step.OptimizerConfig                 all
    objective     train.objectives.ObjectiveConfig           all
    data          data.pipeline.PipelineConfig               all but RUN_DATA_FIELDS (+ DATA_EXTRA)
    model         model.config.ModelConfig                   MODEL_SWITCHES; every architecture
                                                             and TokenLayout field as an override
                                                             (None: the preset's value)
    checkpoint    checkpoint.CheckpointPolicy                all
    wandb         train.tracking.WandbConfig                 all

`section(cls)` makes the ConfigDict of a dataclass (its defaults; None defaults become
placeholders typed after the field, sequences tuples, dict defaults nested ConfigDicts), and
`build(cls, section)` the dataclass back (unknown keys are errors). `configs/common.py`
assembles the run config from these sections; recipe files then change what their recipe
needs, visibly.

`resolved(config)` is what a run writes to `config.json` and into every checkpoint: the run
config with the model overrides filled with the values the run used, as a plain dict whose
keys are exactly the `--config.<key>` override paths (so a resolved config can be replayed
on the command line, and `model_config` rebuilds the same model from it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict, config_dict

from spacenit_jax.model.config import ModelConfig, make_config
from spacenit_jax.tokenization import TokenLayout
from spacenit_jax.train import objectives

# PipelineConfig fields the run sets itself (data location, views of the objective, seed,
# process of a multi-host run, endless stream).
RUN_DATA_FIELDS = ("path", "num_views", "seed", "process_index", "process_count",
                   "num_batches")
# Data fields of the run that are not pipeline fields. path "" = generate the synthetic
# dataset (synthetic_samples samples of synthetic_tile_size pixels) into <workdir>/data.
DATA_EXTRA = {"path": "", "synthetic_samples": 4096, "synthetic_tile_size": 64}
# ModelConfig fields that change how parameters are stored / run, not their values.
MODEL_SWITCHES = ("compute_dtype", "scan_layers", "remat", "attention_impl")
# TokenLayout fields that make_config takes as overrides (sensor_labels is its own field).
LAYOUT_FIELDS = tuple(f.name for f in dataclasses.fields(TokenLayout)
                      if f.name != "sensor_labels")
MODEL_OVERRIDES = tuple(f.name for f in dataclasses.fields(ModelConfig)
                        if f.name not in ("layout", "preset", *MODEL_SWITCHES)) + LAYOUT_FIELDS


# ------------------------------------------------------------------ dataclass <-> ConfigDict


def _field_type(hint) -> type:
    """The ConfigDict type of a field annotation: int | None -> int, Literal['a'] -> str,
    tuple[...] -> tuple, Any -> object."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _field_type(args[0]) if len(args) == 1 else object
    if origin is typing.Literal:
        return type(typing.get_args(hint)[0])
    if origin in (tuple, list) or hint in (tuple, list):
        return tuple
    if isinstance(hint, type) and hint in (int, float, bool, str):
        return hint
    return object


def _value(value):
    """A dataclass default as a ConfigDict value: sequences -> tuples, dicts -> ConfigDict."""
    if isinstance(value, Mapping):
        return ConfigDict({k: _value(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_value(v) for v in value)
    return value


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise ValueError(f"field {field.name!r} has no default: it cannot be a config default")


def section(cls, *, include=None, exclude=()) -> ConfigDict:
    """The ConfigDict of dataclass `cls`'s fields and defaults (see module docstring)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or (include is not None and f.name not in include):
            continue
        value = _default(f)
        out[f.name] = (config_dict.placeholder(_field_type(hints[f.name])) if value is None
                       else _value(value))
    return ConfigDict(out)


def _plain(x):
    """ConfigDicts -> dicts, lists -> tuples, recursively (JSON and ConfigDict alike)."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    return tuple(_plain(v) for v in x) if isinstance(x, list | tuple) else x


def build(cls, values, **extra):
    """Dataclass `cls` from a config section (ConfigDict or dict; JSON lists become
    tuples) plus `extra` fields; a key that is not a field of `cls` is an error."""
    d = {k: _plain(v) for k, v in dict(values).items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
    return cls(**d, **extra)


# ----------------------------------------------------------------------- the run's sections


def model_section(preset: str, size: str, sensor_labels) -> ConfigDict:
    hints = {**typing.get_type_hints(ModelConfig), **typing.get_type_hints(TokenLayout)}
    overrides = {k: config_dict.placeholder(_field_type(hints[k])) for k in MODEL_OVERRIDES}
    return ConfigDict({"preset": preset, "size": size, "sensor_labels": tuple(sensor_labels),
                       "overrides": overrides,
                       **section(ModelConfig, include=MODEL_SWITCHES)})


def data_section() -> ConfigDict:
    from spacenit_jax.data.pipeline import PipelineConfig

    out = ConfigDict(DATA_EXTRA)
    out.update(section(PipelineConfig, exclude=RUN_DATA_FIELDS))
    return out


def optimizer_section() -> ConfigDict:
    from spacenit_jax.train.step import OptimizerConfig

    return section(OptimizerConfig)


def objective_section(name: str) -> ConfigDict:
    out = section(objectives.ObjectiveConfig)
    out.name = name
    return out


def checkpoint_section() -> ConfigDict:
    from spacenit_jax.checkpoint import CheckpointPolicy

    return section(CheckpointPolicy)


def wandb_section() -> ConfigDict:
    from spacenit_jax.train.tracking import WandbConfig

    return section(WandbConfig)


# ------------------------------------------------------------ run config -> the dataclasses


def model_config(config) -> ModelConfig:
    """The ModelConfig of a run config (ConfigDict, or the dict of a resolved config.json)."""
    m = config["model"]
    overrides = {k: v for k, v in _plain(m["overrides"]).items() if v is not None}
    switches = {k: m[k] for k in MODEL_SWITCHES if m[k] is not None}
    return make_config(m["preset"], m["size"], tuple(m["sensor_labels"]), **overrides,
                       **switches)


def model_kind(config) -> str:
    """Which model the run's objective trains (latent_predictor, autoencoder, ...)."""
    return objectives.ObjectiveConfig(name=config["objective"]["name"]).model_kind


def objective_config(config) -> objectives.ObjectiveConfig:
    return build(objectives.ObjectiveConfig, config["objective"])


def optimizer_config(config):
    from spacenit_jax.train.step import OptimizerConfig

    return build(OptimizerConfig, config["optimizer"])


def pipeline_config(config, path, objective: objectives.ObjectiveConfig):
    """The PipelineConfig of the run's data section, reading the dataset at `path`."""
    from spacenit_jax.data.pipeline import PipelineConfig

    d = {k: v for k, v in _plain(config["data"]).items() if k not in DATA_EXTRA}
    if not objective.masked:
        d["masking"] = "none"
    return build(PipelineConfig, d, path=str(path), num_views=objective.num_views,
                 seed=int(config["seed"]))


def checkpoint_policy(config):
    from spacenit_jax.checkpoint import CheckpointPolicy

    return build(CheckpointPolicy, config["checkpoint"])


def wandb_config(config):
    from spacenit_jax.train.tracking import WandbConfig

    return build(WandbConfig, config["wandb"])


def _json(x):
    if isinstance(x, Mapping):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json(v) for v in x]
    return x


def resolved(config: ConfigDict, model_cfg: ModelConfig | None = None) -> dict[str, Any]:
    """The run config with every model override set to the value the run uses (JSON-safe
    plain dict; its keys are exactly the `--config.<key>` override paths)."""
    model_cfg = model_config(config) if model_cfg is None else model_cfg
    out = _json(_plain(config))
    out["model"]["overrides"] = {
        k: _json(getattr(model_cfg.layout if k in LAYOUT_FIELDS else model_cfg, k))
        for k in MODEL_OVERRIDES}
    for k in MODEL_SWITCHES:
        out["model"][k] = getattr(model_cfg, k)
    return out
