"""SpaceNit-JAX: a multi-sensor geospatial foundation model in JAX/Flax.

    import spacenit_jax
    model = spacenit_jax.load("runs/nano")          # workdir, checkpoint step or export
    emb = model.encode({"sentinel2_l2a": s2}, bands={"sentinel2_l2a": names})

The public names are imported lazily (PEP 562), so `import spacenit_jax.sensors` (e.g.
from the PyTorch-only path) does not import JAX.
"""

_EXPORTS = {
    "load": "spacenit_jax.inference.api",
    "InferenceModel": "spacenit_jax.inference.api",
    "Encoded": "spacenit_jax.inference.api",
    "embed_scene": "spacenit_jax.inference.scene",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spacenit_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
