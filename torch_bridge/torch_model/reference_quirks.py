"""Every behaviour of the original SpaceNit that this PyTorch twin reproduces although our
JAX model does it differently, in one place.

The JAX model handles any number of VISIBLE / PREDICTED / ABSENT tokens per sample with
explicit segment masks. The original gathers tokens as if every sample of a batch had the
same counts; this module reproduces its index arithmetic exactly, so that the original's
checkpoints and golden vectors reproduce to float32 round-off. Whenever every sample of a
batch has the same counts of each token state, both give the same numbers (tested in
tests/test_torch_bridge_parity.py).

Reproduced behaviours, and where they act:

1. Decoder query slots (`decoder_slots`, used by decoder.Decoder): the latest original's
   decoder sorts each sample's tokens PREDICTED first, then VISIBLE, then the rest, and
   takes the first max-over-the-batch PREDICTED count as queries. A sample with fewer
   PREDICTED tokens than the batch maximum fills its surplus query slots with its first
   VISIBLE (or inactive) tokens, which then leave its context.
2. PREDICTED positions (`predicted_positions`, used by models.*): the original collects
   the (sample, position) pairs of PREDICTED tokens and reshapes the positions to
   (B, -1), which assumes equal counts per sample: a reshape error or silently misaligned
   rows otherwise.
3. Index padding (`padded_indices`, used by models.LatentPredictor): the online (VISIBLE)
   and target (not ABSENT) index sets are padded to the batch maximum by repeating each
   sample's last index; the encoder gets no attention mask, so the duplicates take part in
   attention and in `encoder_pooled`.
4. Target encoder mode (models.LatentPredictor, models.DualBranch): the target encoder is
   a submodule, so it runs in the mode of the whole model; in training mode its DropPath
   is active. (The JAX model makes this a switch, `objective.target_train_mode`.)
5. One position scale per batch (`batch_gsd`, used by encoder and decoder): a tensor gsd
   (one value per sample) is reduced to its mean; every sample gets that one scale.
6. The spatio-temporal grid (`axial_grid_positions`, used by
   models.SpatioTemporalEncoder): the patch tokens, in the tokenizer's order
   (time, group, row, column per sensor), are reshaped to (H, W, T) as if they were
   row-major (H, W, T); this is only the real grid for one single-group sensor with T = 1.
"""

from __future__ import annotations

import torch

from spacenit_jax.tokenization import TokenState

VISIBLE, PREDICTED = TokenState.VISIBLE, TokenState.PREDICTED


def decoder_slots(vis: torch.Tensor) -> tuple[torch.Tensor, int, int, torch.Tensor]:
    """Behaviour 1. vis (B, N) token states -> (order (B, N), max_pred, max_vis, ctx_mask).

    `order` sorts each sample's tokens PREDICTED, VISIBLE, then the rest (stable); the
    first `max_pred` sorted tokens are the queries, the next `max_vis` the context, of
    which `ctx_mask` (B, 1, 1, max_vis) marks the VISIBLE ones as attendable.
    """
    n = vis.shape[1]
    active = (vis == VISIBLE) | (vis == PREDICTED)
    key = torch.where(active, vis, torch.full_like(vis, -1))
    max_pred = int((key == PREDICTED).sum(1).max()) if n else 0
    max_vis = int((key == VISIBLE).sum(1).max()) if n else 0
    skey, order = torch.sort(key, dim=1, descending=True, stable=True)
    ctx_mask = (skey[:, max_pred:max_pred + max_vis] == VISIBLE)[:, None, None, :]
    return order, max_pred, max_vis, ctx_mask


def predicted_positions(mask: torch.Tensor) -> torch.Tensor:
    """Behaviour 2. Positions of the PREDICTED tokens of mask (B, N) -> (B, n_pred) long:
    the (sample, position) pairs in row-major order, positions reshaped to (B, -1)."""
    return torch.nonzero(mask == PREDICTED)[:, 1].reshape(mask.shape[0], -1)


def padded_indices(select: torch.Tensor) -> torch.Tensor:
    """Behaviour 3. Ascending positions of True per row of select (B, N) bool, padded to
    the batch maximum by repeating the row's last one (an empty row stays all zeros)
    -> (B, n_max) long."""
    b = select.shape[0]
    counts = select.sum(1)
    n_max = int(counts.max()) if b else 0
    out = torch.zeros(b, n_max, dtype=torch.long, device=select.device)
    for i in range(b):
        idx = torch.nonzero(select[i]).squeeze(1)
        if idx.numel():
            out[i, : idx.numel()] = idx
            out[i, idx.numel():] = idx[-1]
    return out


def batch_gsd(gsd) -> float | None:
    """Behaviour 5. None, a number, or a tensor of per-sample gsd (metres) -> one float."""
    if gsd is None:
        return None
    if torch.is_tensor(gsd):
        return float(gsd.detach().float().mean())
    return float(gsd)


def axial_grid_positions(layout: list[tuple[str, int]], n: int, h: int, w: int, t: int,
                         device=None) -> torch.Tensor:
    """Behaviour 6. Positions of the patch tokens (every token but each sensor's leading
    type token; layout = [(label, token count)] in order) that are reshaped to (H, W, T).

    Raises ValueError if their number is not H * W * T.
    """
    keep = torch.ones(n, dtype=torch.bool, device=device)
    start = 0
    for _, count in layout:
        keep[start] = False
        start += count
    pos = torch.nonzero(keep).squeeze(1)
    if pos.numel() != h * w * t:
        raise ValueError(f"{pos.numel()} patch tokens do not form an H*W*T = "
                         f"{h}*{w}*{t} grid")
    return pos
