"""Host-side tokenization and packing of samples into fixed-shape `batch.PackedView`s.

Row structure (DESIGN.md "The data path"): a batch with crop size hw_p holds
k(hw_p) samples per row and R rows. All samples of such a batch have the same token
count without absences, n(hw_p) = the spec §4.4 table + one type token per sensor, and
the masking strategy bounds how many of them are VISIBLE (v) or PREDICTED (d). So

    k(hw) = min(L_t // n(hw), L_o // v(hw), L_d // d(hw))

guarantees that every sample fits every stream, whatever its absences (ABSENT tokens
are removed from all three streams; they can only make a sample smaller). Because k is
a deterministic function of hw_p, each batch can be produced independently (in Grain
worker processes) with a known number of samples.

`PackingPlan.build` takes L_t (the tokens-stream row length) and R as given and picks
L_o and L_d to maximise the useful fraction of the padded compute over the hw_p
distribution, each stream weighted by its cost per token slot (tokens stream 1: the
target encoder runs forward only; online and decoder 3: forward + backward):

    efficiency = E_hw[k(hw) (c_t n + c_o v + c_d d)] / (c_t L_t + c_o L_o + c_d L_d)

The search is exhaustive over the breakpoints k * v(hw) (resp. k * d(hw)). Per-group
pixel capacities are the largest per-row token count of that group over hw_p.

Choosing L_t. Longer rows pack more samples and pad less (the larger samples of the
spec table, ~1700-2200 tokens, leave up to 25% of a 2250-token row empty when one
sample fits, but pair up in 2 x 2187 = 4374), but dense attention with a segment mask
costs O(L_t^2) per row, i.e. O(L_t) per token; block-diagonal (segment-aware) kernels
pay only for real pairs. `suggest_row_length` scans candidates and reports both. Nano
sensors, official masking, hw_p uniform on 1..12, no absences (expected padding):

    L_t    L_o   L_d   tokens  online  decoder  all slots  dense attention / token
    2192   1024  1416  13.1%   20.0%   23.3%    17.7%      0.97 x budget
    4376   2072  2512  14.1%   21.0%   15.5%    16.1%      1.9 x
    6568   3064  3768  12.1%   18.2%   13.4%    13.9%      2.9 x
    8800   4144  4760  12.8%   19.1%    9.3%    13.4%      3.9 x

With dense attention the smallest row that holds the largest sample (2192 here, the
pipeline's default) is cheapest overall: per-token attention, not padding, dominates.
The padding that remains comes from two sources no row length removes: k(hw) is an
integer (hw_p = 4: 1257 tokens, one per 2192-row), and the VISIBLE / PREDICTED split
varies with hw_p (decode-only map sensors are ~95% PREDICTED; their share grows as
T_out shrinks), while L_o and L_d are fixed. `PackingPlan.padding_floor` bounds the
second: even unbounded rows pad >= 8.1% of all slots here (44000-token rows: 9.5%).
ABSENT tokens add to it on real data.

With no masking (objectives without masks) the online stream is the tokens stream
(L_o = L_t, src = arange) and the decoder stream has length 1, all padding.

Padding tokens have segment -1 and every other field 0 (so indices are always in
range); sub-stream padding has src 0 and segment -1.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.batch import PackedView, SubStream, TokenStream, embed_table_offsets
from spacenit_jax.data import crop
from spacenit_jax.data.masking import (
    ABSENT,
    PREDICTED,
    VISIBLE,
    Geometry,
    SensorMask,
    Strategy,
    visibility_vector,
)
from spacenit_jax.sensors import SensorKind
from spacenit_jax.tokenization import (
    SampleTokens,
    SensorGrid,
    TokenLayout,
    month_sincos,
    sample_tokens,
    sensor_patches,
)

STREAM_COSTS = (1.0, 3.0, 3.0)  # tokens (forward), online and decoder (forward+backward)


def align_up(x: int, a: int) -> int:
    return int(-(-int(x) // a) * a) if a > 1 else int(x)


def hw_geometries(layout: TokenLayout, hw: int, t_out: int) -> dict[str, Geometry]:
    out = {}
    for label in layout.sensor_labels:
        kind = sensors.get(label).kind
        t = t_out if kind == SensorKind.SPACE_TIME else 1
        out[label] = Geometry(t, len(layout.sensor_groups(label)), hw, hw)
    return out


@dataclasses.dataclass(frozen=True)
class HwShape:
    """Token counts of one sample at crop size hw_p, without absences."""

    hw_p: int
    t_out: int
    tokens: int  # patch + type tokens
    group_tokens: tuple[tuple[str, int], ...]  # (group key, patch tokens)
    max_visible: int  # incl. type tokens
    max_predicted: int


def hw_shape(layout: TokenLayout, budget: int, hw: int, strategy: Strategy) -> HwShape:
    t_out = crop.timesteps_for_budget(layout, hw, budget)
    geos = hw_geometries(layout, hw, t_out)
    groups = tuple((grp.key, geos[grp.label].t * hw * hw) for grp in layout.groups)
    n = sum(c for _, c in groups) + len(layout.sensor_labels)
    v = d = 0
    for label, geo in geos.items():
        bv, bd = strategy.bounds(label, geo)
        v, d = v + bv + 1, d + bd
    if strategy.is_none:
        v, d = n, 0
    return HwShape(hw, t_out, n, groups, v, d)


@dataclasses.dataclass(frozen=True)
class PackingPlan:
    """Fixed row geometry of every batch of a run (see module docstring)."""

    rows: int  # R
    row_length: int  # L_t
    online_length: int  # L_o
    decoder_length: int  # L_d
    samples_per_row: tuple[tuple[int, int], ...]  # (hw_p, k)
    capacities: tuple[tuple[str, int], ...]  # (group key, pixel rows per row)
    shapes: tuple[HwShape, ...]
    masked: bool
    hw_weights: tuple[tuple[int, float], ...]
    stream_costs: tuple[float, float, float] = STREAM_COSTS

    @property
    def k(self) -> dict[int, int]:
        return dict(self.samples_per_row)

    @property
    def max_samples_per_row(self) -> int:  # K
        return max(k for _, k in self.samples_per_row)

    @property
    def caps(self) -> dict[str, int]:
        return dict(self.capacities)

    def shape(self, hw: int) -> HwShape:
        for s in self.shapes:
            if s.hw_p == hw:
                return s
        raise KeyError(f"crop size hw_p={hw} is not in the plan (planned: {sorted(self.k)})")

    def samples_per_batch(self, hw: int) -> int:
        if hw not in self.k:
            raise KeyError(f"crop size hw_p={hw} is not in the plan (planned: {sorted(self.k)})")
        return self.k[hw] * self.rows

    def efficiency(self) -> float:
        """Expected useful fraction of cost-weighted token slots (at the bounds)."""
        ct, co, cd = self.stream_costs
        w = dict(self.hw_weights)
        useful = sum(w[s.hw_p] * self.k[s.hw_p] * (ct * s.tokens + co * s.max_visible
                                                   + cd * s.max_predicted) for s in self.shapes)
        return useful / (ct * self.row_length + co * self.online_length + cd * self.decoder_length)

    def padding_floor(self, grid: int = 400) -> float:
        """Lower bound on the expected all-slots padding of ANY plan for these crop sizes
        (no absences): rows of unbounded length, fractional samples per row, the best
        stream-length ratios. What remains is the VISIBLE / PREDICTED split varying with
        hw_p while L_o : L_d : L_t is fixed. Grid search over the two ratios."""
        if not self.masked:
            return 0.0
        w = dict(self.hw_weights)
        wv = np.array([w[s.hw_p] for s in self.shapes])
        n, v, d = (np.array([getattr(s, f) for s in self.shapes], np.float64)
                   for f in ("tokens", "max_visible", "max_predicted"))
        a = np.linspace((v / n).min(), (v / n).max(), grid)[:, None, None]  # L_o / L_t
        b = np.linspace((d / n).min(), (d / n).max(), grid)[None, :, None]  # L_d / L_t
        k = np.minimum(np.minimum(1 / n, a / np.maximum(v, 1e-9)), b / np.maximum(d, 1e-9))
        real = (wv * k * (n + v + d)).sum(-1)
        return float(1 - (real / (1 + a[..., 0] + b[..., 0])).max())

    def report(self) -> dict:
        """Per hw_p: k, n, and padding per stream when no token is ABSENT."""
        per = {}
        for s in self.shapes:
            k = self.k[s.hw_p]
            per[s.hw_p] = {
                "k": k, "t_out": s.t_out, "tokens": s.tokens, "max_visible": s.max_visible,
                "max_predicted": s.max_predicted,
                "pad_tokens": round(1 - k * s.tokens / self.row_length, 4),
                "pad_online": round(1 - k * s.max_visible / self.online_length, 4),
                "pad_decoder": round(1 - k * s.max_predicted / self.decoder_length, 4),
            }
        w = dict(self.hw_weights)
        exp = {key: round(sum(w[h] * per[h][key] for h in per), 4)
               for key in ("pad_tokens", "pad_online", "pad_decoder")}
        slots = self.row_length + self.online_length + self.decoder_length
        real = sum(w[s.hw_p] * self.k[s.hw_p] * (s.tokens + s.max_visible + s.max_predicted)
                   for s in self.shapes)
        return {"rows": self.rows, "L_t": self.row_length, "L_o": self.online_length,
                "L_d": self.decoder_length, "K": self.max_samples_per_row,
                "caps": self.caps, "per_hw": per, "expected": {
                    **exp, "pad_overall": round(1 - real / slots, 4),
                    "pad_overall_floor_any_plan": round(self.padding_floor(), 4),
                    "cost_weighted_efficiency": round(self.efficiency(), 4)}}

    @staticmethod
    def build(layout: TokenLayout, budget: int, hw_list: Sequence[int], rows: int,
              row_length: int, strategy: Strategy,
              hw_weights: Mapping[int, float] | None = None,
              stream_costs: tuple[float, float, float] = STREAM_COSTS, align: int = 8,
              online_length: int | None = None, decoder_length: int | None = None
              ) -> PackingPlan:
        """Plan for the crop sizes `hw_list` (weights default uniform)."""
        hws = sorted({int(h) for h in hw_list})
        if not hws:
            raise ValueError("PackingPlan needs at least one crop size hw_p")
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        w = {h: 1.0 for h in hws} if hw_weights is None else {h: float(hw_weights.get(h, 0.0)) for h in hws}
        tot = sum(w.values())
        if tot <= 0:
            raise ValueError(f"hw weights {hw_weights} give no weight to {hws}")
        w = {h: x / tot for h, x in w.items()}
        shapes = [hw_shape(layout, budget, h, strategy) for h in hws]
        n = np.array([s.tokens for s in shapes])
        v = np.array([s.max_visible for s in shapes])
        d = np.array([s.max_predicted for s in shapes])
        too_big = [s.hw_p for s in shapes if s.tokens > row_length]
        if too_big:
            raise ValueError(
                f"row_length {row_length} is shorter than one sample at hw_p {too_big} "
                f"({[s.tokens for s in shapes if s.hw_p in too_big]} tokens); use at least {n.max()}")
        kt = row_length // n
        masked = not strategy.is_none
        ct, co, cd = stream_costs
        wv = np.array([w[h] for h in hws])
        if not masked:
            lo, ld = row_length, 1
            k = kt
        else:
            def candidates(per, given):
                if given is not None:
                    if given < per.max():
                        raise ValueError(f"stream length {given} < one sample's bound {per.max()}")
                    return np.array([given])
                if per.max() == 0:
                    return np.array([1])
                c = {align_up(kk * p, align) for p, km in zip(per, kt, strict=True) if p > 0
                     for kk in range(1, km + 1)}
                return np.array(sorted(x for x in c if x >= per.max()))

            co_ = candidates(v, online_length)
            cd_ = candidates(d, decoder_length)
            big = np.iinfo(np.int64).max // 4
            ko = np.where(v[None] > 0, co_[:, None] // np.maximum(v[None], 1), big)  # (A, H)
            kd = np.where(d[None] > 0, cd_[:, None] // np.maximum(d[None], 1), big)  # (B, H)
            kk = np.minimum(np.minimum(kt[None, None], ko[:, None]), kd[None, :])  # (A, B, H)
            useful = (kk * (ct * n + co * v + cd * d) * wv).sum(-1)
            cost = ct * row_length + co * co_[:, None] + cd * cd_[None, :]
            eff = np.where(kk.min(-1) >= 1, useful / cost, -1.0)
            a, b = np.unravel_index(np.argmax(eff), eff.shape)
            lo, ld = int(co_[a]), int(cd_[b])
            k = kk[a, b]
        caps = {}
        for grp in layout.groups:
            c = max(int(kh) * dict(s.group_tokens)[grp.key] for kh, s in zip(k, shapes, strict=True))
            caps[grp.key] = align_up(max(c, 1), align)
        return PackingPlan(rows, int(row_length), lo, ld,
                           tuple((s.hw_p, int(kh)) for s, kh in zip(shapes, k, strict=True)),
                           tuple(caps.items()), tuple(shapes), masked,
                           tuple(w.items()), tuple(float(c) for c in stream_costs))


def suggest_row_length(layout: TokenLayout, budget: int, hw_list: Sequence[int],
                       strategy: Strategy, candidates: Sequence[int],
                       hw_weights: Mapping[int, float] | None = None, align: int = 8
                       ) -> list[dict]:
    """For each candidate L_t: the plan's efficiency and per-token dense-attention cost."""
    out = []
    for lt in candidates:
        try:
            plan = PackingPlan.build(layout, budget, hw_list, 1, lt, strategy, hw_weights,
                                     align=align)
        except ValueError:
            continue
        rep = plan.report()
        out.append({"L_t": lt, "L_o": plan.online_length, "L_d": plan.decoder_length,
                    **rep["expected"], "attention_cost_per_token_vs_budget": round(lt / budget, 3)})
    return out


