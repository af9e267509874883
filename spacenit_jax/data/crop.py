"""The spatio-temporal crop of one sample: which crop sizes fit, which window is read.

A crop is hw_p x hw_p patches of patch_size base-grid (10 m) pixels and T_out timesteps
(`budget.timesteps_for_budget`). The window is chosen from the sample's header only, so
the reader decodes just the pixels it needs.

Deliberate differences from the original:
- randomness comes from the record's own numpy Generator (seeded per record by the
  pipeline); the original draws from the process-global NumPy RNG, unseeded per item,
  so its crops cannot be reproduced or resumed;
- the crop sizes offered for a patch size are those that fit the *stored* tile
  (hw_p * patch_size <= tile edge in 10 m pixels), not the nominal 256-pixel tile: the
  original would fail on 64- or 128-pixel subtiles with large crops. `allowed_hw`
  applies this rule; the pipeline draws hw_p among the allowed values only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spacenit_jax.data.budget import max_hw_for_budget
from spacenit_jax.data.h5 import CropWindow, H5FormatError, SampleHeader
from spacenit_jax.tokenization import TokenLayout


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
    """Start timestep of a t_out-step crop, uniform among the valid starts.

    Without masks any start in [0, current_length - t_out] is valid; with masks, only
    timesteps where some sensor has data (the original's rule), so a crop never starts
    on a step that no sensor stored.
    """
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
