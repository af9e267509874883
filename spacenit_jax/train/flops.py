"""Analytic model FLOPs of a training step, for model-FLOPs utilisation (MFU) and for
checking compiled programs (launch.aot_compile).

Matmul FLOPs only (2 per multiply-add). Training costs 3x the forward for everything
that gets gradients (online encoder, decoders, heads) and 1x for the EMA target encoder,
which only runs forward. Two ways to count:

- real (`train_step_flops` on a host batch, `plan_step_flops(padded=False)` on a packing
  plan): real tokens only, attention over each sample's own tokens (bidirectional: the
  full n^2 pairs per sample), patch embeddings of real tokens. This is the work the model
  needs, the numerator of MFU.
- padded (`plan_step_flops(padded=True)`): every token slot of every row, dense attention
  over whole rows (L^2 per row), patch embeddings of every pixel-buffer slot. This is what
  a dense attention kernel and the fixed-shape program actually compute, i.e. what XLA's
  cost analysis of the compiled step reports; the ratio of the two is the price of
  padding and of packing several samples into one dense-attention row.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spacenit_jax.model.config import ModelConfig

MODEL_KINDS = ("latent_predictor", "autoencoder", "dual_branch")


@dataclasses.dataclass(frozen=True)
class StreamCounts:
    """What an encoder pass costs: token slots, attention pairs, embedded patch values."""

    tokens: float
    pairs: float  # (query, key) pairs attended
    patch_values: float  # patch-vector values through the patch embeddings


@dataclasses.dataclass(frozen=True)
class ViewCounts:
    """One view of a batch: the target encoder's stream, the online encoder's stream and
    the decoder's queries (cross pairs: query-context pairs inside a sample; query pairs:
    query-query pairs, used by the v1 decoder's self-attention)."""

    target: StreamCounts
    online: StreamCounts
    queries: float
    cross_pairs: float
    query_pairs: float


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


def encoder_forward_counts(cfg: ModelConfig, c: StreamCounts) -> float:
    """Forward FLOPs of the encoder over one stream."""
    per_token = cfg.depth * _block_linear(cfg, cfg.num_heads, cfg.num_kv_heads,
                                          cfg.ffn_hidden(cfg.ffn_expansion))
    attention = cfg.depth * 2 * 2 * cfg.num_heads * cfg.head_dim * c.pairs
    return c.tokens * per_token + attention + 2.0 * c.patch_values * cfg.embed_dim


def decoder_forward_counts(cfg: ModelConfig, queries: float, context: float,
                           cross_pairs: float, query_pairs: float) -> float:
    """Forward FLOPs of one decoder: `queries` predicted tokens against `context` encoded
    visible tokens."""
    d, hd, h = cfg.embed_dim, cfg.head_dim, cfg.decoder_num_heads
    kv = cfg.decoder_num_kv_heads or h
    hidden = cfg.ffn_hidden(cfg.decoder_ffn_expansion)
    ffn = (3 if cfg.ffn == "swiglu" else 2) * 2 * d * hidden
    per_query = 2 * d * h * hd * 2 + ffn
    per_context = 2 * 2 * d * kv * hd
    cross = 2 * 2 * h * hd * cross_pairs
    flops = cfg.decoder_depth * (queries * per_query + context * per_context + cross)
    if cfg.decoder == "v1":  # queries also self-attend
        flops += cfg.decoder_depth * (queries * 2 * 2 * d * kv * hd
                                      + 2 * 2 * h * hd * query_pairs)
    return flops + context * 2 * d * d  # encoder-to-decoder embedding of the context


def _heads_forward(cfg: ModelConfig, queries: float, kind: str) -> tuple[float, float]:
    """(trained, forward-only) FLOPs of the per-query heads: projection heads (online on
    the predictions, target on the targets) and the pixel head."""
    d, p = cfg.embed_dim, cfg.projection_dim
    proj = queries * 2 * (d * d + d * p)
    pixel = queries * 2 * d * cfg.pixel_channels * cfg.layout.base_patch_size ** 2
    if kind == "latent_predictor":
        return proj, proj
    if kind == "autoencoder":
        return pixel, 0.0
    return proj + pixel, proj  # dual_branch


