"""Model configuration: one dataclass, three presets, four sizes.

- design_card (default): pre-norm RMSNorm, SwiGLU (8/3), grouped-query attention with
  fewer KV heads than query heads, no biases, RoPE scaled by each sensor's metres per
  patch; the latest original's cross-attention decoder.
- reference_head: the latest original exactly (pre-norm LayerNorm eps 1e-5, exact-GELU
  MLP 4x, biased projections, DropPath 0.1, input-resizing patch embedding, P0 = 8,
  spectral-group tokens, frozen EMA target).
- reference_v1: the "v1 freeze" original exactly (post-norm RMSNorm, SwiGLU 4x, no
  biases, weight-resizing patch embedding, P0 = 16, one token group per sensor).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Literal

from spacenit_jax import sensors
from spacenit_jax.tokenization import TokenLayout

Preset = Literal["design_card", "reference_head", "reference_v1"]
PRESETS: tuple[str, ...] = ("design_card", "reference_head", "reference_v1")

# (embed_dim, depth, heads, decoder_depth, decoder_heads): the original's MODEL_SIZE_ARGS
# (nano, tiny_shallow_decoder, base_shallow_decoder, large_shallow_decoder).
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "nano": (128, 4, 8, 4, 8),
    "tiny": (192, 12, 3, 4, 3),
    "base": (768, 12, 12, 4, 12),
    "large": (1024, 24, 16, 4, 16),
}
# Design-card KV heads (must divide the query heads).
DESIGN_CARD_KV_HEADS = {"nano": 2, "tiny": 1, "base": 4, "large": 4}


def ceil_to(x: int, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    layout: TokenLayout
    preset: str = "design_card"
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 8
    num_kv_heads: int | None = None  # None: as many as query heads (MHA)
    ffn_expansion: float = 8 / 3
    ffn: Literal["swiglu", "gelu"] = "swiglu"
    norm: Literal["rms", "layer"] = "rms"
    norm_eps: float = 1e-6
    prenorm: bool = True
    bias: bool = False
    drop_path: float = 0.0
    rope_theta: float = 10000.0
    max_grid: int = 64  # the original's position-table limits, enforced
    max_timesteps: int = 64
    decoder: Literal["cross", "v1"] = "cross"
    decoder_depth: int = 4
    decoder_num_heads: int = 8
    decoder_num_kv_heads: int | None = None
    decoder_ffn_expansion: float = 8 / 3
    projection_dim: int = 128
    ema_momentum: float = 1.0
    ema_momentum_end: float = 1.0
    ema_warmup_steps: int = 10000
    pooling_heads: int = 8
    axial_depth: int = 6
    out_channels: int | None = None  # pixel head channels; None: the widest token group
    # Execution switches (do not change parameters' values, only how they are stored/run).
    scan_layers: bool = False
    # Rematerialisation policy of every block: none | dots_saveable | nothing_saveable
    # (layers.REMAT_POLICIES; "dots" and "full" are older names of the last two).
    remat: str = "none"
    # Matmul input dtype; parameters, the residual stream, norms, softmax statistics and
    # losses stay float32.
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # Attention kernel (model/attention.py): None picks for the platform the program is
    # compiled for (rowwise on CPU, splash on TPU, cuDNN on GPU in bfloat16, xla else).
    attention_impl: Literal["xla", "cudnn", "rowwise", "splash"] | None = None

    def __post_init__(self):
        if isinstance(self.layout, Mapping):  # ModelConfig(**config_to_dict(cfg)) works too
            object.__setattr__(self, "layout", layout_from_dict(self.layout))
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {PRESETS}")
        d, h = self.embed_dim, self.num_heads
        if d % h:
            raise ValueError(f"embed_dim {d} must be divisible by num_heads {h}")
        if (d // h) % 4:
            raise ValueError(f"head dim {d // h} must be divisible by 4 for 2-D RoPE")
        for name, heads, kv in (("encoder", h, self.num_kv_heads),
                                ("decoder", self.decoder_num_heads, self.decoder_num_kv_heads)):
            if kv is not None and (kv < 1 or heads % kv):
                raise ValueError(f"{name}: num_kv_heads {kv} must divide num_heads {heads}")
        if self.decoder == "cross" and d % 8:
            raise ValueError(f"the cross decoder's sin-cos encodings need embed_dim % 8 == 0, got {d}")
        if self.ffn not in ("swiglu", "gelu") or self.norm not in ("rms", "layer"):
            raise ValueError(f"unknown ffn {self.ffn!r} or norm {self.norm!r}")
        if not self.prenorm and self.drop_path > 0:
            raise ValueError("drop_path needs pre-norm blocks (the post-norm v1 block has none)")
        remat = ("none", "dots_saveable", "nothing_saveable", "dots", "full")
        if self.remat not in remat:
            raise ValueError(f"remat must be one of {remat}, got {self.remat!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}")
        impls = ("xla", "cudnn", "rowwise", "splash")
        if self.attention_impl is not None and self.attention_impl not in impls:
            raise ValueError(f"attention_impl must be one of {impls} or None, "
                             f"got {self.attention_impl!r}")

    @property
    def dtype(self):
        """The matmul input dtype for layers.Dense (None: the parameters' float32)."""
        import jax.numpy as jnp

        return jnp.bfloat16 if self.compute_dtype == "bfloat16" else None

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def sensor_labels(self) -> tuple[str, ...]:
        return self.layout.sensor_labels

    def ffn_hidden(self, expansion: float) -> int:
        hidden = int(self.embed_dim * expansion)
        return ceil_to(hidden, 8) if self.ffn == "swiglu" else hidden

    @property
    def pixel_channels(self) -> int:
        widest = max(len(g.channels) for g in self.layout.groups)
        return self.out_channels if self.out_channels is not None else widest

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)


