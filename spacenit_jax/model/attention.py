"""Scaled dot-product attention kernels (grouped-query, boolean masks).

"xla" / "cudnn": jax.nn.dot_product_attention (cuDNN flash attention on GPU in bf16).
"rowwise": a memory-efficient kernel for the CPU: one batch row at a time (lax.map),
  the backward recomputes the probabilities from the saved log-sum-exp (custom VJP) so
  no (heads, L, L) tensor is kept for the backward pass. XLA's generic attention on
  the CPU materialises and re-reads full score tensors and is several times slower.
The default (None) picks "rowwise" on the CPU and "xla" elsewhere.

Masks are (R, Lq, Lk) booleans, True = may attend. A query without any valid key gets
an arbitrary (finite) output here; callers zero it (Attention does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e30


def dot_product_attention(q, k, v, mask, impl: str | None = None):
    """q (R, Lq, H, d), k/v (R, Lk, K, d) with H % K == 0, mask (R, Lq, Lk) -> (R, Lq, H, d)."""
    if impl is None:
        impl = "rowwise" if jax.default_backend() == "cpu" else "xla"
    if impl == "rowwise":
        return _rowwise(q, k, v.astype(q.dtype), mask)
    return jax.nn.dot_product_attention(q, k, v.astype(q.dtype), mask=mask[:, None],
                                        implementation=impl)


def _heads_first(q, kv_heads):
    """One row's (L, H, d) -> (K, G*L, d): query heads grouped by their key/value head."""
    length, heads, d = q.shape
    g = heads // kv_heads
    return jnp.transpose(q.reshape(length, kv_heads, g, d), (1, 2, 0, 3)).reshape(
        kv_heads, g * length, d)


def _heads_last(x, length):
    """Inverse of _heads_first: (K, G*L, d) -> (L, H, d)."""
    kv, gl, d = x.shape
    return jnp.transpose(x.reshape(kv, gl // length, length, d), (2, 0, 1, 3)).reshape(
        length, -1, d)


def _scores(q, k, mask):
    """One row: q (K, G*L, d), k (K, M, d), mask (L, M) -> masked float32 scores (K, G*L, M)."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    s = jnp.einsum("kqd,kmd->kqm", q, k, preferred_element_type=jnp.float32) * scale
    g = q.shape[1] // mask.shape[0]
    return jnp.where(jnp.tile(mask, (g, 1))[None], s, NEG)


def _row_forward(q, k, v, mask):
    s = _scores(q, k, mask)
    mx = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - mx)
    den = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.matmul((p / den).astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o.astype(q.dtype), (mx + jnp.log(den))[..., 0]


@jax.custom_vjp
def _rowwise(q, k, v, mask):
    out, _ = _rowwise_fwd(q, k, v, mask)
    return out


def _split_rows(q, k, v):
    kv, length = k.shape[-2], q.shape[1]
    qh = jax.vmap(lambda x: _heads_first(x, kv))(q)
    kh, vh = (jnp.swapaxes(x, 1, 2) for x in (k, v))  # (R, K, M, d)
    return qh, kh, vh, length


def _per_head(fn, mask, *arrays):
    """lax.map of fn over (row, key/value head) pairs: small working sets stay in cache."""
    r, kv = arrays[0].shape[:2]
    mask = jnp.asarray(mask)
    flat = [a.reshape(r * kv, 1, *a.shape[2:]) for a in arrays]

    def one(i_and_slices):
        i, *xs = i_and_slices
        return fn(*xs[:3], mask[i // kv], *xs[3:])

    out = jax.lax.map(one, (jnp.arange(r * kv), *flat))
    return jax.tree.map(lambda o: o.reshape(r, kv, *o.shape[2:]), out)


def _rowwise_fwd(q, k, v, mask):
    qh, kh, vh, length = _split_rows(q, k, v)
    o, lse = _per_head(_row_forward, mask, qh, kh, vh)
    out = jax.vmap(lambda x: _heads_last(x, length))(o)
    return out, (qh, kh, vh, mask, o, lse)


def _row_backward(q, k, v, mask, o, lse, do):
    scale = 1.0 / np.sqrt(q.shape[-1])
    p = jnp.exp(_scores(q, k, mask) - lse[..., None])  # (K, G*L, M)
    do32 = do.astype(jnp.float32)
    dv = jnp.einsum("kqm,kqd->kmd", p, do32)
    dp = jnp.einsum("kqd,kmd->kqm", do32, v.astype(jnp.float32))
    delta = jnp.sum(do32 * o.astype(jnp.float32), axis=-1, keepdims=True)
    ds = p * (dp - delta) * scale
    dq = jnp.matmul(ds, k.astype(jnp.float32))
    dk = jnp.einsum("kqm,kqd->kmd", ds, q.astype(jnp.float32))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _rowwise_bwd(res, g):
    qh, kh, vh, mask, o, lse = res
    length = g.shape[1]
    dog = jax.vmap(lambda x: _heads_first(x, kh.shape[1]))(g)
    dq, dk, dv = _per_head(_row_backward, mask, qh, kh, vh, o, lse, dog)
    dq = jax.vmap(lambda x: _heads_last(x, length))(dq)
    return dq, jnp.swapaxes(dk, 1, 2), jnp.swapaxes(dv, 1, 2), None


_rowwise.defvjp(_rowwise_fwd, _rowwise_bwd)
