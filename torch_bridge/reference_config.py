"""The original's checkpoint `config.json` "model" dict <-> our ModelConfig (numpy/json only).

The original's loader (`load_from_directory`) reads the value under the top-level key
"model": nested dicts, each dataclass tagged with "_CLASS_": "<module>.<Class>", None and
underscore fields omitted. Fields it does not know are dropped by its fallback loader but
fail olmo-core's, so each revision gets exactly its own fields (the v1 EncoderConfig has
no drop_path / tokenization_config).

Export (`model_dict`) is only possible for the reference presets, and only when every
switch that the original hard-codes (norm, FFN, biases, decoder, patch-resize mode,
position scaling, ...) has the preset's value: anything else would load into the
original without error and then compute something else. The refusal lists every reason.

Import (`parse_model_dict`) fills missing fields with the *original's* dataclass defaults
(not our preset defaults) and decides the revision by this rule, first match wins:

1. the weights' key names, when a state dict is given: a first encoder layer with
   `self_attn.*` keys is the v1 post-norm block, one with `attn.*` / `norm1.*` keys the
   latest revision's pre-norm block (the architecture is in the weights, so they decide);
   a config that says otherwise (a "drop_path" field with v1 weights) is an error;
2. a "drop_path" field in the encoder dict: only the latest EncoderConfig has it, and its
   serialiser always writes it (a float, never None);
3. a "tokenization_config" field: only the latest revision's official configs carry one;
4. base_patch_size 8 (the latest official value) -> latest, otherwise v1 (16 is both
   revisions' dataclass default and the v1 official value).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

from spacenit_jax import sensors
from spacenit_jax.model.config import ModelConfig, make_config

ENCODER_CLASS = "spacenit.arch.encoder.EncoderConfig"
TOKENIZATION_CLASS = "spacenit.arch.band_tokenization.TokenizationConfig"
LAYOUT_CLASS = "spacenit.arch.band_tokenization.SensorTokenLayout"
MODEL_CLASSES = {
    "latent_predictor": "spacenit.arch.models.LatentPredictorConfig",
    "autoencoder": "spacenit.arch.models.AutoEncoderConfig",
    "dual_branch": "spacenit.arch.models.DualBranchConfig",
    "spatiotemporal": "spacenit.arch.models.SpatioTemporalConfig",
    "encoder": ENCODER_CLASS,
}
KIND_OF_CLASS = {v.rsplit(".", 1)[1]: k for k, v in MODEL_CLASSES.items()}
REFERENCE_PRESETS = ("reference_head", "reference_v1")
# Kinds whose original module has the persistent `_step` buffer (EMA counter).
KINDS_WITH_STEP = ("latent_predictor", "dual_branch")

# The original's dataclass defaults (its EncoderConfig and model configs), used for fields
# a dict omits.
ENCODER_DEFAULTS = dict(embed_dim=768, depth=12, num_heads=12, num_kv_heads=None,
                        ffn_expansion=8 / 3, dropout=0.0, drop_path=0.0, base_patch_size=16,
                        max_grid=64, max_timesteps=64, reference_gsd=10.0, sensor_labels=[],
                        rope_theta=10000.0, tokenization_config=None)
_DECODER_DEFAULTS = dict(decoder_depth=4, decoder_num_heads=12, decoder_num_kv_heads=None)
_EMA_DEFAULTS = dict(ema_momentum=0.996, ema_momentum_end=1.0, ema_warmup_steps=10000)
MODEL_DEFAULTS = {
    "latent_predictor": dict(_DECODER_DEFAULTS, **_EMA_DEFAULTS, projection_dim=256),
    "autoencoder": dict(_DECODER_DEFAULTS, out_channels=13),
    "dual_branch": dict(_DECODER_DEFAULTS, **_EMA_DEFAULTS, projection_dim=256,
                        out_channels=13),
    "spatiotemporal": dict(axial_depth=6, projection_dim=256),
    "encoder": {},
}
# The original's PoolingHead is always built with its default 8 heads.
_ORIGINAL_POOLING_HEADS = 8


class ReferenceFormatError(ValueError):
    """A model that cannot be written in, or read from, the original's format."""


# ======================================================================================
# Export: ModelConfig -> "model" dict


