"""Packing prepared samples into one fixed-shape `batch.PackedView`.

Sample j of a batch goes to row j // k, segment j % k (k = samples per row of the
batch's crop size in the `plan.PackingPlan`). Its non-ABSENT tokens are written, in
tokenizer order, to the tokens stream; its VISIBLE / PREDICTED tokens are referenced
(by position in the tokens stream) from the online / decoder sub-streams; its patches
go to the per-group patch tables that `embed_index` points into.

Padding tokens have segment -1 and every other field 0 (so indices are always in
range); sub-stream padding has src 0 and segment -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from spacenit_jax.batch import PackedView, SubStream, TokenStream, embed_table_offsets
from spacenit_jax.data.masking import ABSENT, PREDICTED, VISIBLE
from spacenit_jax.data.plan import PackingPlan
from spacenit_jax.data.tokenize import PreparedSample
from spacenit_jax.tokenization import TokenLayout


class PackStats(NamedTuple):
    num_samples: int
    real_tokens: int
    real_online: int
    real_decoder: int
    pad_tokens: float
    pad_online: float
    pad_decoder: float
    pad_overall: float


def empty_view(plan: PackingPlan, layout: TokenLayout, dtype=np.float32) -> PackedView:
    """An all-padding view with the plan's shapes."""
    r, lt = plan.rows, plan.row_length
    z = lambda length: np.zeros((r, length), np.int32)  # noqa: E731
    tokens = TokenStream(z(lt), z(lt), z(lt), z(lt), z(lt), z(lt),
                         np.zeros((r, lt, 2), np.float32), np.zeros((r, lt), np.float32),
                         np.full((r, lt), -1, np.int32))
    caps = plan.caps
    patches = {g.key: np.zeros((r, caps[g.key], layout.patch_dim(g)), dtype) for g in layout.groups}
    sub = lambda length: SubStream(z(length), np.full((r, length), -1, np.int32))  # noqa: E731
    return PackedView(patches, tokens, sub(plan.online_length), sub(plan.decoder_length),
                      np.zeros((r, plan.max_samples_per_row), bool))


def pack_view(plan: PackingPlan, layout: TokenLayout, samples: Sequence[PreparedSample],
              hw: int, dtype=np.float32) -> tuple[PackedView, PackStats]:
    """Sample j -> row j // k, segment j % k; ABSENT tokens dropped from every stream."""
    k = plan.samples_per_batch(hw) // plan.rows
    if len(samples) > k * plan.rows:
        raise ValueError(f"{len(samples)} samples do not fit {plan.rows} rows x {k} at hw_p={hw}")
    view = empty_view(plan, layout, dtype)
    tok, patches = view.tokens, view.patches
    caps = plan.caps
    offsets, type_offset = embed_table_offsets(layout, caps)
    keys = [g.key for g in layout.groups]
    cur_t = np.zeros(plan.rows, np.int64)
    cur_o = np.zeros(plan.rows, np.int64)
    cur_d = np.zeros(plan.rows, np.int64)
    cur_g = {key: np.zeros(plan.rows, np.int64) for key in keys}
    for j, s in enumerate(samples):
        r, seg = divmod(j, k)
        keep = np.flatnonzero(s.states != ABSENT)
        m = keep.size
        t0 = int(cur_t[r])
        if t0 + m > plan.row_length:
            raise AssertionError(f"plan violated: row {r} needs {t0 + m} > L_t {plan.row_length}")
        sl = slice(t0, t0 + m)
        ids = s.ids
        grp = ids.group[keep]
        tok.sensor[r, sl] = ids.sensor[keep]
        tok.group[r, sl] = grp
        tok.row[r, sl] = ids.row[keep]
        tok.col[r, sl] = ids.col[keep]
        tok.time[r, sl] = ids.time[keep]
        tok.month[r, sl] = s.month[keep]
        tok.pos_scale[r, sl] = s.pos_scale[keep]
        tok.segment[r, sl] = seg
        emb = np.where(grp < 0, type_offset + ids.sensor[keep], 0).astype(np.int32)
        pidx = ids.patch[keep]
        for gi in np.unique(grp[grp >= 0]):
            key = keys[gi]
            sel = np.flatnonzero(grp == gi)
            c0 = int(cur_g[key][r])
            c1 = c0 + sel.size
            if c1 > caps[key]:
                raise AssertionError(f"plan violated: group {key} row {r} needs {c1} > cap {caps[key]}")
            patches[key][r, c0:c1] = s.patches[key][pidx[sel]]
            emb[sel] = offsets[key] + np.arange(c0, c1)
            cur_g[key][r] = c1
        tok.embed_index[r, sl] = emb
        st = s.states[keep]
        if plan.masked:
            for states, sub, cur, length in ((VISIBLE, view.online, cur_o, plan.online_length),
                                             (PREDICTED, view.decoder, cur_d, plan.decoder_length)):
                idx = np.flatnonzero(st == states)
                c0 = int(cur[r])
                if c0 + idx.size > length:
                    raise AssertionError(f"plan violated: sub-stream row {r} needs "
                                         f"{c0 + idx.size} > {length}")
                sub.src[r, c0:c0 + idx.size] = t0 + idx
                sub.segment[r, c0:c0 + idx.size] = seg
                cur[r] = c0 + idx.size
        cur_t[r] = t0 + m
        view.sample_valid[r, seg] = True
    if not plan.masked:  # the online stream is the tokens stream
        ar = np.arange(plan.row_length, dtype=np.int32)[None]
        view.online.src[:] = np.where(tok.segment >= 0, ar, 0)
        view.online.segment[:] = tok.segment
        cur_o = cur_t.copy()
    rt, ro, rd = int(cur_t.sum()), int(cur_o.sum()), int(cur_d.sum())
    st_, so, sd = (plan.rows * x for x in (plan.row_length, plan.online_length, plan.decoder_length))
    stats = PackStats(len(samples), rt, ro, rd, 1 - rt / st_, 1 - ro / so, 1 - rd / sd,
                      1 - (rt + ro + rd) / (st_ + so + sd))
    return view, stats
