"""A self-contained PyTorch implementation of SpaceNit, built from a `ModelConfig`.

Our own PyTorch twin of the model, written from the facts of the original's behaviour
(no code of the original). It needs numpy, torch and this repository's numpy-only
modules (`spacenit_jax.sensors`, `spacenit_jax.tokenization`, `spacenit_jax.model.config`),
not JAX: a PyTorch user can load an export without JAX installed (`torch_bridge.load`).
It serves two purposes:

* for the reference presets (``config.preset`` in {"reference_head", "reference_v1"}) the
  module tree, state-dict keys, shapes and forward semantics are exactly those of the
  original (its latest revision and its "v1 freeze"), so the original's checkpoints and
  the golden vectors load with ``strict=True`` and reproduce to float32 round-off;
* for the design-card preset it is the PyTorch baseline of our JAX model.

The package mirrors spacenit_jax/model/, file against file:

==================  ======================================================================
attention.py        fused scaled dot-product attention, boolean masks
layers.py           norms, feed-forwards, grouped-query attention, DropPath, blocks, stack
positions.py        RoPE, the decoder's sin-cos encodings, the cyclic month embedding
encoder.py          input checks, patch embeddings, tokenizer, encoder
decoder.py          the latest original's cross-attention decoder, the v1 decoder
heads.py            projection, pixel and pooling heads, masked mean
models.py           LatentPredictor, AutoEncoder, DualBranch, SpatioTemporalEncoder
reference_quirks.py the original's index arithmetic that the JAX model replaces by masks
==================  ======================================================================

Design-card key naming (pre-norm, RMSNorm, SwiGLU, no bias, grouped-query attention): the
latest original's tree with the design card's modules::

    tokenizer.patch_embeds.<label>[__g<i>].proj.{weight,bias}    (D, C_g*P0*P0), (D,)
    tokenizer.sensor_embed.embedding.weight                      (S, D)
    tokenizer.sensor_type_tokens.<label>                         (1, 1, D)
    month_embed.proj.weight                                      (D, 2)
    transformer.layers.{i}.norm1.weight                          (D,)
    transformer.layers.{i}.attn.q_proj.weight                    (nh*hd, D)
    transformer.layers.{i}.attn.{k,v}_proj.weight                (nkv*hd, D)
    transformer.layers.{i}.attn.out_proj.weight                  (D, nh*hd)
    transformer.layers.{i}.norm2.weight                          (D,)
    transformer.layers.{i}.mlp.{gate,up}_proj.weight             (h, D)
    transformer.layers.{i}.mlp.down_proj.weight                  (D, h)
    norm.weight                                                  (D,)
    decoder: mask_token, input_norm.weight, encoder_to_decoder_embed.{weight,bias},
             month_embed.proj.weight, sensor_embed.embedding.weight,
             transformer.layers.{i}.<block keys as above>, norm.weight
    online_proj / target_proj: net.0.{weight,bias}, net.2.{weight,bias}

Rule for biases: ``config.bias`` applies to the transformer linears only; the "outer"
linears (patch embedding, ``encoder_to_decoder_embed``, projection and pixel heads) are
always biased (as in both revisions of the original); month embedding and pooling-head
attention are always bias-free.

Positions: each sensor's RoPE / decoder position multiplier is
``config.layout.pos_scale(label, patch_size, gsd)``. ``gsd=None`` (the default) means the
preset's default: the original's 10 m scalar for the reference presets (so the scale is
``P`` in the latest revision and ``1`` in v1) and each sensor's own metres per pixel for
the design card. For the reference presets a patch is ``P`` stored pixels for every
sensor (as in the original); the design card uses ``layout.patch_pixels`` (naip_10 is
stored 4x finer).

Where samples of a batch differ in their counts of VISIBLE / PREDICTED / ABSENT tokens,
this module follows the original's index arithmetic (see `reference_quirks`), our JAX
model explicit masks; with equal counts both agree. Only ``dropout == 0`` is supported.
"""

from spacenit_jax.tokenization import TokenState
from torch_bridge.torch_model import reference_quirks
from torch_bridge.torch_model.attention import dot_product_attention
from torch_bridge.torch_model.decoder import Decoder, V1Decoder, make_decoder
from torch_bridge.torch_model.encoder import (
    AdaptivePatchEmbed,
    Encoder,
    MultiSensorTokenizer,
    SensorEmbed,
    TokenIds,
    check_sensor_input,
    check_sensor_label,
)
from torch_bridge.torch_model.heads import PixelHead, PoolingHead, ProjectionHead, masked_mean
from torch_bridge.torch_model.layers import (
    DropPath,
    GroupedQueryAttention,
    LayerNorm,
    Mlp,
    RMSNorm,
    SwiGLU,
    TransformerBlock,
    TransformerStack,
    V1TransformerBlock,
    gather_tokens,
    make_block,
    scatter_tokens,
)
from torch_bridge.torch_model.models import (
    MODELS,
    AutoEncoder,
    AxialAttentionBlock,
    DualBranch,
    LatentPredictor,
    SpatioTemporalEncoder,
    build_model,
    state_dict_shapes,
)
from torch_bridge.torch_model.positions import (
    CyclicMonthEmbed,
    SpatialRoPE,
    TemporalRoPE,
    apply_rope,
    sincos_1d,
)

# The original's names of the token states.
VISIBLE_ENCODER, TARGET_ONLY, PREDICTED, ABSENT = TokenState

# Short names kept for the tests and callers of the single-file module.
_padded_indices = reference_quirks.padded_indices
_predicted_positions = reference_quirks.predicted_positions
_gather_tokens = gather_tokens
_scatter_tokens = scatter_tokens

__all__ = [
    "ABSENT", "MODELS", "PREDICTED", "TARGET_ONLY", "VISIBLE_ENCODER",
    "AdaptivePatchEmbed", "AutoEncoder", "AxialAttentionBlock", "CyclicMonthEmbed",
    "Decoder", "DropPath", "DualBranch", "Encoder", "GroupedQueryAttention",
    "LatentPredictor", "LayerNorm", "Mlp", "MultiSensorTokenizer", "PixelHead",
    "PoolingHead", "ProjectionHead", "RMSNorm", "SensorEmbed", "SpatialRoPE",
    "SpatioTemporalEncoder", "SwiGLU", "TemporalRoPE", "TokenIds", "TransformerBlock",
    "TransformerStack", "V1Decoder", "V1TransformerBlock", "apply_rope", "build_model",
    "check_sensor_input", "check_sensor_label", "dot_product_attention", "gather_tokens",
    "make_block", "make_decoder", "masked_mean", "reference_quirks", "scatter_tokens",
    "sincos_1d", "state_dict_shapes",
]  # fmt: skip
