"""Inference on real imagery: the public encode API, GeoTIFF I/O, tiled scene inference,
embedding rasters / GeoParquet / quicklooks, and GeoTIFF -> H5 conversion.

    import spacenit_jax
    model = spacenit_jax.load("runs/nano")
    out = model.encode({"sentinel2_l2a": s2}, bands={"sentinel2_l2a": names})

Names are imported lazily (PEP 562), so importing this package costs nothing until used.
"""

_EXPORTS = {
    "load": "api", "InferenceModel": "api", "Encoded": "api", "Normalization": "api",
    "embed_scene": "scene", "SceneResult": "scene",
    "convert_folder": "convert", "convert_tiles": "convert",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