# --------------------------------------------------------------------------------------
# One sample -> tokens


class _MatmulNumpy:
    """numpy as the `xp` of tokenization.sensor_patches, with its resize einsums run as
    BLAS matmuls (numpy's einsum with "..." does not use BLAS: ~20x slower here).
    Same math; float32 round-off may differ in the last bits."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def einsum(spec, *ops):
        if spec == "...hwc,Hh->...Hwc":
            x, m = ops
            *lead, h, w, c = x.shape
            y = np.matmul(m, x.reshape(*lead, h, w * c))
            return y.reshape(*lead, m.shape[0], w, c)
        if spec == "...Hwc,Ww->...HWc":
            x, m = ops
            return np.matmul(m, x)
        if spec == "...cij,iI,jJ->...cIJ":  # weight mode: a^T x a per patch and channel
            x, a, b = ops
            *lead, p, q = x.shape
            y = (x.reshape(-1, q) @ b).reshape(-1, p, b.shape[1])  # (B, i, J)
            z = np.swapaxes(y, 1, 2).reshape(-1, p) @ a  # (B*J, I)
            z = np.swapaxes(z.reshape(-1, b.shape[1], a.shape[1]), 1, 2)  # (B, I, J)
            return z.reshape(*lead, a.shape[1], b.shape[1])
        return np.einsum(spec, *ops, optimize=True)


FAST_NP = _MatmulNumpy()


@functools.lru_cache(maxsize=256)
def _tokens(layout: TokenLayout, grids: tuple) -> SampleTokens:
    """sample_tokens, cached: every sample of a batch has the same grids."""
    ids = sample_tokens(layout, dict(grids))
    for a in ids:
        a.setflags(write=False)
    return ids


class PreparedSample(NamedTuple):
    """One masked sample as tokens in tokenizer order (type tokens included)."""

    patches: dict[str, np.ndarray]  # group key -> (T*Hp*Wp, C_g*P0*P0); absent sensors omitted
    ids: SampleTokens
    states: np.ndarray  # (N,) int8
    month: np.ndarray  # (N, 2) float32
    pos_scale: np.ndarray  # (N,) float32


def prepare_sample(layout: TokenLayout, arrays: Mapping[str, np.ndarray], patch_size: int,
                   months: np.ndarray | None, masks: Sequence[SensorMask],
                   dtype=np.float32) -> PreparedSample:
    """Cut patches (resized to P0), compute ids, month features and position scales.

    `masks` (from masking.mask_sample) give each sensor's geometry and states; the
    patches of a fully ABSENT sensor are not computed (none of its tokens is packed).
    """
    grids, patches = {}, {}
    by_label = {m.label: m for m in masks}
    for label in layout.sensor_labels:
        if label not in by_label:
            raise ValueError(f"sample has no mask for configured sensor {label!r}")
        m = by_label[label]
        temporal = sensors.get(label).kind == SensorKind.SPACE_TIME
        geo = m.geometry
        grids[label] = SensorGrid(geo.hp, geo.wp, geo.t, temporal)
        if m.type_state == ABSENT:
            continue
        pt, grid = sensor_patches(layout, label, arrays[label], patch_size, temporal, xp=FAST_NP)
        if grid != grids[label]:
            raise ValueError(f"sensor {label!r}: patch grid {grid} != mask geometry {geo}")
        for key, p in pt.items():
            patches[key] = p.astype(dtype, copy=False)
    ids = _tokens(layout, tuple(grids.items()))
    states = visibility_vector(masks)
    if states.shape[0] != ids.sensor.shape[0]:
        raise ValueError(f"visibility has {states.shape[0]} entries, tokens {ids.sensor.shape[0]}")
    month = np.asarray(month_sincos(months, ids.time), np.float32)
    scales = np.array([layout.pos_scale(lab, patch_size) for lab in layout.sensor_labels],
                      np.float32)
    return PreparedSample(patches, ids, states, month, scales[ids.sensor])


# --------------------------------------------------------------------------------------
# Samples -> one packed view


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
