"""The bridge between SpaceNit-JAX and PyTorch: our PyTorch module (`torch_model`),
export (`export`) and import (`import_checkpoint`) of checkpoints in our safetensors
format and the original SpaceNit's, and a JAX-free loader (`load`).

`torch_bridge.load_torch_model(dir)` is exported lazily (PEP 562), so that importing
`torch_bridge.export` does not import torch, and loading an export needs no JAX.
"""

__all__ = ["load_torch_model", "read_source"]


def __getattr__(name):
    if name in __all__:
        from torch_bridge import load

        return getattr(load, name)
    raise AttributeError(f"module 'torch_bridge' has no attribute {name!r}")
