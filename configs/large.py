"""Design-card SpaceNit-JAX, large: pre-norm RMSNorm, SwiGLU, GQA, per-sensor GSD RoPE.

Official two-view latent MIM recipe. Arg: "smoke" shrinks everything for a CPU test,
e.g. --config configs/large.py:smoke
"""

from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, smoke=False)
    return common.base_config("design_card", "large", a.smoke, objective="mim")
