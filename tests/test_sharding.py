"""FSDP on the 8 CPU devices: the compiled train step all-gathers parameters, never the
batch's token activations; memory per device falls as the fsdp axis grows; parameters,
EMA target and optimizer moments are sharded over fsdp; activation specs."""

import re

import jax
import numpy as np
import pytest

from configs import nano
from launch import aot_compile
from spacenit_jax import sharding

SHAPE = re.compile(r"= \w+\[([0-9,]*)\][^ ]* all-gather\(")


def smoke_config(data, fsdp):
    c = nano.get_config("smoke")
    c.objective.name = "latent"  # one view: the same sharding, half the program to compile
    c.mesh.data, c.mesh.fsdp = data, fsdp
    return c


@pytest.fixture(scope="module")
def compiled():
    target = aot_compile.get_target("cpu")
    out = {}
    for data, fsdp in ((8, 1), (1, 8)):
        setup = aot_compile.build(smoke_config(data, fsdp), target)
        program, _ = aot_compile.compile_step(setup)
        out[fsdp] = (setup, program)
    return out


def gathered_shapes(hlo: str) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in m.split(",") if x) for m in SHAPE.findall(hlo)]


def test_fsdp_step_gathers_parameters_never_token_activations(compiled):
    setup, program = compiled[8]
    plan = setup.plan
    token_axes = {plan.row_length, plan.online_length, plan.decoder_length}
    shapes = gathered_shapes(program.as_text())
    param_shapes = {tuple(x.shape) for x in jax.tree.leaves(setup.abstract_state.params)}
    activations = [s for s in shapes if token_axes & set(s)]
    assert not activations, f"token activations gathered across devices: {activations}"
    gathered_params = [s for s in shapes if s in param_shapes]
    assert len(gathered_params) >= setup.model_cfg.depth, "FSDP should all-gather weights"
    # the batch stays split: rows per device in the program's batch parameters
    assert plan.rows % 8 == 0


def test_memory_per_device_falls_as_fsdp_grows(compiled):
    target = aot_compile.get_target("cpu")
    data_only = aot_compile.memory_report(compiled[1][1], target.hbm_bytes)
    fsdp = aot_compile.memory_report(compiled[8][1], target.hbm_bytes)
    assert fsdp["arguments_bytes"] < 0.5 * data_only["arguments_bytes"]  # state sharded 8 ways
    assert fsdp["total_bytes"] < data_only["total_bytes"]


def test_parameters_and_optimizer_state_are_sharded_over_fsdp(compiled):
    setup, _ = compiled[8]
    specs = jax.tree.leaves(jax.tree.map(lambda s: s.spec, setup.state_sharding),
                            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    sharded = [s for s in specs if "fsdp" in jax.tree.leaves(tuple(s))]
    params = setup.state_sharding.params
    kernel = params["encoder"]["blocks"]["layers"][0]["ffn"]["gate"]["kernel"]
    assert kernel.get_value().spec[0] == "fsdp"  # (embed, mlp) -> (fsdp, tensor)
    mu = setup.state_sharding.opt_state[1][0].mu["model"]["encoder"]["blocks"]["layers"][0]
    assert mu["ffn"]["gate"]["kernel"].get_value().spec == kernel.get_value().spec
    target = setup.state_sharding.params["target_encoder"]["blocks"]["layers"][0]
    assert target["ffn"]["gate"]["kernel"].get_value().spec == kernel.get_value().spec
    assert len(sharded) > len(specs) // 2


def test_activation_specs_follow_the_mesh():
    mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
    spec = sharding.activation_spec(mesh, ("batch", "length", "act_embed"), (8, 10, 64))
    assert spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
    # rows that the batch axes do not divide stay whole; size-1 axes are left out
    assert sharding.activation_spec(mesh, ("batch", None), (6, 3)) == jax.sharding.PartitionSpec(
        None, None)
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    spec = sharding.activation_spec(mesh, ("batch", "length", "act_heads", None), (8, 10, 4, 16))
    assert spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
    x = np.ones((8, 4), np.float32)
    assert sharding.constrain(x, ("batch", None)) is x  # no mesh: nothing to constrain