def make_config(preset: str = "design_card", size: str = "nano",
                sensor_labels: tuple[str, ...] = sensors.OFFICIAL_SENSORS, **overrides
                ) -> ModelConfig:
    """A preset at one of the four sizes, with optional field overrides."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {tuple(SIZES)}")
    d, depth, heads, dec_depth, dec_heads = SIZES[size]
    layout_kw = {k: overrides.pop(k) for k in list(overrides)
                 if k in ("base_patch_size", "spectral_groups", "custom_groups",
                          "patch_resize", "position_scale", "reference_gsd",
                          "ground_aligned_patches")}
    d = overrides.get("embed_dim", d)
    common = dict(embed_dim=d, depth=depth, num_heads=heads, decoder_depth=dec_depth,
                  decoder_num_heads=dec_heads)
    if preset == "reference_head":
        layout = TokenLayout(tuple(sensor_labels), **{
            "base_patch_size": 8, "spectral_groups": True, "patch_resize": "input",
            "position_scale": "patch", "ground_aligned_patches": False, **layout_kw})
        cfg = dict(common, ffn_expansion=4.0, ffn="gelu", norm="layer", norm_eps=1e-5,
                   prenorm=True, bias=True, drop_path=0.1, decoder="cross",
                   decoder_ffn_expansion=8 / 3, projection_dim=d, ema_momentum=1.0,
                   ema_momentum_end=1.0, out_channels=13)
    elif preset == "reference_v1":
        layout = TokenLayout(tuple(sensor_labels), **{
            "base_patch_size": 16, "spectral_groups": False, "patch_resize": "weight",
            "position_scale": "unit", "ground_aligned_patches": False, **layout_kw})
        cfg = dict(common, ffn_expansion=4.0, ffn="swiglu", norm="rms", norm_eps=1e-6,
                   prenorm=False, bias=False, drop_path=0.0, decoder="v1",
                   decoder_ffn_expansion=8 / 3, projection_dim=256, ema_momentum=0.996,
                   ema_momentum_end=1.0, out_channels=13)
    elif preset == "design_card":
        layout = TokenLayout(tuple(sensor_labels), **{
            "base_patch_size": 8, "spectral_groups": True, "patch_resize": "input",
            "position_scale": "sensor_gsd", **layout_kw})
        cfg = dict(common, num_kv_heads=DESIGN_CARD_KV_HEADS[size],
                   decoder_num_kv_heads=DESIGN_CARD_KV_HEADS[size], ffn_expansion=8 / 3,
                   ffn="swiglu", norm="rms", norm_eps=1e-6, prenorm=True, bias=False,
                   drop_path=0.1, decoder="cross", decoder_ffn_expansion=8 / 3,
                   projection_dim=d, ema_momentum=0.996, ema_momentum_end=1.0)
    else:
        raise ValueError(f"unknown preset {preset!r}; known: {PRESETS}")
    cfg.update(overrides)
    return ModelConfig(layout=layout, preset=preset, **cfg)


def config_to_dict(cfg: ModelConfig) -> dict:
    """JSON-safe dict of a ModelConfig (the layout nested under "layout")."""
    out = dataclasses.asdict(cfg)
    layout = out["layout"]
    layout["sensor_labels"] = list(layout["sensor_labels"])
    layout["custom_groups"] = [[label, [list(g) for g in groups]]
                               for label, groups in layout["custom_groups"]]
    return out


def layout_from_dict(d: Mapping) -> TokenLayout:
    """The TokenLayout of its JSON form (lists where the layout holds tuples)."""
    layout = dict(d)
    layout["sensor_labels"] = tuple(layout["sensor_labels"])
    layout["custom_groups"] = tuple((label, tuple(tuple(g) for g in groups))
                                    for label, groups in layout.get("custom_groups", ()))
    return TokenLayout(**layout)


def config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    layout = layout_from_dict(d.pop("layout"))
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown model config fields {unknown}")
    return ModelConfig(layout=layout, **d)
