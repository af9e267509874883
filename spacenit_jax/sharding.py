"""Device mesh and logical-axis sharding rules, for parameters and activations.

Parameters carry logical axis names; one rules table maps them to the mesh axes
`data`, `fsdp` and `tensor`. A mesh axis that does not divide a dimension is dropped
for that dimension (the parameter is replicated along it) instead of failing, so odd
shapes such as per-sensor patch embeddings work on any mesh.

Activations are pinned the same way (`constrain`, MaxText-style): their batch axis stays
split over `data` x `fsdp` at the model's boundaries and inside every block. Without it,
once parameters are sharded over `fsdp` the partitioner may instead split activations
along their embedding axis to match the weights and gather the whole global batch on
every device (the FSDP fault: memory grew with the fsdp degree). With it, each weight
is all-gathered (and its gradient reduce-scattered) per layer, and activations never
leave their device.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # rows of a batch are split over both

DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"),
    ("embed2", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("proj", None),
    ("patch", None),
    ("layers", None),
)


# Logical activation axes -> mesh axes. "batch" is the row axis of every activation.
ACTIVATION_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
)


def mesh_shape(num_devices: int, data: int = -1, fsdp: int = 1, tensor: int = 1) -> tuple:
    """Resolve one -1 entry; check that the product equals the device count."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} "
                         f"tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh data={data} fsdp={fsdp} tensor={tensor} does not divide "
                             f"the {num_devices} available devices")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                         f"{int(np.prod(sizes))} devices, {num_devices} are available")
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(len(devices), data, fsdp, tensor)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    except (ValueError, NotImplementedError):
        # No subset of the physical axes has each mesh axis' size (e.g. fsdp=8 on the 4x4x4
        # torus of a v5p-128): split physical axes, as MaxText allows. Correct, but an axis
        # spread over parts of several torus dimensions has slower collectives.
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def spec_for(mesh: Mesh, logical: Sequence[str | None] | None, shape: Sequence[int],
             rules=DEFAULT_RULES) -> PartitionSpec:
    table = dict(rules)
    out, used = [], set()
    logical = tuple(logical or ())
    if len(logical) != len(shape):  # no (or stale) annotation: replicate
        return PartitionSpec()
    for name, dim in zip(logical, shape, strict=True):
        axis = table.get(name) if name is not None else None
        if axis is None or axis in used or dim % mesh.shape[axis]:
            out.append(None)
        else:
            out.append(axis)
            used.add(axis)
    return PartitionSpec(*out)


def state_shardings(mesh: Mesh, state, rules=DEFAULT_RULES):
    """NamedSharding for every leaf of an nnx.State (or a pytree of nnx Variables)."""
    from flax import nnx

    def one(var):
        if isinstance(var, nnx.Variable):
            axes = var.get_metadata().get("out_sharding")
            value = var.get_value()
            return var.replace(value=NamedSharding(mesh, spec_for(mesh, axes, value.shape, rules)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Rows (leading axis) over data x fsdp, everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def activation_spec(mesh, logical: Sequence[str | None], shape: Sequence[int],
                    rules=ACTIVATION_RULES) -> PartitionSpec:
    """PartitionSpec of an activation: mesh axes of size 1, axes missing from the mesh
    and axes that do not divide the dimension are left out."""
    table = dict(rules)
    auto = {a for a, t in zip(mesh.axis_names, mesh.axis_types, strict=True)
            if t == AxisType.Auto}  # explicit axes are the caller's business
    out, used = [], set()
    for name, dim in zip(logical, shape, strict=True):
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a in auto and mesh.shape[a] > 1 and a not in used)
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or dim % size:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes if len(axes) > 1 else axes[0])
    return PartitionSpec(*out)


def constrain(x, logical: Sequence[str | None]):
    """Pin activation x to its logical axes on the mesh being traced under; a no-op
    outside a mesh (single device, evaluation code called without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, activation_spec(mesh, logical, x.shape))
