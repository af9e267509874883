"""Parameter names: our Flax parameter tree <-> the PyTorch state-dict keys.

For the reference presets the keys and shapes are exactly the original's (the
torch_bridge tests write them out key by key); the design card uses the latest original's
naming scheme with its own modules (RMSNorm has no bias, SwiGLU is
mlp.{gate,up,down}_proj). Dense kernels are stored (in, out) here and (out, in) in torch;
tokens are (D,) here and (1, 1, D) there. A scanned block stack (stacked 'layers' axis)
is unstacked first. Parameters travel as flat {path tuple: array} dicts
(`flax.traverse_util.flatten_dict` of `nnx.to_pure_dict`).

Whether a state dict fits a model is checked in one place, `check_keys`, which every
reader and writer uses: one line listing the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx, traverse_util

from spacenit_jax.model.config import ModelConfig

_PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


def _block_rename(cfg: ModelConfig, rest: list[str]) -> list[str]:
    """Names inside one transformer block (rest = path after the layer index)."""
    head, *tail = rest
    prenorm = cfg.prenorm
    if head in ("attn", "cross_attn"):
        proj = _PROJ[tail[0]]
        if prenorm:
            return ["attn", proj, *tail[1:]]
        return ["self_attn" if head == "attn" else "cross_attn", proj, *tail[1:]]
    if head in ("attn_norm", "cross_norm"):
        if prenorm:
            return ["norm1", *tail]
        return ["self_attn_norm" if head == "attn_norm" else "cross_attn_norm", *tail]
    if head == "ffn_norm":
        return ["norm2" if prenorm else "ffn_norm", *tail]
    if head == "ffn":
        name = tail[0] if tail[0] in ("fc1", "fc2") else f"{tail[0]}_proj"
        return ["mlp" if prenorm else "ffn", name, *tail[1:]]
    raise KeyError(f"unexpected block parameter {'.'.join(rest)}")


def _leaf(name: str) -> str:
    return {"kernel": "weight", "scale": "weight", "embedding": "embedding.weight"}.get(name, name)


def torch_name(cfg: ModelConfig, path: tuple) -> tuple[str, str]:
    """(torch key, layout transform) of one of our parameter paths.

    transform: "T" transpose (Dense kernels), "token" reshape (D,) <-> (1, 1, D), "" none.
    """
    parts = [str(p) for p in path]
    leaf = parts[-1]
    out: list[str] = []
    transform = "T" if leaf == "kernel" else ""
    i = 0
    while i < len(parts) - 1:
        p = parts[i]
        if p == "tokenizer":
            sub = parts[i + 1]
            if sub == "patch_embeds":
                out += ["tokenizer", "patch_embeds", parts[i + 2], "proj"]
                i += 3
                continue
            if sub == "type_tokens":
                return ".".join(out + ["tokenizer", "sensor_type_tokens", parts[i + 2]]), "token"
            if sub == "sensor_embed":
                out += ["tokenizer", "sensor_embed"]
                i += 2
                continue
        if p == "month_embed":
            out += ["month_embed", "proj"]
            i += 1
            continue
        if p == "blocks" and parts[i + 1] == "layers":
            out += ["transformer", "layers", parts[i + 2]]
            out += _block_rename(cfg, parts[i + 3:-1])
            break
        if p == "context_block":
            out += ["context_cross_attn", "layers", "0"]
            out += _block_rename(cfg, parts[i + 1:-1])
            break
        if p in ("h_block", "w_block", "t_block"):
            out += [p] + _block_rename(cfg, parts[i + 1:-1])
            break
        if p == "embed":
            out += ["encoder_to_decoder_embed"]
            i += 1
            continue
        if p in ("online_proj", "target_proj", "proj") and parts[i + 1] in ("fc1", "fc2"):
            out += [p, "net", "0" if parts[i + 1] == "fc1" else "2"]
            i += 2
            continue
        if p == "cross_attn" and i + 1 < len(parts) - 1 and parts[i + 1] in _PROJ:
            out += ["cross_attn", _PROJ[parts[i + 1]]]
            i += 2
            continue
        out.append(p)
        i += 1
    if leaf in ("mask_token", "query"):
        return ".".join(out + [leaf]), "token"
    return ".".join(out + [_leaf(leaf)]), transform


def unstack_layers(flat: Mapping[tuple, np.ndarray], cfg: ModelConfig) -> dict[tuple, np.ndarray]:
    """Turn scanned stacks ('blocks', 'layers', name...) with a leading axis into per-layer paths."""
    if not cfg.scan_layers:
        return dict(flat)
    out = {}
    for path, value in flat.items():
        if "blocks" in path and path[path.index("blocks") + 1] == "layers":
            j = path.index("blocks") + 2
            for layer in range(value.shape[0]):
                out[path[:j] + (layer,) + path[j:]] = value[layer]
        else:
            out[path] = value
    return out


def stack_layers(flat: Mapping[tuple, np.ndarray], cfg: ModelConfig) -> dict[tuple, np.ndarray]:
    """Inverse of unstack_layers for a scanned configuration."""
    if not cfg.scan_layers:
        return dict(flat)
    groups: dict[tuple, dict[int, np.ndarray]] = {}
    out = {}
    for path, value in flat.items():
        if "blocks" in path and path[path.index("blocks") + 1] == "layers":
            j = path.index("blocks") + 2
            groups.setdefault(path[:j] + path[j + 1:], {})[int(path[j])] = value
        else:
            out[path] = value
    for path, layers in groups.items():
        out[path] = np.stack([layers[i] for i in sorted(layers)])
    return out


def to_state_dict(cfg: ModelConfig, params: Mapping[tuple, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat {path: array} of our model -> {torch key: array} in torch layouts."""
    sd = {}
    for path, value in unstack_layers(params, cfg).items():
        key, transform = torch_name(cfg, path)
        value = np.asarray(value)
        if transform == "T":
            value = value.T
        elif transform == "token":
            value = value.reshape(1, 1, -1)
        if key in sd:
            raise ValueError(f"two parameters map to the torch key {key!r}")
        sd[key] = np.ascontiguousarray(value)
    return sd


