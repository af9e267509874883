"""The packing plan: fixed row geometry of every batch of a run.

Row structure (README "Design", token-budgeted packing): a batch with crop size hw_p holds
k(hw_p) samples per row and R rows. All samples of such a batch have the same token
count without missing data, n(hw_p) (`budget.hw_shape`: patch tokens + one type token
per sensor), and the masking strategy bounds how many of them are VISIBLE (v) or
PREDICTED (d). So

    k(hw) = min(L_t // n(hw), L_o // v(hw), L_d // d(hw))

guarantees that every sample fits every stream, whatever its missing data (ABSENT
tokens are removed from all three streams; they can only make a sample smaller).
Because k is a deterministic function of hw_p, each batch can be produced independently
(in Grain worker processes) with a known number of samples.

`PackingPlan.build` takes L_t (the tokens-stream row length) and R as given and picks
L_o and L_d to maximise the useful fraction of the padded compute over the hw_p
distribution, each stream weighted by its cost per token slot (tokens stream 1: the
target encoder runs forward only; online and decoder 3: forward + backward):

    efficiency = E_hw[k(hw) (c_t n + c_o v + c_d d)] / (c_t L_t + c_o L_o + c_d L_d)

The search is exhaustive over the breakpoints k * v(hw) (resp. k * d(hw)). Per-group
pixel capacities are the largest per-row token count of that group over hw_p.

Choosing L_t. Longer rows pack more samples and pad less (the larger samples of the
nano token table, ~1700-2200 tokens, leave up to 25% of a 2250-token row empty when one
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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from spacenit_jax.data.budget import Bounded, HwShape, hw_shape
from spacenit_jax.tokenization import TokenLayout

STREAM_COSTS = (1.0, 3.0, 3.0)  # tokens (forward), online and decoder (forward+backward)


def align_up(x: int, a: int) -> int:
    return int(-(-int(x) // a) * a) if a > 1 else int(x)



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
              row_length: int, strategy: Bounded,
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
                       strategy: Bounded, candidates: Sequence[int],
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