def unsupported_reasons(cfg: ModelConfig, kind: str) -> list[str]:
    """Why `cfg` cannot be written in the original's format (empty: it can)."""
    if kind not in MODEL_CLASSES:
        return [f"unknown model kind {kind!r}; known: {list(MODEL_CLASSES)}"]
    if cfg.preset not in REFERENCE_PRESETS:
        return [f"preset {cfg.preset!r} has no counterpart in the original SpaceNit (its "
                f"blocks, attention and positions are our own); only {list(REFERENCE_PRESETS)} "
                f"can be exported in the reference format - use --format safetensors, which "
                f"holds any preset"]
    ref = make_config(cfg.preset, "nano", sensor_labels=cfg.sensor_labels)
    reasons = []
    for field in ("ffn", "norm", "prenorm", "bias", "decoder"):
        if getattr(cfg, field) != getattr(ref, field):
            reasons.append(f"{field}={getattr(cfg, field)!r}, but the original's "
                           f"{cfg.preset} model hard-codes {getattr(ref, field)!r}")
    for field in ("norm_eps", "decoder_ffn_expansion"):
        if not math.isclose(getattr(cfg, field), getattr(ref, field), rel_tol=1e-12):
            reasons.append(f"{field}={getattr(cfg, field)!r}, but the original hard-codes "
                           f"{getattr(ref, field)!r}")
    for field in ("patch_resize", "position_scale", "ground_aligned_patches"):
        got, want = getattr(cfg.layout, field), getattr(ref.layout, field)
        if got != want:
            reasons.append(f"layout.{field}={got!r}, but the original's {cfg.preset} "
                           f"tokenizer works as {want!r}")
    if cfg.preset == "reference_v1":
        if cfg.layout.spectral_groups or cfg.layout.custom_groups:
            reasons.append("spectral/custom token groups: the v1 EncoderConfig has no "
                           "tokenization_config (one token group per sensor)")
        if cfg.drop_path:
            reasons.append("drop_path > 0: the v1 EncoderConfig has no drop_path")
    if kind == "spatiotemporal" and cfg.pooling_heads != _ORIGINAL_POOLING_HEADS:
        reasons.append(f"pooling_heads={cfg.pooling_heads}: the original's PoolingHead "
                       f"always has {_ORIGINAL_POOLING_HEADS} heads")
    return reasons


def check_exportable(cfg: ModelConfig, kind: str) -> None:
    reasons = unsupported_reasons(cfg, kind)
    if reasons:
        raise ReferenceFormatError(
            f"cannot write a {cfg.preset} {kind} in the original SpaceNit's checkpoint "
            "format:\n  - " + "\n  - ".join(reasons))
    if cfg.layout.reference_gsd != sensors.REFERENCE_GSD:
        warnings.warn(
            f"reference_gsd={cfg.layout.reference_gsd}: the original defaults gsd to a "
            f"literal 10 m and its decoder divides by a literal 10, so its positions differ "
            f"from this model's unless gsd is passed explicitly", stacklevel=2)


def _tokenization_dict(cfg: ModelConfig) -> dict | None:
    layout = cfg.layout
    if not layout.spectral_groups and not layout.custom_groups:
        return None
    custom = {label: [list(g) for g in groups] for label, groups in layout.custom_groups}
    if not layout.spectral_groups:
        # A TokenizationConfig means "spectral groups unless custom": keep the remaining
        # multi-group sensors in one all-bands group explicitly.
        for label in layout.sensor_labels:
            spec = sensors.get(label)
            if label not in custom and spec.num_groups > 1:
                custom[label] = [list(spec.bands)]
    layouts = {label: {"_CLASS_": LAYOUT_CLASS, "channel_groups": groups}
               for label, groups in custom.items()}
    return {"_CLASS_": TOKENIZATION_CLASS, "custom_layouts": layouts}


def encoder_dict(cfg: ModelConfig) -> dict:
    """The EncoderConfig dict of the original (field order as its dataclass)."""
    head = cfg.preset == "reference_head"
    out: dict = {"_CLASS_": ENCODER_CLASS, "embed_dim": cfg.embed_dim, "depth": cfg.depth,
                 "num_heads": cfg.num_heads}
    if cfg.num_kv_heads is not None:
        out["num_kv_heads"] = cfg.num_kv_heads
    out["ffn_expansion"] = float(cfg.ffn_expansion)
    out["dropout"] = 0.0
    if head:
        out["drop_path"] = float(cfg.drop_path)
    out.update(base_patch_size=cfg.layout.base_patch_size, max_grid=cfg.max_grid,
               max_timesteps=cfg.max_timesteps, reference_gsd=float(cfg.layout.reference_gsd),
               sensor_labels=list(cfg.sensor_labels), rope_theta=float(cfg.rope_theta))
    if head:
        tok = _tokenization_dict(cfg)
        if tok is not None:
            out["tokenization_config"] = tok
    return out


