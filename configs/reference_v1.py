"""The v1 original SpaceNit (post-norm RMSNorm, SwiGLU, no biases, P0 = 16, one token
group per sensor) and its recipe: contrastive learning between the online encoder and
the EMA target (0.996 -> 1.0) on the same unmasked view (temperature 0.07, uniformity
0.01). Arg: size=nano|tiny|base|large, smoke.
"""

from ml_collections import ConfigDict

from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, size="nano", smoke=False)
    c = common.base_config("reference_v1", a.size, a.smoke, objective="contrastive")
    c.objective.contrastive_temperature = 0.07
    c.objective.uniformity_weight = 0.01
    c.data.masking = ConfigDict({"type": "none"})
    c.data.patch_sizes = tuple(p for p in c.data.patch_sizes if p <= 16)
    return c
