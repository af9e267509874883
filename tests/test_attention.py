"""Attention kernels against the reference (jax.nn.dot_product_attention with the
materialised segment mask): values and gradients, packed segments, padding, grouped-query
heads, cross-attention, queries without keys; the TPU splash kernel in Pallas interpret
mode; the cuDNN packed layout against the segment mask it must stand for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spacenit_jax.model import attention
from spacenit_jax.model.attention import Segments

jax.config.update("jax_default_matmul_precision", "highest")


def segments(lengths, total):
    """A packed row: segment i for lengths[i] tokens, then -1 padding up to `total`."""
    ids = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)] + [np.full(
        total - sum(lengths), -1)])
    return ids.astype(np.int32)


def case(lq, lk, heads, kv_heads, d, q_rows, kv_rows, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(len(q_rows), lq, heads, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(len(q_rows), lk, kv_heads, d)), jnp.float32)
            for _ in range(2))
    seg = Segments(jnp.asarray(np.stack(q_rows)), jnp.asarray(np.stack(kv_rows)),
                   num_segments=8)
    return q, k, v, seg


def compare(impl, q, k, v, seg, atol=2e-5, **kw):
    keep = (seg.q >= 0)[..., None, None]
    ct = jax.random.normal(jax.random.key(7), q.shape)  # a cotangent over every output

    def run(fn):
        out = fn(q, k, v)
        grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * ct), argnums=(0, 1, 2))(q, k, v)
        return out, grads

    ref, gref = run(lambda q, k, v: attention.dot_product_attention(q, k, v, seg, "xla"))
    if impl == "splash":
        def fn(q, k, v):
            out = attention._splash(q, k, v, seg, interpret=True, **kw)
            return jnp.where(attention._has_key(seg)[:, :, None, None], out, 0.0)
    else:
        def fn(q, k, v):
            return attention.dot_product_attention(q, k, v, seg, impl)
    got, ggot = run(fn)
    assert np.all(np.isfinite(np.asarray(got))), impl
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=atol)
    for a, b in zip(ggot, gref, strict=True):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol)
    # the reference itself: padding queries and keyless queries give zeros
    assert np.all(np.asarray(ref)[~np.asarray(attention._has_key(seg))] == 0)
    return np.asarray(keep)


# rows of packed self-attention: 3 samples + padding; one sample filling the row
SELF = ([segments([5, 7, 4], 20)], [segments([5, 7, 4], 20)])
SELF2 = ([segments([5, 7, 4], 20), segments([20], 20)], [segments([5, 7, 4], 20),
                                                          segments([20], 20)])
# cross-attention: decoder queries vs context; sample 1 has no context (keyless queries)
CROSS = ([segments([4, 3, 5], 14)], [np.asarray([0] * 6 + [2] * 3 + [-1] * 2, np.int32)])


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("rows", [SELF2, CROSS], ids=["self", "cross"])
def test_rowwise_kernel_equals_reference(kv_heads, rows):
    q_rows, kv_rows = rows
    q, k, v, seg = case(len(q_rows[0]), len(kv_rows[0]), 4, kv_heads, 8, q_rows, kv_rows)
    compare("rowwise", q, k, v, seg)


def test_rowwise_kernel_with_an_extra_mask():
    q, k, v, seg = case(20, 20, 4, 2, 8, *SELF)
    extra = jnp.asarray(np.random.default_rng(3).random((1, 20, 20)) > 0.3)
    compare("rowwise", q, k, v, seg._replace(mask=extra))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_splash_kernel_equals_reference_in_interpret_mode(kv_heads):
    """Rows of 300 tokens in 128-token blocks (3 x 3 tiles per row, padded to 384): packed
    samples, padding, a sample spanning blocks; GQA."""
    q_rows = [segments([100, 60, 90, 40], 300), segments([300], 300)]
    q, k, v, seg = case(300, 300, 4, kv_heads, 16, q_rows, q_rows)
    compare("splash", q, k, v, seg, atol=5e-5, block=128)
    # the first row's tiles [0,128) x [256,384) hold samples {0,1} x {2,3}: skipped
    tiles = np.asarray(attention.segment_block_mask(
        jnp.pad(seg.q[0], (0, 84), constant_values=-1),
        jnp.pad(seg.kv[0], (0, 84), constant_values=-2), 128, 128))
    np.testing.assert_array_equal(tiles, [[1, 1, 0], [1, 1, 1], [0, 1, 1]])


def test_splash_kernel_cross_attention_and_keyless_queries():
    q_rows = [segments([100, 60, 90], 260)]
    kv_rows = [np.asarray([0] * 70 + [2] * 50 + [-1] * 10, np.int32)]  # sample 1: no keys
    q, k, v, seg = case(260, 130, 4, 2, 16, q_rows, kv_rows)
    compare("splash", q, k, v, seg, atol=5e-5, block=128)


def test_segment_block_mask_keeps_a_tile_for_every_query_block():
    q = jnp.asarray(segments([10], 256))  # the second block is all padding
    kv = jnp.asarray(np.where(segments([10], 256) >= 0, segments([10], 256), -2))
    tiles = np.asarray(attention.segment_block_mask(q, kv, 128, 128))
    np.testing.assert_array_equal(tiles, [[True, False], [True, False]])


def _emulated_packed_attention(q, k, v, layout):
    """cuDNN's packed-layout semantics, written out: sorted rows, slot m of the queries
    (offset, length) attends slot m of the keys only; tokens outside every slot -> 0."""
    qo, ko, qoff, qlen, koff, klen = layout

    def slot_of(offsets, lengths, n):
        pos = jnp.arange(n)[:, None]
        inside = (offsets[None, :-1] >= 0) & (pos >= offsets[None, :-1]) & (
            pos < offsets[None, :-1] + lengths[None, :])
        return jnp.where(inside.any(1), jnp.argmax(inside, axis=1), -1)

    take = jax.vmap(lambda x, idx: jnp.take(x, idx, axis=0))
    qs, ks, vs = take(q, qo), take(k, ko), take(v, ko)
    sq = jax.vmap(slot_of, in_axes=(0, 0, None))(qoff, qlen, q.shape[1])
    sk = jax.vmap(slot_of, in_axes=(0, 0, None))(koff, klen, k.shape[1])
    out = attention._xla(qs, ks, vs, Segments(sq, sk))
    out = jnp.where((sq >= 0)[..., None, None], out, 0.0)
    inverse = jax.vmap(lambda p: jnp.zeros_like(p).at[p].set(jnp.arange(p.shape[0])))(qo)
    return take(out, inverse)


@pytest.mark.parametrize("rows", [SELF2, CROSS], ids=["self", "cross"])
def test_cudnn_packed_layout_stands_for_the_segment_mask(rows):
    q_rows, kv_rows = rows
    # shuffle the token order within each row: the layout must sort it out
    perm_q = np.random.default_rng(1).permutation(len(q_rows[0]))
    perm_k = np.random.default_rng(2).permutation(len(kv_rows[0]))
    q_rows = [r[perm_q] for r in q_rows]
    kv_rows = [r[perm_k] for r in kv_rows]
    q, k, v, seg = case(len(q_rows[0]), len(kv_rows[0]), 4, 2, 8, q_rows, kv_rows)
    layout = attention.packed_layout(seg.q, seg.kv, 8)
    got = _emulated_packed_attention(q, k, v, layout)
    ref = attention.dot_product_attention(q, k, v, seg, "xla")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5)
    qo, ko, qoff, qlen, koff, klen = (np.asarray(x) for x in layout)
    assert qoff.shape == (len(q_rows), 9) and qlen.shape == (len(q_rows), 8)
    # slots used on one side only (or on none) are -1 on both sides
    np.testing.assert_array_equal(qlen < 0, klen < 0)
    np.testing.assert_array_equal(qoff[:, :-1] < 0, qlen < 0)


def test_kernel_choice_follows_the_traced_platform():
    assert attention.resolve_impl(None, "tpu") == "splash"
    assert attention.resolve_impl(None, "gpu", "bfloat16") == "cudnn"
    assert attention.resolve_impl(None, "gpu", "float32") == "xla"
    assert attention.resolve_impl(None, "cpu") == "rowwise"
    assert attention.resolve_impl("xla", "tpu") == "xla"
    with pytest.raises(ValueError, match="unknown attention_impl 'flash'"):
        attention.resolve_impl("flash", "tpu")
    assert attention.trace_platform() == jax.default_backend()


def test_sharded_kernels_run_per_device():
    """Under an 8-device mesh every kernel runs inside shard_map on each device's rows:
    results equal the unsharded ones and no row is gathered across devices."""
    from spacenit_jax import sharding

    mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
    rows = [segments([5, 7, 4], 20)] * 4 + [segments([20], 20)] * 4
    q, k, v, seg = case(20, 20, 4, 2, 8, rows, rows)
    expected = attention.dot_product_attention(q, k, v, seg, "rowwise")
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))

    def fn(q, k, v, sq, skv):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return attention.dot_product_attention(q, k, v, Segments(sq, skv), "rowwise")

    args = [jax.device_put(x, spec) for x in (q, k, v, seg.q, seg.kv)]
    compiled = jax.jit(fn).lower(*args).compile()
    assert "all-gather" not in compiled.as_text()
    np.testing.assert_allclose(np.asarray(compiled(*args)), np.asarray(expected), atol=1e-6)