def model_dict(cfg: ModelConfig, kind: str) -> dict:
    """The original's "model" dict for a `kind` model built from `cfg`."""
    check_exportable(cfg, kind)
    enc = encoder_dict(cfg)
    if kind == "encoder":
        return enc
    out: dict = {"_CLASS_": MODEL_CLASSES[kind], "encoder": enc}
    if kind == "spatiotemporal":
        out.update(axial_depth=cfg.axial_depth, projection_dim=cfg.projection_dim)
        return out
    out.update(decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_num_heads)
    if cfg.decoder_num_kv_heads is not None:
        out["decoder_num_kv_heads"] = cfg.decoder_num_kv_heads
    if kind in ("latent_predictor", "dual_branch"):
        out.update(ema_momentum=float(cfg.ema_momentum),
                   ema_momentum_end=float(cfg.ema_momentum_end),
                   ema_warmup_steps=int(cfg.ema_warmup_steps),
                   projection_dim=cfg.projection_dim)
    if kind in ("autoencoder", "dual_branch"):
        out["out_channels"] = cfg.pixel_channels
    return out


# ======================================================================================
# Import: "model" dict (+ state-dict keys) -> ModelConfig


def _class_name(d: Mapping, what: str) -> str | None:
    cls = d.get("_CLASS_")
    if cls is None:
        return None
    if not isinstance(cls, str):
        raise ReferenceFormatError(f"{what}: _CLASS_ must be a string, got {cls!r}")
    return cls.rsplit(".", 1)[-1]


def model_kind(model: Mapping) -> str:
    """The model kind named by the top-level "_CLASS_" of a "model" dict."""
    if not isinstance(model, Mapping):
        raise ReferenceFormatError(f'"model" must be a JSON object, got {type(model).__name__}')
    name = _class_name(model, '"model"')
    if name is None:
        raise ReferenceFormatError(
            '"model" has no "_CLASS_" entry (the original\'s loader cannot build it either); '
            f"expected one of {sorted(MODEL_CLASSES.values())}")
    if name not in KIND_OF_CLASS:
        raise ReferenceFormatError(
            f'"model" has _CLASS_ {model["_CLASS_"]!r}; known: {sorted(MODEL_CLASSES.values())}')
    return KIND_OF_CLASS[name]


def weights_revision(keys: Iterable[str], prefix: str = "encoder.") -> str | None:
    """'reference_v1' / 'reference_head' from the first encoder layer's key names."""
    layer = f"{prefix}transformer.layers.0."
    names = {k[len(layer):].split(".")[0] for k in keys if k.startswith(layer)}
    if "self_attn" in names or "self_attn_norm" in names:
        return "reference_v1"
    if "attn" in names or "norm1" in names:
        return "reference_head"
    return None


def detect_revision(encoder: Mapping, state_keys: Iterable[str] | None = None,
                    prefix: str = "encoder.") -> str:
    """The preset of the original revision that wrote this config (rule: module doc)."""
    from_weights = weights_revision(state_keys, prefix) if state_keys is not None else None
    if from_weights is not None:
        if from_weights == "reference_v1" and "drop_path" in encoder:
            raise ReferenceFormatError(
                "config.json's encoder has drop_path (a latest-revision field) but the "
                "weights hold v1 post-norm blocks (transformer.layers.0.self_attn.*)")
        return from_weights
    if "drop_path" in encoder or "tokenization_config" in encoder:
        return "reference_head"
    base = encoder.get("base_patch_size", ENCODER_DEFAULTS["base_patch_size"])
    return "reference_head" if base == 8 else "reference_v1"


def _layout_overrides(tok: Mapping | None, labels: tuple[str, ...], notes: list[str]) -> dict:
    if tok is None:
        return {"spectral_groups": False, "custom_groups": ()}
    if not isinstance(tok, Mapping):
        raise ReferenceFormatError(f"tokenization_config must be an object, got {tok!r}")
    custom = tok.get("custom_layouts") or {}
    if not isinstance(custom, Mapping):
        raise ReferenceFormatError(f"tokenization_config.custom_layouts must be an object, "
                                   f"got {custom!r}")
    groups = []
    for label, lay in custom.items():
        chans = lay.get("channel_groups") if isinstance(lay, Mapping) else lay
        if not isinstance(chans, list) or not all(isinstance(g, list) for g in chans):
            raise ReferenceFormatError(
                f"tokenization_config.custom_layouts[{label!r}] must hold channel_groups, a "
                f"list of lists of band names; got {lay!r}")
        if label not in labels:
            notes.append(f"custom layout for {label!r} ignored: not in sensor_labels")
            continue
        spec = sensors.get(label)
        norm = tuple(tuple(str(b) for b in g) for g in chans)
        default = tuple(tuple(spec.bands[i] for i in g) for g in spec.group_channel_indices)
        if norm != default:  # a layout equal to the spectral groups is no custom layout
            groups.append((label, norm))
    return {"spectral_groups": True, "custom_groups": tuple(groups)}


