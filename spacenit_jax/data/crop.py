"""Token budget -> number of timesteps, and the spatio-temporal crop (spec data §4.3-4.5).

T_out depends only on the crop size hw_p (patches a side) and the sensor set, so every
sample of a batch has the same token count (spec §4.4 table; type tokens not counted
by the budget, one per sensor added on top).

Deliberate differences from the original:
- randomness comes from the record's own numpy Generator (seeded per record by the
  pipeline), never from the process-global RNG (spec §13 quirk 7);
- the crop sizes offered for a patch size are those that fit the *stored* tile
  (hw_p * patch_size <= tile edge in 10 m pixels), not the nominal 256-pixel tile: the
  original would fail on 64- or 128-pixel subtiles with large crops. `allowed_hw`
  applies this rule; the pipeline draws hw_p among the allowed values only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.data.h5 import CropWindow, H5FormatError, SampleHeader
from spacenit_jax.sensors import MAX_TEMPORAL_DEPTH, SensorKind
from spacenit_jax.tokenization import TokenLayout


def group_counts(layout: TokenLayout) -> dict[str, int]:
    """Tokens per patch position per timestep for each configured sensor."""
    return {label: len(layout.sensor_groups(label)) for label in layout.sensor_labels}


def _per_step_fixed(layout: TokenLayout, hw_p: int) -> tuple[int, int]:
    per_step = fixed = 0
    for label, g in group_counts(layout).items():
        kind = sensors.get(label).kind
        if kind == SensorKind.SPACE_TIME:
            per_step += hw_p * hw_p * g
        elif kind == SensorKind.TIME:
            per_step += g
        elif kind == SensorKind.SPACE:
            fixed += hw_p * hw_p * g
        else:
            fixed += g
    return per_step, fixed


def timesteps_for_budget(layout: TokenLayout, hw_p: int, budget: int,
                         temporal_length: int = MAX_TEMPORAL_DEPTH) -> int:
    """T_out for crop size hw_p under a token budget (spec §4.4)."""
    if hw_p < 1:
        raise ValueError(f"hw_p must be >= 1, got {hw_p}")
    per_step, fixed = _per_step_fixed(layout, hw_p)
    if per_step == 0:
        return 1
    t_star = (budget - fixed) / per_step
    if t_star < 1:
        raise ValueError(
            f"token budget {budget} cannot hold one timestep of a {hw_p}x{hw_p}-patch crop of "
            f"{list(layout.sensor_labels)} ({fixed} fixed + {per_step} per timestep tokens)")
    return min(int(np.floor(t_star)), temporal_length)


def patch_tokens(layout: TokenLayout, hw_p: int, t_out: int) -> dict[str, int]:
    """Patch tokens per sensor for a crop (type tokens excluded)."""
    out = {}
    for label, g in group_counts(layout).items():
        kind = sensors.get(label).kind
        n = {SensorKind.SPACE_TIME: hw_p * hw_p * t_out, SensorKind.SPACE: hw_p * hw_p,
             SensorKind.TIME: t_out, SensorKind.CONSTANT: 1}[kind]
        out[label] = n * g
    return out


def token_count(layout: TokenLayout, hw_p: int, budget: int, type_tokens: bool = True) -> int:
    """Tokens of one sample without absences: patch tokens (+ one type token per sensor)."""
    t_out = timesteps_for_budget(layout, hw_p, budget)
    n = sum(patch_tokens(layout, hw_p, t_out).values())
    return n + (len(layout.sensor_labels) if type_tokens else 0)


def max_hw_for_budget(layout: TokenLayout, budget: int, limit: int = 4096) -> int:
    """Largest hw_p whose crop fits one timestep in the budget."""
    best = 0
    for hw in range(1, limit + 1):
        per_step, fixed = _per_step_fixed(layout, hw)
        if per_step and budget - fixed < per_step or not per_step and fixed > budget:
            break
        best = hw
    return best


def allowed_hw(hw_list: Sequence[int], patch_size: int, tile_size: int | None,
               layout: TokenLayout | None = None, budget: int | None = None) -> tuple[int, ...]:
    """Crop sizes usable with `patch_size` on tiles of `tile_size` base pixels."""
    out = []
    for hw in hw_list:
        if hw <= 0:
            continue
        if tile_size is not None and hw * patch_size > tile_size:
            continue
        if layout is not None and budget is not None and hw > max_hw_for_budget(layout, budget):
            continue
        out.append(int(hw))
    return tuple(out)


def choose_start_t(header: SampleHeader, t_out: int, rng: np.random.Generator) -> int:
    """Start timestep (spec §4.5): among timesteps where some masked sensor has data."""
    cur = header.current_length
    if cur <= t_out:
        return 0
    if not header.has_masks:
        return int(rng.integers(0, cur - t_out + 1))
    cand = set()
    for pos in header.positions.values():
        cand.update(int(t) for t in pos if 0 <= t and t + t_out <= cur)
    if not cand:
        raise H5FormatError(
            f"{header.path}: no sensor has data at a timestep that can start a {t_out}-step "
            f"crop within {cur} timesteps")
    cand_sorted = sorted(cand)
    return cand_sorted[int(rng.integers(0, len(cand_sorted)))]


def choose_window(header: SampleHeader, hw_p: int, patch_size: int, t_out: int,
                  rng: np.random.Generator, patchwise: bool = False) -> CropWindow:
    """Rectangular crop of hw_p*patch_size base pixels, or the patchwise mosaic variant."""
    size = hw_p * patch_size
    h, w = header.height, header.width
    if size > h or size > w:
        raise H5FormatError(
            f"{header.path}: a {hw_p}x{hw_p}-patch crop at patch size {patch_size} needs "
            f"{size}x{size} pixels, the sample has {h}x{w}")
    t0 = choose_start_t(header, t_out, rng)
    if not patchwise:
        r0 = int(rng.integers(0, h - size + 1))
        c0 = int(rng.integers(0, w - size + 1))
        return CropWindow(t0, t_out, np.arange(r0, r0 + size), np.arange(c0, c0 + size))
    # crop_patchwise: hw_p distinct patch rows / columns (unsorted), p x p blocks each.
    rp = rng.choice(h // patch_size, hw_p, replace=False)
    cp = rng.choice(w // patch_size, hw_p, replace=False)
    blk = np.arange(patch_size)
    rows = (rp[:, None] * patch_size + blk[None]).reshape(-1)
    cols = (cp[:, None] * patch_size + blk[None]).reshape(-1)
    return CropWindow(t0, t_out, rows, cols)


def token_table(layout: TokenLayout, budget: int, hw_list: Sequence[int]
                ) -> Mapping[int, tuple[int, int, int]]:
    """{hw_p: (T_out, patch tokens, patch + type tokens)} (spec §4.4 table)."""
    out = {}
    for hw in hw_list:
        t = timesteps_for_budget(layout, hw, budget)
        n = sum(patch_tokens(layout, hw, t).values())
        out[hw] = (t, n, n + len(layout.sensor_labels))
    return out