def step_flops(cfg: ModelConfig, views: list[ViewCounts], masked: bool = True,
               kind: str = "latent_predictor") -> float:
    """Model FLOPs of one training step from per-view counts."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {MODEL_KINDS}")
    decoders = 2 if kind == "dual_branch" else 1
    total = 0.0
    for v in views:
        total += 3 * encoder_forward_counts(cfg, v.online)
        if kind != "autoencoder":
            total += encoder_forward_counts(cfg, v.target)
        if masked:
            total += 3 * decoders * decoder_forward_counts(cfg, v.queries, v.online.tokens,
                                                           v.cross_pairs, v.query_pairs)
            trained, forward = _heads_forward(cfg, v.queries, kind)
            total += 3 * trained + forward
    return total


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


def _stream(segment, values) -> StreamCounts:
    sizes = _segment_sizes(segment).astype(float)
    return StreamCounts(float(sizes.sum()), float(np.sum(sizes ** 2)), values)


def view_counts(cfg: ModelConfig, view) -> ViewCounts:
    """Real-token counts of one host (numpy) PackedView."""
    t = view.tokens
    return ViewCounts(
        target=_stream(t.segment, patch_values(cfg, t.group, t.segment)),
        online=_stream(view.online.segment, patch_values(cfg, t.group, t.segment,
                                                         view.online.src, view.online.segment)),
        queries=float((np.asarray(view.decoder.segment) >= 0).sum()),
        cross_pairs=float(_paired_sizes(view.decoder.segment, view.online.segment).sum()),
        query_pairs=float(np.sum(_segment_sizes(view.decoder.segment).astype(float) ** 2)))


def train_step_flops(cfg: ModelConfig, views: dict, masked: bool = True,
                     kind: str = "latent_predictor") -> float:
    """Model FLOPs of one training step over host (numpy) PackedViews (real tokens)."""
    return step_flops(cfg, [view_counts(cfg, v) for v in views.values()], masked, kind)


def plan_step_flops(cfg: ModelConfig, plan, num_views: int, masked: bool = True,
                    kind: str = "latent_predictor", padded: bool = False) -> float:
    """FLOPs of one step over the `plan.rows` rows of a packing plan (one host's batch).

    padded=False: the expectation over the plan's crop-size distribution of full rows of
    k(hw) samples at their token bounds (no absences), i.e. the real work of an average
    batch. padded=True: every slot of every row, dense attention over whole rows, every
    pixel-buffer slot embedded (what the fixed-shape program computes).
    """
    r = plan.rows
    caps = plan.caps
    widths = {g.key: cfg.layout.patch_dim(g) for g in cfg.layout.groups}
    if padded:
        buffer_values = r * sum(caps[k] * widths[k] for k in caps)
        lt, lo, ld = plan.row_length, plan.online_length, plan.decoder_length
        view = ViewCounts(
            target=StreamCounts(r * lt, r * lt * lt, buffer_values),
            online=StreamCounts(r * lo, r * lo * lo, buffer_values),
            queries=r * ld, cross_pairs=r * ld * lo, query_pairs=r * ld * ld)
        return step_flops(cfg, [view] * num_views, masked, kind)
    weights = dict(plan.hw_weights)
    total = 0.0
    for s in plan.shapes:
        samples = r * plan.k[s.hw_p]
        values = sum(widths[key] * n for key, n in s.group_tokens)
        type_tokens = len(cfg.layout.sensor_labels)
        visible_patches = max(s.max_visible - type_tokens, 0)
        online_values = values * visible_patches / max(s.tokens - type_tokens, 1)
        view = ViewCounts(
            target=StreamCounts(samples * s.tokens, samples * s.tokens ** 2, samples * values),
            online=StreamCounts(samples * s.max_visible, samples * s.max_visible ** 2,
                                samples * online_values),
            queries=samples * s.max_predicted,
            cross_pairs=samples * s.max_predicted * s.max_visible,
            query_pairs=samples * s.max_predicted ** 2)
        total += weights[s.hw_p] * step_flops(cfg, [view] * num_views, masked, kind)
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
