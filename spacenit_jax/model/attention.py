"""Scaled dot-product attention over packed rows, with kernels that use the packing.

Every kernel computes, for q (R, Lq, H, d) and k, v (R, Lk, K, d) with H % K == 0
(grouped-query attention: query head h reads key/value head h // (H / K)):

    out[r, i, h] = sum_j softmax_j(q[r,i,h] . k[r,j,h'] / sqrt(d) over allowed j) v[r,j,h']
    allowed(r, i, j) = q_segment[r, i] == kv_segment[r, j] >= 0  [and mask[r, i, j]]

Segments are the sample slots of a packed row (batch.py), -1 marks padding. A query
with no allowed key (padding, or a sample without context) gets a zero output, and no
gradient flows through it.

Kernels (`impl`):
  "xla"      jax.nn.dot_product_attention with the boolean mask materialised, on any
             platform: the reference.
  "rowwise"  the CPU kernel: one (row, key/value head) at a time (lax.map) over a boolean
             (R, L, L) mask built once per call from the segment ids; the backward
             recomputes the probabilities from the saved log-sum-exp (custom VJP), so no
             (heads, L, L) float tensor is kept. XLA's generic attention on the CPU is
             several times slower.
  "splash"   TPU: the Pallas splash-attention kernel with segment ids, made block-sparse
             per row: a (query block, key block) tile is skipped when the two blocks'
             segment ranges do not overlap, so a row packed with k samples costs about
             what its samples cost rather than L^2. On a CPU it runs in Pallas interpret
             mode (tests).
  "cudnn"    GPU: cuDNN flash attention in its packed (ragged) layout: each row's tokens
             are sorted by segment and every sample is a separate sequence (offsets and
             lengths per row), so no mask or bias exists and cross-sample tiles are not
             computed. Needs bfloat16/float16, a head dim multiple of 8 and a static bound
             on the samples per row (`num_segments`).
The default (None) picks for the platform the program is compiled for: the devices of
the mesh the caller traces under (the train step sets it), else the default backend.
An extra dense `mask` (e.g. axial attention) runs on "rowwise" on the CPU, else on "xla".

Under a mesh the kernels run inside shard_map over the batch axes (and "tensor" over
heads when it divides them), so every device attends over its own rows only.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

NEG = -1e30
IMPLS = ("xla", "rowwise", "splash", "cudnn")
SPLASH_BLOCK = 256  # query and key block size of the splash kernel (multiple of 128)


class Segments(NamedTuple):
    """Which keys each query may attend to: equal, non-negative segment ids."""

    q: jax.Array  # (R, Lq) int32, -1 = padding
    kv: jax.Array  # (R, Lk) int32, -1 = padding
    mask: jax.Array | None = None  # optional extra (R, Lq, Lk) bool, True = may attend
    num_segments: int | None = None  # static bound on the segment ids (cuDNN's layout)

    def dense(self) -> jax.Array:
        """The (R, Lq, Lk) boolean mask these segments stand for."""
        m = (self.q[:, :, None] == self.kv[:, None, :]) & (self.q[:, :, None] >= 0)
        return m if self.mask is None else m & self.mask


def default_impl(platform: str, compute_dtype: str = "float32") -> str:
    """The kernel for a platform: rowwise (cpu), splash (tpu), cudnn (gpu, 16-bit)."""
    if platform == "cpu":
        return "rowwise"
    if platform == "tpu":
        return "splash"
    if platform in ("gpu", "cuda"):
        return "cudnn" if compute_dtype in ("bfloat16", "float16") else "xla"
    return "xla"


def resolve_impl(impl: str | None, platform: str, compute_dtype: str = "float32") -> str:
    """`impl` itself when set, else the platform's default."""
    if impl is None:
        return default_impl(platform, compute_dtype)
    if impl not in IMPLS:
        raise ValueError(f"unknown attention_impl {impl!r}; known: {IMPLS}")
    return impl


