"""Host data pipeline: H5 format, normalisation, crop, augment, mask, pack, Grain.

Everything here is numpy on the host. The device only ever sees `batch.PackedView`s of
fixed shapes (see `plan.PackingPlan` and `pipeline.make_pipeline`).

Modules, one job each, in the order a sample goes through them:
  h5/        the H5 format: layout (names, schema), write (writer), read (H5Source)
  synthetic  generated datasets written with h5.write
  budget     token arithmetic: token grids, token budget -> timesteps, per-crop counts
  crop       which crop sizes fit a tile, which window of a sample is read
  value_ranges  plausible stored values per sensor (corrupt samples, pixel dtypes)
  normalize  per-band normalisation with the original's statistics
  augment    dihedral / CutMix / sensor dropout on per-sample arrays
  masking    masking strategies and per-sample token states
  tokenize   one masked sample -> patches, token ids, month features
  plan       the packing plan: rows, stream lengths, samples per row per crop size
  packing    prepared samples -> one fixed-shape PackedView
  pipeline   the Grain pipeline: batch index -> this host's packed batch
  shared_memory  Grain worker shared memory released deterministically
`PipelineConfig` and `make_pipeline` are re-exported lazily so that importing e.g.
`spacenit_jax.data.h5` does not import Grain.
"""

__all__ = ["PipelineConfig", "make_pipeline"]


def __getattr__(name):
    if name in __all__:
        from spacenit_jax.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'spacenit_jax.data' has no attribute {name!r}")
