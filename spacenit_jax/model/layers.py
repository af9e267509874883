"""Transformer layers: dense, norms, feed-forwards, grouped-query attention, block, stack.

Parameters carry logical axis names (`out_sharding` metadata) that a rules table maps to
mesh axes; activations are pinned to theirs (sharding.constrain: rows over data x fsdp)
at each block's boundaries and inside it. Initialisation follows PyTorch's defaults, as
the original does, so a freshly built model is statistically the original's. Modules
take random keys explicitly and never mutate state in `__call__`: they stay plain
pytrees.

Precision: parameters are float32; with a compute dtype (bfloat16) the matmuls take
their inputs in it, while the residual stream, norms, softmax statistics and the losses
stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from spacenit_jax.model import attention, positions
from spacenit_jax.sharding import constrain

# Logical axes of the activations (sharding.ACTIVATION_RULES maps them to the mesh).
TOKENS = ("batch", "length", "act_embed")


def param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def uniform(key, shape, bound):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def cast(x, dtype):
    return x if dtype is None or x.dtype == dtype else x.astype(dtype)


class Dense(nnx.Module):
    """y = x @ kernel + bias; kernel (in, out) = the transpose of torch's Linear weight."""

    def __init__(self, din: int, dout: int, *, bias: bool, rngs: nnx.Rngs,
                 axes: tuple[str | None, str | None] = ("embed", "mlp"), dtype=None):
        bound = 1.0 / math.sqrt(din)
        self.kernel = param(uniform(rngs.params(), (din, dout), bound), axes)
        self.bias = param(uniform(rngs.params(), (dout,), bound), axes[1:]) if bias else None
        self.dtype = dtype

    def __call__(self, x):
        y = jnp.dot(cast(x, self.dtype), cast(self.kernel[...], self.dtype))
        if self.bias is not None:
            y = y + cast(self.bias[...], y.dtype)
        return y