def parse_model_dict(model: Mapping, state_keys: Iterable[str] | None = None,
                     **overrides) -> tuple[ModelConfig, str, list[str]]:
    """(ModelConfig, kind, notes) from the original's "model" dict.

    state_keys: the checkpoint's state-dict keys (decide the revision, rule in the module
    docstring). overrides: ModelConfig fields to set on top (e.g. scan_layers=True).
    notes: fields that were ignored or have no effect here.
    """
    kind = model_kind(model)
    if kind == "encoder":
        enc, top, prefix = model, {}, ""
    else:
        enc = model.get("encoder")
        if not isinstance(enc, Mapping):
            raise ReferenceFormatError(f'"model" ({model["_CLASS_"]}) has no "encoder" object')
        name = _class_name(enc, '"model.encoder"')
        if name not in (None, ENCODER_CLASS.rsplit(".", 1)[1]):
            raise ReferenceFormatError(f'"model.encoder" has _CLASS_ {enc["_CLASS_"]!r}, '
                                       f"expected {ENCODER_CLASS!r}")
        top, prefix = model, "encoder."
    notes: list[str] = []
    keys = list(state_keys) if state_keys is not None else None
    preset = detect_revision(enc, keys, prefix)
    known_enc = set(ENCODER_DEFAULTS) | {"_CLASS_"}
    if preset == "reference_v1":
        known_enc -= {"drop_path"}
    for field in sorted(set(enc) - known_enc):
        notes.append(f"encoder field {field!r} ignored (unknown to the {preset} EncoderConfig)")
    if kind != "encoder":
        for field in sorted(set(top) - set(MODEL_DEFAULTS[kind]) - {"_CLASS_", "encoder"}):
            notes.append(f"field {field!r} ignored (unknown to {model['_CLASS_']})")
    e = {**ENCODER_DEFAULTS, **{k: v for k, v in enc.items() if k in ENCODER_DEFAULTS}}
    m = {**MODEL_DEFAULTS[kind], **{k: v for k, v in top.items() if k in MODEL_DEFAULTS[kind]}}
    if float(e["dropout"]) != 0.0:
        notes.append(f"dropout={e['dropout']} is not modelled (the JAX model has no dropout)")
    labels = tuple(e["sensor_labels"] or ())
    if not labels:
        raise ReferenceFormatError("the encoder's sensor_labels is empty: nothing to tokenize")
    layout = _layout_overrides(e["tokenization_config"], labels, notes)
    if preset == "reference_v1" and (layout["spectral_groups"] or layout["custom_groups"]):
        notes.append("v1 config with a tokenization_config: spectral token groups used")
    fields = dict(
        embed_dim=int(e["embed_dim"]), depth=int(e["depth"]), num_heads=int(e["num_heads"]),
        num_kv_heads=None if e["num_kv_heads"] is None else int(e["num_kv_heads"]),
        ffn_expansion=float(e["ffn_expansion"]), rope_theta=float(e["rope_theta"]),
        max_grid=int(e["max_grid"]), max_timesteps=int(e["max_timesteps"]),
        base_patch_size=int(e["base_patch_size"]), reference_gsd=float(e["reference_gsd"]),
        drop_path=float(e["drop_path"]) if preset == "reference_head" else 0.0, **layout)
    if "decoder_depth" in m:
        fields.update(decoder_depth=int(m["decoder_depth"]),
                      decoder_num_heads=int(m["decoder_num_heads"]),
                      decoder_num_kv_heads=(None if m["decoder_num_kv_heads"] is None
                                            else int(m["decoder_num_kv_heads"])))
    else:  # no decoder in this model: keep a valid decoder head count for ModelConfig
        fields.update(decoder_num_heads=int(e["num_heads"]), decoder_num_kv_heads=None)
    for f in ("ema_momentum", "ema_momentum_end"):
        if f in m:
            fields[f] = float(m[f])
    if "ema_warmup_steps" in m:
        fields["ema_warmup_steps"] = int(m["ema_warmup_steps"])
    fields["projection_dim"] = int(m.get("projection_dim", e["embed_dim"]))
    if "out_channels" in m:
        fields["out_channels"] = int(m["out_channels"])
    if "axial_depth" in m:
        fields["axial_depth"] = int(m["axial_depth"])
    fields.update(overrides)
    try:
        cfg = make_config(preset, "nano", sensor_labels=labels, **fields)
    except (ValueError, KeyError) as err:
        raise ReferenceFormatError(f"the {preset} config in config.json is not a valid "
                                   f"model: {err}") from err
    return cfg, kind, notes
