"""The fixed-shape token batch the device sees (host pipeline -> model contract).

Every shape here depends only on the run's configuration, never on the patch size or
crop size of a batch, so the train step compiles once.

A *row* holds the tokens of one or more samples; `segment` says which sample (slot
0..K-1 within the row) a token belongs to, -1 marks padding. Attention, pooling and
losses never cross segments. A *view* has three aligned token streams (the same samples
in the same rows; README "Design", token-budgeted packing):

  tokens   every non-ABSENT token with its pixels (what the target encoder sees);
  online   VISIBLE tokens (what the online encoder sees), as indices into `tokens`;
  decoder  PREDICTED tokens (the decoder's queries), as indices into `tokens`.

Pixels live in per-row, per-spectral-group buffers of exact width C_g*P0*P0;
`tokens.embed_index` points into the row's embedding table, which is the concatenation
of every group's buffer (in TokenLayout group order, capacity rows each) followed by one
row per configured sensor for the sensor-type tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from spacenit_jax.tokenization import TokenLayout

Array = Any  # numpy on the host, jax on the device


class TokenStream(NamedTuple):
    """Per-token ids; every field (R, L) except month (R, L, 2)."""

    embed_index: Array  # int32 row-local index into the embedding table (see module doc)
    sensor: Array  # int32 sensor id (position in TokenLayout.sensor_labels)
    group: Array  # int32 TokenLayout group index, -1 for sensor-type tokens
    row: Array  # int32 patch row, -1 for type tokens
    col: Array  # int32 patch column, -1 for type tokens
    time: Array  # int32 timestep, -1 for type tokens and non-temporal sensors
    month: Array  # float32 (sin, cos) month features (zeros: no month signal)
    pos_scale: Array  # float32 position multiplier (TokenLayout.pos_scale)
    segment: Array  # int32 sample slot within the row, -1 for padding

    def select(self, sub: SubStream, xp=np) -> TokenStream:
        """The tokens of a sub-stream (indices into this stream's rows)."""

        def take(a):
            idx = sub.src if a.ndim == 2 else sub.src[..., None]
            return xp.take_along_axis(a, idx, axis=1)

        fields = {k: take(v) for k, v in self._asdict().items() if k != "segment"}
        return TokenStream(**fields, segment=sub.segment)


class SubStream(NamedTuple):
    src: Array  # int32 (R, L') index into the same row of the view's TokenStream
    segment: Array  # int32 (R, L') sample slot, -1 for padding


class PackedView(NamedTuple):
    patches: Mapping[str, Array]  # group key -> (R, capacity_g, C_g*P0*P0)
    tokens: TokenStream
    online: SubStream
    decoder: SubStream
    sample_valid: Array  # bool (R, K): which sample slots of each row hold a sample


def embed_table_offsets(layout: TokenLayout, capacities: Mapping[str, int]):
    """Offset of each present group's rows, and of the type-token rows, in the table."""
    offsets, start = {}, 0
    for grp in layout.groups:
        if grp.key in capacities:
            offsets[grp.key] = start
            start += int(capacities[grp.key])
    return offsets, start
