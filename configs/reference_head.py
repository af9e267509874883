"""The latest original SpaceNit (pre-norm LayerNorm, GELU, biases, DropPath, P0 = 8) and
its official recipe: two masked views, patch discrimination + 0.1 x InfoNCE, frozen
EMA target. Arg: size=nano|tiny|base|large, smoke; e.g. configs/reference_head.py:size=nano,smoke
"""

from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, size="nano", smoke=False)
    return common.base_config("reference_head", a.size, a.smoke, objective="mim")
