"""Analytic model FLOPs of a training step, for model-FLOPs utilisation (MFU).

Matmul FLOPs only (2 per multiply-add), counted on real tokens (padding excluded),
attention over each sample's own tokens (bidirectional: the full n^2). Training costs
3x the forward for everything that gets gradients (online encoder, decoder, heads) and
1x for the EMA target encoder, which only runs forward.
"""

from __future__ import annotations

import numpy as np

from spacenit_jax.model.config import ModelConfig


def _segment_sizes(segment: np.ndarray) -> np.ndarray:
    sizes = []
    for row in np.asarray(segment):
        real = row[row >= 0]
        if real.size:
            sizes.append(np.bincount(real))
    return np.concatenate(sizes) if sizes else np.zeros(0, np.int64)


def _paired_sizes(seg_a: np.ndarray, seg_b: np.ndarray) -> np.ndarray:
    """Per-sample (count in a) * (count in b), matched by (row, slot)."""
    total = []
    for ra, rb in zip(np.asarray(seg_a), np.asarray(seg_b), strict=True):
        k = max(int(ra.max(initial=-1)), int(rb.max(initial=-1))) + 1
        if k:
            total.append(np.bincount(ra[ra >= 0], minlength=k)
                         * np.bincount(rb[rb >= 0], minlength=k))
    return np.concatenate(total) if total else np.zeros(0, np.int64)


def _block_linear(cfg: ModelConfig, heads: int, kv_heads: int | None, hidden: int) -> float:
    d, hd = cfg.embed_dim, cfg.head_dim
    kv = kv_heads or heads
    attn = 2 * d * heads * hd * 2 + 2 * 2 * d * kv * hd
    ffn = (3 if cfg.ffn == "swiglu" else 2) * 2 * d * hidden
    return attn + ffn


def encoder_forward(cfg: ModelConfig, segment: np.ndarray, patch_values: float) -> float:
    """Forward FLOPs of the encoder over the real tokens of one stream."""
    sizes = _segment_sizes(segment)
    n = float(sizes.sum())
    per_token = cfg.depth * _block_linear(cfg, cfg.num_heads, cfg.num_kv_heads,
                                          cfg.ffn_hidden(cfg.ffn_expansion))
    attention = cfg.depth * 2 * 2 * cfg.num_heads * cfg.head_dim * float(np.sum(sizes.astype(float) ** 2))
    return n * per_token + attention + 2.0 * patch_values * cfg.embed_dim


def decoder_forward(cfg: ModelConfig, query_segment, context_segment) -> float:
    d, hd, h = cfg.embed_dim, cfg.head_dim, cfg.decoder_num_heads
    kv = cfg.decoder_num_kv_heads or h
    nq = float((np.asarray(query_segment) >= 0).sum())
    nc = float((np.asarray(context_segment) >= 0).sum())
    hidden = cfg.ffn_hidden(cfg.decoder_ffn_expansion)
    ffn = (3 if cfg.ffn == "swiglu" else 2) * 2 * d * hidden
    per_query = 2 * d * h * hd * 2 + ffn
    per_context = 2 * 2 * d * kv * hd
    cross = 2 * 2 * h * hd * float(_paired_sizes(query_segment, context_segment).sum())
    flops = cfg.decoder_depth * (nq * per_query + nc * per_context + cross)
    if cfg.decoder == "v1":  # queries also self-attend
        self_q = _segment_sizes(query_segment).astype(float)
        flops += cfg.decoder_depth * (nq * 2 * 2 * d * kv * hd
                                      + 2 * 2 * h * hd * float(np.sum(self_q ** 2)))
    return flops + nc * 2 * d * d  # encoder-to-decoder embedding of the context


def patch_values(cfg: ModelConfig, tokens_group: np.ndarray, tokens_segment: np.ndarray,
                 src=None, segment=None) -> float:
    """Sum over real tokens of their patch-vector length (embedding matmul size)."""
    widths = np.asarray([cfg.layout.patch_dim(g) for g in cfg.layout.groups] + [0], np.float64)
    group = np.asarray(tokens_group)
    if src is not None:
        group = np.take_along_axis(group, np.asarray(src), axis=1)
        real = np.asarray(segment) >= 0
    else:
        real = np.asarray(tokens_segment) >= 0
    return float(widths[np.where(group >= 0, group, -1)][real].sum())


def train_step_flops(cfg: ModelConfig, views: dict, masked: bool = True) -> float:
    """Model FLOPs of one training step over host (numpy) PackedViews."""
    total = 0.0
    for view in views.values():
        t = view.tokens
        online_values = patch_values(cfg, t.group, t.segment, view.online.src, view.online.segment)
        total += 3 * encoder_forward(cfg, view.online.segment, online_values)
        total += encoder_forward(cfg, t.segment, patch_values(cfg, t.group, t.segment))
        if masked:
            total += 3 * decoder_forward(cfg, view.decoder.segment, view.online.segment)
    return total


def measured_matmul_flops(dtype: str = "float32", n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of one n x n x n matmul on the default device: a practical peak where no
    datasheet figure applies (e.g. a CPU), so MFU there means "share of dense-matmul speed"."""
    import time

    import jax
    import jax.numpy as jnp

    x = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    f(x, x).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(x, x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


# Datasheet dense bfloat16 peak FLOP/s per device, by a substring of jax's device_kind
# (first match wins). MFU is reported against these; a device not listed (e.g. a CPU)
# has no peak, so MFU is not reported unless config.peak_flops_per_device declares one.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
    ("TPU v6 lite", 918e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12),
    ("TPU v5", 459e12), ("TPU v4", 275e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
    """The datasheet bf16 dense peak of a device kind, or None when unknown (CPUs)."""
    for name, peak in PEAK_FLOPS:
        if name in device_kind:
            return peak
    return None
