"""Design-card SpaceNit-JAX, base: pre-norm RMSNorm, SwiGLU, GQA, per-sensor GSD RoPE.

Official two-view latent MIM recipe. Arg: "smoke" shrinks everything for a CPU test,
e.g. --config configs/base.py:smoke
"""

from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, smoke=False)
    return common.base_config("design_card", "base", a.smoke, objective="mim")