def trace_platform() -> str:
    """The platform of the mesh being traced under, else the default backend's."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.default_backend()


def dot_product_attention(q, k, v, seg: Segments, impl: str | None = None):
    """q (R, Lq, H, d), k/v (R, Lk, K, d) -> (R, Lq, H, d); see the module docstring."""
    platform = trace_platform()
    impl = resolve_impl(impl, platform, jnp.dtype(q.dtype).name)
    v = v.astype(q.dtype)
    if seg.mask is not None and impl in ("splash", "cudnn"):
        impl = "xla"
    if impl == "cudnn" and (seg.num_segments is None or q.shape[-1] % 8
                            or jnp.dtype(q.dtype) not in (jnp.bfloat16, jnp.float16)):
        impl = "xla"
    kernel = {"xla": _xla, "rowwise": _rowwise_call, "cudnn": _cudnn,
              "splash": functools.partial(_splash, interpret=platform == "cpu")}[impl]
    out = _per_device(kernel, q, k, v, seg)
    has_key = _has_key(seg)[:, :, None, None]
    return jnp.where(has_key, out, jnp.zeros((), out.dtype))


def _has_key(seg: Segments):
    """(R, Lq) True where a query has at least one allowed key. With a bound on the
    segment ids, from which segments occur among each row's keys ((R, Lk, S) compares);
    else from the dense mask. (A scatter-based bincount was slower on the CPU.)"""
    if seg.mask is not None or seg.num_segments is None:
        return jnp.any(seg.dense(), axis=-1)
    present = jnp.any(seg.kv[:, :, None] == jnp.arange(seg.num_segments), axis=1)  # (R, S)
    idx = jnp.clip(seg.q, 0, seg.num_segments - 1)
    return (seg.q >= 0) & jnp.take_along_axis(present, idx, axis=1)


def _per_device(kernel, q, k, v, seg: Segments):
    """Run `kernel` on each device's rows (shard_map over the batch axes) when tracing
    under a mesh whose batch axes split the rows; else on the whole batch."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q, k, v, seg)
    batch = tuple(a for a in ("data", "fsdp") if a in mesh.shape and mesh.shape[a] > 1)
    shards = int(np.prod([mesh.shape[a] for a in batch])) if batch else 1
    if q.shape[0] % shards:
        return kernel(q, k, v, seg)
    tensor = mesh.shape.get("tensor", 1)
    heads = "tensor" if tensor > 1 and not q.shape[2] % tensor and not k.shape[2] % tensor else None
    rows = batch if batch else None
    qkv = PartitionSpec(rows, None, heads, None)
    rows_spec = PartitionSpec(rows, None)
    seg_spec = Segments(rows_spec, rows_spec,
                        None if seg.mask is None else PartitionSpec(rows, None, None),
                        seg.num_segments)
    body = functools.partial(_call_with_static, kernel, seg.num_segments)
    dyn = (seg.q, seg.kv, seg.mask)
    return jax.shard_map(
        body, mesh=mesh, in_specs=(qkv, qkv, qkv, (seg_spec.q, seg_spec.kv, seg_spec.mask)),
        out_specs=qkv, check_vma=False)(q, k, v, dyn)


def _call_with_static(kernel, num_segments, q, k, v, dyn):
    sq, skv, mask = dyn
    return kernel(q, k, v, Segments(sq, skv, mask, num_segments))


# --------------------------------------------------------------------------------------
# "xla": the reference

def _xla(q, k, v, seg: Segments):
    return jax.nn.dot_product_attention(q, k, v, mask=seg.dense()[:, None],
                                        implementation="xla")


# --------------------------------------------------------------------------------------
# "rowwise": the CPU kernel


def _rowwise_call(q, k, v, seg: Segments):
    if seg.mask is None:
        return _rowwise(q, k, v, seg.q, seg.kv)
    return _rowwise_masked(q, k, v, seg.q, seg.kv, seg.mask)


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


def _split_rows(q, k, v):
    kv, length = k.shape[-2], q.shape[1]
    qh = jax.vmap(lambda x: _heads_first(x, kv))(q)
    kh, vh = (jnp.swapaxes(x, 1, 2) for x in (k, v))  # (R, K, M, d)
    return qh, kh, vh, length