class Embed(nnx.Module):
    """Lookup table, N(0, 1) like torch's nn.Embedding."""

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs):
        self.embedding = param(jax.random.normal(rngs.params(), (num, dim)), (None, "embed"))

    def __call__(self, ids):
        return jnp.take(self.embedding[...], ids, axis=0)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        self.scale = param(jnp.ones((dim,)), ("embed",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        self.scale = param(jnp.ones((dim,)), ("embed",))
        self.bias = param(jnp.zeros((dim,)), ("embed",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


def make_norm(kind: str, dim: int, eps: float):
    return RMSNorm(dim, eps) if kind == "rms" else LayerNorm(dim, eps)


class SwiGLU(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, bias: bool, rngs: nnx.Rngs, dtype=None):
        self.gate = Dense(dim, hidden, bias=bias, rngs=rngs, axes=("embed", "mlp"), dtype=dtype)
        self.up = Dense(dim, hidden, bias=bias, rngs=rngs, axes=("embed", "mlp"), dtype=dtype)
        self.down = Dense(hidden, dim, bias=bias, rngs=rngs, axes=("mlp", "embed"), dtype=dtype)

    def __call__(self, x):
        hidden = constrain(jax.nn.silu(self.gate(x)) * self.up(x), ("batch", "length", "act_mlp"))
        return self.down(hidden)


class GeluMLP(nnx.Module):
    """Two-layer MLP with the exact (erf) GELU of the original."""

    def __init__(self, dim: int, hidden: int, *, bias: bool, rngs: nnx.Rngs, dtype=None):
        self.fc1 = Dense(dim, hidden, bias=bias, rngs=rngs, axes=("embed", "mlp"), dtype=dtype)
        self.fc2 = Dense(hidden, dim, bias=bias, rngs=rngs, axes=("mlp", "embed"), dtype=dtype)

    def __call__(self, x):
        hidden = constrain(jax.nn.gelu(self.fc1(x), approximate=False),
                           ("batch", "length", "act_mlp"))
        return self.fc2(hidden)


def make_ffn(kind: str, dim: int, hidden: int, *, bias: bool, rngs: nnx.Rngs, dtype=None):
    cls = SwiGLU if kind == "swiglu" else GeluMLP
    return cls(dim, hidden, bias=bias, rngs=rngs, dtype=dtype)


class Attention(nnx.Module):
    """Grouped-query attention: separate q/k/v/out projections, RoPE on q and k only.

    Query head h uses key/value head h // (heads / kv_heads). A query with no valid key
    (padding, or a sample without context) gets a zero output, as in the original.
    `impl` names the attention kernel (attention.IMPLS; None: the platform's).
    """

    def __init__(self, dim: int, heads: int, kv_heads: int | None, *, bias: bool,
                 rngs: nnx.Rngs, dtype=None, impl: str | None = None):
        kv_heads = kv_heads or heads
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        hd = self.head_dim
        self.q = Dense(dim, heads * hd, bias=bias, rngs=rngs, axes=("embed", "heads"), dtype=dtype)
        self.k = Dense(dim, kv_heads * hd, bias=bias, rngs=rngs, axes=("embed", "kv"), dtype=dtype)
        self.v = Dense(dim, kv_heads * hd, bias=bias, rngs=rngs, axes=("embed", "kv"), dtype=dtype)
        self.o = Dense(heads * hd, dim, bias=bias, rngs=rngs, axes=("heads", "embed"), dtype=dtype)
        self.impl = impl

    def __call__(self, x, seg: attention.Segments, *, context=None, rope=None):
        """x (R, L, D); context (R, M, D) or None (self-attention); seg: the queries' and
        keys' segment ids (attention.Segments)."""
        r, n, _ = x.shape
        src = x if context is None else context
        m = src.shape[1]
        heads = ("batch", "length", "act_heads", None)
        kv_heads = ("batch", "length", "act_kv_heads", None)
        q = constrain(self.q(x).reshape(r, n, self.heads, self.head_dim), heads)
        k = constrain(self.k(src).reshape(r, m, self.kv_heads, self.head_dim), kv_heads)
        v = constrain(self.v(src).reshape(r, m, self.kv_heads, self.head_dim), kv_heads)
        if rope is not None:
            q, k = positions.apply_rope(q, rope), positions.apply_rope(k, rope)
        out = constrain(attention.dot_product_attention(q, k, v, seg, self.impl), heads)
        return self.o(out.reshape(r, n, self.heads * self.head_dim))


def drop_path(x, rate: float, key, segment):
    """Stochastic depth per sample: one Bernoulli draw per (row, segment)."""
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, segment.shape)  # one draw per slot index
    keep = jnp.take_along_axis(keep, jnp.clip(segment, 0, segment.shape[1] - 1), axis=1)
    return jnp.where(keep[..., None], x / (1.0 - rate), jnp.zeros((), x.dtype))


class Block(nnx.Module):
    """One transformer block with switches covering both original revisions.

    prenorm:  x += DP(SelfAttn(N(x))); x += DP(CrossAttn(N(x), raw context)); x += DP(FFN(N(x)))
    postnorm: x = N(x + SelfAttn(x));  x = N(x + CrossAttn(x, context));     x = N(x + FFN(x))
    """

    def __init__(self, dim: int, heads: int, kv_heads: int | None, *, ffn: str, hidden: int,
                 norm: str, eps: float, prenorm: bool, bias: bool, self_attention: bool = True,
                 cross_attention: bool = False, rngs: nnx.Rngs, dtype=None,
                 impl: str | None = None):
        def attn():
            return Attention(dim, heads, kv_heads, bias=bias, rngs=rngs, dtype=dtype, impl=impl)

        self.prenorm = prenorm
        self.attn_norm = make_norm(norm, dim, eps) if self_attention else None
        self.attn = attn() if self_attention else None
        self.cross_norm = make_norm(norm, dim, eps) if cross_attention else None
        self.cross_attn = attn() if cross_attention else None
        self.ffn_norm = make_norm(norm, dim, eps)
        self.ffn = make_ffn(ffn, dim, hidden, bias=bias, rngs=rngs, dtype=dtype)

    def __call__(self, x, *, attn: attention.Segments | None = None, rope=None, context=None,
                 cross: attention.Segments | None = None, segment=None,
                 drop_rate: float = 0.0, rng=None):
        """x (R, L, D); attn: self-attention segments; context (R, M, D) with cross: the
        cross-attention segments; segment (R, L): the rows' sample slots (DropPath)."""
        keys = jax.random.split(rng, 3) if rng is not None else (None, None, None)

        def residual(x, fn, norm, key):
            if self.prenorm:
                x = x + drop_path(fn(norm(x)).astype(x.dtype), drop_rate, key, segment)
            else:
                x = norm(x + drop_path(fn(x).astype(x.dtype), drop_rate, key, segment))
            return constrain(x, TOKENS)

        x = constrain(x, TOKENS)
        if self.attn is not None:
            x = residual(x, lambda h: self.attn(h, attn, rope=rope), self.attn_norm, keys[0])
        if self.cross_attn is not None:
            x = residual(x, lambda h: self.cross_attn(h, cross, context=context),
                         self.cross_norm, keys[1])
        return residual(x, self.ffn, self.ffn_norm, keys[2])


# Rematerialisation policies of a block (jax.checkpoint), by name:
#   none              keep every intermediate for the backward pass (fastest, most memory);
#   dots_saveable     keep the outputs of matmuls without batch dimensions (the q/k/v/out
#                     projections and the feed-forward layers), recompute the rest
#                     (attention, norms, activations): jax's dots_with_no_batch_dims_saveable;
#   nothing_saveable  keep only each block's input, recompute the whole block.
# "dots" and "full" are accepted as the older names of the last two.
REMAT_POLICIES = {
    "none": None,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}
REMAT_ALIASES = {"dots": "dots_saveable", "full": "nothing_saveable"}
LAYER_AXIS = {nnx.PARTITION_NAME: "layers"}  # the stacked-layer axis' logical name


def remat_policy(name: str):
    name = REMAT_ALIASES.get(name, name)
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; known: "
                         f"{sorted(REMAT_POLICIES) + sorted(REMAT_ALIASES)}")
    return name, REMAT_POLICIES[name]


class Stack(nnx.Module):
    """`depth` identical blocks, unrolled or as one scan over stacked parameters.

    Both layouts are built from the same per-layer initialisation, so a scanned and an
    unrolled model made with the same seed hold identical values (see stack_layers /
    unstack_layers for converting checkpoints between them). `remat` names a
    REMAT_POLICIES entry applied to every block.
    """

    def __init__(self, make_block: Callable[[nnx.Rngs], Block], depth: int, *,
                 rngs: nnx.Rngs, scan: bool = False, remat: str = "none"):
        blocks = [make_block(rngs) for _ in range(depth)]
        remat_policy(remat)
        self.depth, self.scan, self.remat = depth, scan, remat
        if scan:
            self.layers = stack_modules(blocks)
        else:
            self.layers = nnx.List(blocks)

    def __call__(self, x, *, rng=None, **kwargs):
        use_keys = rng is not None
        keys = jax.random.split(rng, self.depth) if use_keys else jnp.arange(self.depth)

        def run(graphdef, layer_state, x, key):
            block = nnx.merge(graphdef, layer_state)
            return block(x, rng=key if use_keys else None, **kwargs)

        name, policy = remat_policy(self.remat)
        if name != "none":
            run = jax.checkpoint(run, policy=policy, static_argnums=(0,))
        if not self.scan:
            for i, block in enumerate(self.layers):
                graphdef, layer_state = nnx.split(block)
                x = run(graphdef, layer_state, x, keys[i])
            return x
        graphdef, state = nnx.split(self.layers)

        def body(x, inputs):
            layer_state, key = inputs
            return run(graphdef, nnx.spmd.remove_axis(layer_state, 0, LAYER_AXIS), x, key), None

        x, _ = jax.lax.scan(body, x, (state, keys))
        return x


def stack_modules(blocks: Sequence[nnx.Module]) -> nnx.Module:
    """One module whose parameters are the per-layer parameters stacked on a leading
    axis, named "layers" in their sharding metadata by Flax's own axis handling."""
    graphdef, *_ = nnx.split(blocks[0])
    states = [nnx.state(b) for b in blocks]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    return nnx.merge(graphdef, nnx.spmd.add_axis(stacked, 0, LAYER_AXIS))