class StateDictMismatch(ValueError):
    """A state dict whose keys or shapes do not fit the model."""


def _listed(items: list[str], limit: int = 10) -> str:
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"[{', '.join(items[:limit])}{more}]"


def check_keys(got: Mapping[str, tuple], expected: Mapping[str, tuple], what: str) -> None:
    """Raise StateDictMismatch, one line starting with `what`, unless the {key: shape}
    dicts `got` and `expected` have the same keys with the same shapes."""
    missing = [repr(k) for k in expected if k not in got]
    extra = [repr(k) for k in sorted(set(got) - set(expected))]
    wrong = [f"{k}: {tuple(got[k])}, expected {tuple(expected[k])}"
             for k in expected if k in got and tuple(got[k]) != tuple(expected[k])]
    parts = [f"{name} ({len(keys)}): {_listed(keys)}"
             for name, keys in (("missing keys", missing), ("unexpected keys", extra),
                                ("mis-shaped keys", wrong)) if keys]
    if parts:
        raise StateDictMismatch(f"{what}: " + "; ".join(parts))


def _torch_shape(shape: tuple, transform: str) -> tuple[int, ...]:
    if transform == "T":
        return tuple(shape)[::-1]
    if transform == "token":
        return (1, 1, *shape)
    return tuple(shape)


def torch_shapes(cfg: ModelConfig, template: Mapping[tuple, object]) -> dict[str, tuple]:
    """{torch key: torch shape} of the parameters of `template` (flat {path: array or
    shape-only leaf} of our model)."""
    out = {}
    for path, leaf in unstack_layers(template, cfg).items():
        key, transform = torch_name(cfg, path)
        out[key] = _torch_shape(np.shape(leaf), transform)
    return out


def from_state_dict(cfg: ModelConfig, sd: Mapping[str, np.ndarray],
                    template: Mapping[tuple, object], *, what: str = "state dict",
                    buffers: Mapping[str, tuple] | None = None) -> dict[tuple, np.ndarray]:
    """{torch key: array} -> flat {path: array} for the paths of `template` (our model's).

    Every parameter of `template` must be present with its shape, and nothing else but
    `buffers` ({key: torch shape} of non-parameter entries the state dict must hold, such
    as the original's `_step` EMA counter, {"_step": ()}; checked, not returned). With
    buffers=None an `_step` entry is accepted if present. Raises StateDictMismatch.
    """
    paths = {}
    for path in unstack_layers(template, cfg):
        key, transform = torch_name(cfg, path)
        paths[key] = (path, transform)
    expected = torch_shapes(cfg, template)
    if buffers is None:
        buffers = {"_step": np.shape(sd["_step"])} if "_step" in sd else {}
    check_keys({k: np.shape(v) for k, v in sd.items()}, {**buffers, **expected},
               f"{what} does not match the model")
    out = {}
    for key, (path, transform) in paths.items():
        value = np.asarray(sd[key])
        if transform == "T":
            value = value.T
        elif transform == "token":
            value = value.reshape(-1)
        out[path] = np.ascontiguousarray(value)
    return stack_layers(out, cfg)


def flat_params(model_or_state) -> dict[tuple, np.ndarray]:
    """{path tuple: array} of every nnx.Param of a model or a State."""
    state = model_or_state
    if isinstance(model_or_state, nnx.Module):
        state = nnx.state(model_or_state, nnx.Param)
    return traverse_util.flatten_dict(nnx.to_pure_dict(state))


def load_flat(model: nnx.Module, flat: Mapping[tuple, np.ndarray]) -> None:
    """Write flat {path: array} into the model's parameters (shapes must match)."""
    state = nnx.state(model, nnx.Param)
    new = []
    for path, var in nnx.to_flat_state(state):
        if path not in flat:
            raise KeyError(f"no value for parameter {'.'.join(map(str, path))}")
        value = np.asarray(flat[path])
        if value.shape != var.get_value().shape:
            raise ValueError(f"{'.'.join(map(str, path))}: shape {value.shape}, "
                             f"expected {var.get_value().shape}")
        new.append((path, var.replace(value=np.asarray(value, var.get_value().dtype))))
    nnx.update(model, nnx.from_flat_state(new))