def _per_head(fn, masks, *arrays):
    """lax.map of fn over (row, key/value head) pairs: small working sets stay in cache.
    masks: (q segments, kv segments, extra mask or None), one per row."""
    r, kv = arrays[0].shape[:2]
    sq, skv, extra = (None if m is None else jnp.asarray(m) for m in masks)
    # Every row's mask, built once per call (R x Lq x Lk booleans, small on a CPU host):
    # built inside the loop instead, XLA:CPU ran the attention about 3x slower.
    dense = Segments(sq, skv, extra).dense()
    flat = [a.reshape(r * kv, 1, *a.shape[2:]) for a in arrays]

    def one(i_and_slices):
        i, *xs = i_and_slices
        return fn(*xs[:3], dense[i // kv], *xs[3:])

    out = jax.lax.map(one, (jnp.arange(r * kv), *flat))
    return jax.tree.map(lambda o: o.reshape(r, kv, *o.shape[2:]), out)


def _rowwise_fwd_impl(q, k, v, masks):
    qh, kh, vh, length = _split_rows(q, k, v)
    o, lse = _per_head(_row_forward, masks, qh, kh, vh)
    out = jax.vmap(lambda x: _heads_last(x, length))(o)
    return out, (qh, kh, vh, o, lse)


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


def _rowwise_bwd_impl(res, masks, g):
    qh, kh, vh, o, lse = res
    length = g.shape[1]
    dog = jax.vmap(lambda x: _heads_first(x, kh.shape[1]))(g)
    dq, dk, dv = _per_head(_row_backward, masks, qh, kh, vh, o, lse, dog)
    dq = jax.vmap(lambda x: _heads_last(x, length))(dq)
    return dq, jnp.swapaxes(dk, 1, 2), jnp.swapaxes(dv, 1, 2)


@jax.custom_vjp
def _rowwise(q, k, v, sq, skv):
    return _rowwise_fwd_impl(q, k, v, (sq, skv, None))[0]


def _rowwise_fwd(q, k, v, sq, skv):
    out, res = _rowwise_fwd_impl(q, k, v, (sq, skv, None))
    return out, (res, sq, skv)


def _rowwise_bwd(saved, g):
    res, sq, skv = saved
    return (*_rowwise_bwd_impl(res, (sq, skv, None), g), None, None)


_rowwise.defvjp(_rowwise_fwd, _rowwise_bwd)


@jax.custom_vjp
def _rowwise_masked(q, k, v, sq, skv, mask):
    return _rowwise_fwd_impl(q, k, v, (sq, skv, mask))[0]


def _rowwise_masked_fwd(q, k, v, sq, skv, mask):
    out, res = _rowwise_fwd_impl(q, k, v, (sq, skv, mask))
    return out, (res, sq, skv, mask)


def _rowwise_masked_bwd(saved, g):
    res, sq, skv, mask = saved
    return (*_rowwise_bwd_impl(res, (sq, skv, mask), g), None, None, None)


_rowwise_masked.defvjp(_rowwise_masked_fwd, _rowwise_masked_bwd)


# --------------------------------------------------------------------------------------
# "splash": TPU Pallas splash attention, block-sparse per row from the segment ids


def _pad_to(x, length, axis, value):
    extra = length - x.shape[axis]
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _block_ranges(seg, block):
    """Per block of `block` tokens: (min, max) of the real segment ids, (big, -1) if none."""
    s = seg.reshape(-1, block)
    real = s >= 0
    big = jnp.iinfo(jnp.int32).max
    return jnp.min(jnp.where(real, s, big), axis=1), jnp.max(jnp.where(real, s, -1), axis=1)


def segment_block_mask(q_seg, kv_seg, bq: int, bkv: int):
    """(q blocks, kv blocks) bool: True where a query block and a key block may share a
    segment (their segment ranges overlap), i.e. the tiles the kernel must compute. Every
    query block keeps at least its first tile, so no output row is left without a tile
    (the kernel would divide by zero there; such rows are zeroed by the caller)."""
    qlo, qhi = _block_ranges(q_seg, bq)
    klo, khi = _block_ranges(kv_seg, bkv)
    nz = (qlo[:, None] <= khi[None, :]) & (klo[None, :] <= qhi[:, None])
    first = jnp.arange(nz.shape[1]) == 0
    return nz | (first[None, :] & ~jnp.any(nz, axis=1, keepdims=True))


def _mask_infos(q_seg, kv_seg, bq, bkv):
    """Forward and dK/dV MaskInfos of one row (the layout the kernel's dynamic-mask path
    uses: (1 head, q blocks, kv blocks), next-block indices of the computed tiles)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask_info as mi,
    )

    nz = segment_block_mask(q_seg, kv_seg, bq, bkv)[None]
    block_mask = nz.astype(jnp.int32)
    kv_next = jnp.where(nz, jnp.arange(nz.shape[2], dtype=jnp.int32)[None, None, :], 0)
    q_next = jnp.where(nz, jnp.arange(nz.shape[1], dtype=jnp.int32)[None, :, None], 0)
    fwd = mi.MaskInfo(data_next=kv_next, mask_next=None, block_mask=block_mask,
                      partial_mask_blocks=None, q_sequence=None)
    dkv = mi.MaskInfo(data_next=q_next, mask_next=None, block_mask=block_mask,
                      partial_mask_blocks=None, q_sequence=None)
    return fwd, dkv


def _splash(q, k, v, seg: Segments, *, interpret: bool, block: int = SPLASH_BLOCK):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    r, lq, h, d = q.shape
    lk = k.shape[1]
    pq, pk = -(-lq // block) * block, -(-lk // block) * block
    # Padding: queries -1, keys -2, so padded tiles never match and are skipped.
    sq = _pad_to(seg.q, pq, 1, -1)
    skv = _pad_to(jnp.where(seg.kv >= 0, seg.kv, -2), pk, 1, -2)
    scale = 1.0 / np.sqrt(d)
    qh = jnp.swapaxes(_pad_to(q * jnp.asarray(scale, q.dtype), pq, 1, 0), 1, 2)  # (R, H, Lq, d)
    kh, vh = (jnp.swapaxes(_pad_to(x, pk, 1, 0), 1, 2) for x in (k, v))
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    template = sa.make_splash_mha(sa.MultiHeadMask([sa.FullMask((pq, pk))]), head_shards=1,
                                  q_seq_shards=1, block_sizes=sizes, interpret=interpret)
    kernel_type, kwargs = type(template), template.kwargs

    def one_row(qr, kr, vr, sqr, skr):
        fwd, dkv = _mask_infos(sqr, skr, block, block)
        kernel = kernel_type(fwd, fwd, dkv, **kwargs)
        return kernel(qr, kr, vr, segment_ids=sa.SegmentIds(sqr, skr))

    out = jax.vmap(one_row)(qh, kh, vh, sq, skv)  # (R, H, Lq', d)
    return jnp.swapaxes(out, 1, 2)[:, :lq]


# --------------------------------------------------------------------------------------
# "cudnn": GPU cuDNN flash attention in the packed (ragged) layout


def packed_layout(q_seg, kv_seg, num_segments: int):
    """The cuDNN packed layout of segment-id rows.

    Returns (q_order, kv_order, q_offsets, q_lengths, kv_offsets, kv_lengths):
    per-row permutations that sort tokens by segment (padding and segments absent from
    either side last), and per segment slot m < num_segments its start and length in the
    sorted row, -1 for slots used on neither side. Slot m of the queries attends slot m of
    the keys and values only.
    """
    m = num_segments

    def one(sq, skv):
        cq = jnp.bincount(jnp.where(sq >= 0, sq, m), length=m + 1)[:m]
        ck = jnp.bincount(jnp.where(skv >= 0, skv, m), length=m + 1)[:m]
        used = (cq > 0) & (ck > 0)

        def order(s, counts):
            key = jnp.where((s >= 0) & (s < m), s, m)
            key = jnp.where(used[jnp.clip(key, 0, m - 1)] & (key < m), key, m)
            perm = jnp.argsort(key, stable=True)
            lengths = jnp.where(used, counts, 0)
            starts = jnp.cumsum(lengths) - lengths
            return perm, jnp.where(used, starts, -1), jnp.where(used, lengths, -1)

        qo, qs, ql = order(sq, cq)
        ko, ks, kl = order(skv, ck)
        end = jnp.full((1,), -1, jnp.int32)
        return (qo, ko, jnp.concatenate([qs.astype(jnp.int32), end]), ql.astype(jnp.int32),
                jnp.concatenate([ks.astype(jnp.int32), end]), kl.astype(jnp.int32))

    return jax.vmap(one)(q_seg, kv_seg)


def _cudnn(q, k, v, seg: Segments):
    from jax._src.cudnn import fused_attention_stablehlo as fa

    qo, ko, qoff, qlen, koff, klen = packed_layout(seg.q, seg.kv, seg.num_segments)
    take = jax.vmap(lambda x, idx: jnp.take(x, idx, axis=0))
    qs, ks, vs = take(q, qo), take(k, ko), take(v, ko)
    out = fa.dot_product_attention(
        qs, ks, vs, q_seqlen=qlen, kv_seqlen=klen, q_offsets=qoff, kv_offsets=koff,
        scale=1.0 / float(np.sqrt(q.shape[-1])), mask_type=fa.MaskType.PADDING,
        qkv_layout="BTNH")
    inverse = jax.vmap(lambda p: jnp.zeros_like(p).at[p].set(jnp.arange(p.shape[0])))(qo)
    return take(out, inverse)
