"""Host data pipeline: H5 format, normalisation, crop, augment, mask, pack, Grain.

Everything here is numpy on the host. The device only ever sees `batch.PackedView`s of
fixed shapes (see `packing.PackingPlan` and `pipeline.make_pipeline`).

Modules: h5 (format, writer, reader), synthetic (generated datasets), normalize, crop,
augment, masking, packing, pipeline (Grain). `PipelineConfig` and `make_pipeline` are
re-exported lazily so that importing e.g. `spacenit_jax.data.h5` does not import Grain.
"""

__all__ = ["PipelineConfig", "make_pipeline"]


def __getattr__(name):
    if name in __all__:
        from spacenit_jax.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'spacenit_jax.data' has no attribute {name!r}")
