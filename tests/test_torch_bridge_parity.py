"""Float32 parity of the JAX model and our PyTorch module on exported weights, per preset.

Every weight is randomised (norm scales and biases included) in JAX, exported with
torch_bridge and loaded strictly into torch_model. Inputs: three sensors (Sentinel-2 with
three spectral groups, Sentinel-1, both T = 2, and SRTM without time; the design card also
naip_10, stored 4x finer), months, patch sizes 1, 2, 4 and 8, and a visibility mask with
equal per-sample counts of every state (where the original's gathers and our masks agree;
v1 gets the same mask as index sets). Compared: the unmasked and the masked online
encoder, the decoder's outputs at the PREDICTED positions, the target encoder there and
both projection heads (the LatentPredictor's own composition is covered by the golden
tests in test_model.py and test_torch_bridge.py).

To compile once per preset, the host cuts every case's tokens with the numpy tokenizer
(the functions the image-level entry point runs) and pads them to one shape; the JAX
encoder and decoder are then called at the token level, as pretraining calls them.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from spacenit_jax.batch import SubStream, TokenStream, embed_table_offsets  # noqa: E402
from spacenit_jax.model import models  # noqa: E402
from spacenit_jax.model import state_dict as sdm  # noqa: E402
from spacenit_jax.model.config import make_config  # noqa: E402
from spacenit_jax.model.encoder import image_tokens  # noqa: E402
from torch_bridge import export as ex  # noqa: E402
from torch_bridge import import_checkpoint as im  # noqa: E402
from torch_bridge import torch_model as tm  # noqa: E402

TOL = 1e-5
PATCH_SIZES = (1, 2, 4, 8)
PRESETS = ("design_card", "reference_head", "reference_v1")
MONTHS = np.array([[3, 4], [11, 0]])
PAD = dict(embed_index=0, sensor=0, group=-1, row=-1, col=-1, time=-1, month=0.0,
           pos_scale=1.0, segment=-1)
VIS, TGT, PRED, ABS = models.VISIBLE, models.TARGET_ONLY, models.PREDICTED, models.ABSENT


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_flat(cfg, kind, seed):
    """Random values for every parameter, from shapes only (no eager init): Dense kernels
    ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.2^2), biases N(0, 0.2^2), embeddings and
    tokens N(0, 0.5^2), so that every parameter matters."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in im.param_shapes(cfg, kind).items():
        shape, name = leaf.shape, path[-1]
        if name == "kernel":
            v = rng.normal(size=shape) / np.sqrt(shape[0])
        elif name == "scale":
            v = 1.0 + 0.2 * rng.normal(size=shape)
        elif name == "bias":
            v = 0.2 * rng.normal(size=shape)
        else:
            v = 0.5 * rng.normal(size=shape)
        out[path] = v.astype(np.float32)
    return out


def equal_count_mask(n, b, type_pos, seed, absent):
    """Per sample: type tokens and 2/5 of the rest VISIBLE, 2/5 PREDICTED, 2 ABSENT (if
    asked), the rest TARGET_ONLY; the same counts in every sample."""
    rng = np.random.default_rng(seed)
    free = np.setdiff1d(np.arange(n), type_pos)
    nv = npred = 2 * len(free) // 5
    mask = np.full((b, n), TGT, np.int64)
    for i in range(b):
        perm = rng.permutation(free)
        mask[i, perm[:nv]] = VIS
        mask[i, perm[nv:nv + npred]] = PRED
        mask[i, perm[nv + npred:nv + npred + (2 if absent else 0)]] = ABS
        mask[i, type_pos] = VIS
    return mask


def _pad(a, n, axis, value):
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, n - a.shape[axis])
    return np.pad(np.asarray(a), widths, constant_values=value)


def padded_streams(cfg, images, mask, p, gsd, v1, caps, n_all, n_pred):
    """The token streams of one batch (one sample per row, as models.view_from_images),
    built on the host and padded to fixed capacities and lengths:
    (patches, every: all tokens, target: what the target encoder sees, online: VISIBLE
    tokens, query: PREDICTED tokens), each stream a TokenStream whose padding has
    segment -1."""
    patches, s = image_tokens(cfg, images, patch_size=p, months=MONTHS, gsd=gsd, xp=np)
    old, old_type = embed_table_offsets(cfg.layout, {k: v.shape[1] for k, v in patches.items()})
    new, new_type = embed_table_offsets(cfg.layout, caps)
    shift = np.array([new[g.key] - old[g.key] for g in cfg.layout.groups])
    index = np.where(s.group >= 0, s.embed_index + shift[np.maximum(s.group, 0)],
                     s.embed_index - old_type + new_type)
    every = s._replace(embed_index=index)
    every = TokenStream(**{f: _pad(getattr(every, f), n_all, 1, PAD[f]) for f in PAD})

    def select(sel, n):
        src = np.stack([np.flatnonzero(r) for r in sel]).astype(np.int32)
        sub = SubStream(_pad(src, n, 1, 0), _pad(np.zeros_like(src), n, 1, -1))
        return every.select(sub, np)

    # the target encoder's tokens stay at their positions, ABSENT ones become padding
    target = every if v1 else every._replace(
        segment=_pad(np.where(mask != ABS, 0, -1), n_all, 1, -1).astype(np.int32))
    patches = {k: _pad(v, caps[k], 1, 0.0) for k, v in patches.items()}
    streams = (every, target, select(mask == VIS, n_all), select(mask == PRED, n_pred))
    return jax.tree.map(jnp.asarray, (patches, *streams))


def make_inputs(labels, p, large=False):
    """B = 2; a 4x6 patch grid (2x3 at P = 8), or for `large` a 64x2 grid of SRTM."""
    rng = np.random.default_rng(p + 10 * large)
    h, w = (16, 24) if p >= 4 else (4 * p, 6 * p)
    x = {"sentinel2_l2a": rng.normal(size=(2, 12, h, w, 2)),
         "sentinel1": rng.normal(size=(2, 2, h, w, 2)),
         "srtm": rng.normal(size=(2, 1, 64 * p, 2 * p) if large else (2, 1, h, w))}
    if "naip_10" in labels:
        x["naip_10"] = rng.normal(size=(2, 4, 4 * h, 4 * w))
    return {k: v.astype(np.float32) for k, v in x.items()}


def torch_forward(module, x, mask, p, gsd, v1):
    months = torch.from_numpy(MONTHS)
    kw = dict(patch_size=p, month_indices=months, gsd=gsd)
    with torch.no_grad():
        if v1:
            vis = torch.from_numpy(np.stack([np.flatnonzero(r == VIS) for r in mask]))
            tgt = torch.from_numpy(np.stack([np.flatnonzero(r == PRED) for r in mask]))
            out = module(x, visible_indices=vis, target_indices=tgt, **kw)
        else:
            vis = tm._padded_indices(torch.from_numpy(mask) == VIS)
            out = module(x, visibility_mask=torch.from_numpy(mask), **kw)
        out = {k: v.numpy() for k, v in out.items()}
        out["encoder"] = module.encoder(x, **kw)[0].numpy()
        out["encoder_masked"] = module.encoder(x, mask_indices=vis, **kw)[0].numpy()
    return out


def models_for(preset, labels):
    extra = dict(num_kv_heads=1, decoder_num_kv_heads=1) if preset == "design_card" else {}
    cfg = make_config(preset, "nano", sensor_labels=labels, embed_dim=64, depth=2, num_heads=2,
                      decoder_depth=1, decoder_num_heads=2, drop_path=0.0, projection_dim=24,
                      **extra)
    flat = random_flat(cfg, "latent_predictor", seed=PRESETS.index(preset))
    jax_model = nnx.eval_shape(lambda: models.build_model(cfg, "latent_predictor"))
    sdm.load_flat(jax_model, flat)
    sd, _ = ex.torch_state_dict(cfg, "latent_predictor", flat, step=3)
    module = tm.build_model(cfg, "latent_predictor")
    module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return cfg, jax_model, module.eval()


@pytest.mark.parametrize("preset", PRESETS)
def test_parity_jax_vs_torch(preset):
    """Patch sizes 1, 2, 4, 8 (gsd: the preset's default), then P = 8 with gsd 30 m on a
    64-row grid: RoPE angles up to ~1500 rad with head dim 32 (frequencies that float32
    rounds differently depending on how they are computed)."""
    labels = ("sentinel2_l2a", "sentinel1", "srtm")
    if preset == "design_card":
        labels += ("naip_10",)
    cfg, jax_model, module = models_for(preset, labels)
    v1 = preset == "reference_v1"
    cases = []
    for p, gsd in [(p, None) for p in PATCH_SIZES] + [(8, 30.0)]:
        x = make_inputs(labels, p, large=gsd is not None)
        xt = {k: torch.from_numpy(v) for k, v in x.items()}
        ids = module.encoder.token_ids(xt, p, gsd)
        type_pos = np.flatnonzero(ids.row.numpy() == -1)
        mask = equal_count_mask(ids.sensor.shape[0], 2, type_pos, p, absent=not v1)
        images = {k: np.moveaxis(v, 1, -1) for k, v in x.items()}
        caps = {k: v.shape[1] for k, v in image_tokens(cfg, images, patch_size=p, xp=np)[0].items()}
        cases.append((p, gsd, xt, images, mask, caps))
    caps = {k: max(c[5][k] for c in cases) for k in cases[0][5]}
    n_all = max(c[4].shape[1] for c in cases)
    n_pred = max(int((c[4] == PRED).sum(1).max()) for c in cases)
    # One compile each for all cases (fixed shapes); the online and the target encoder
    # share a graph, and so do the two projection heads.
    encode = nnx.jit(lambda enc, patches, stream: enc(patches, stream)[0])
    decode = nnx.jit(lambda dec, ctx, ctx_stream, query: dec(ctx, ctx_stream, query))
    project = nnx.jit(lambda head, x: head(x))
    m = jax_model
    report = {}
    for p, gsd, xt, images, mask, _ in cases:
        patches, every, target, online, query = padded_streams(
            cfg, images, mask, p, gsd, v1, caps, n_all, n_pred)
        encoded = encode(m.encoder, patches, online)
        decoded = decode(m.decoder, encoded, online, query)
        targets = encode(m.target_encoder, patches, target)
        n, n_vis, n_pred_b = mask.shape[1], (mask[0] == VIS).sum(), (mask[0] == PRED).sum()
        pred_pos = np.stack([np.flatnonzero(r == PRED) for r in mask])
        targets = np.take_along_axis(np.asarray(targets), pred_pos[..., None], axis=1)
        got = {"encoder": np.asarray(encode(m.encoder, patches, every))[:, :n],
               "encoder_masked": np.asarray(encoded)[:, :n_vis],
               "predictions": np.asarray(decoded)[:, :n_pred_b], "targets": targets}
        got["online_proj"] = np.asarray(project(m.online_proj, got["predictions"]))
        got["target_proj"] = np.asarray(project(m.target_proj, targets))
        ref = torch_forward(module, xt, mask, p, gsd, v1)
        diff = {k: float(np.abs(v - ref[k]).max()) for k, v in got.items()}
        name = f"P={p}" + ("" if gsd is None else f", gsd={gsd:g}, 64-row grid")
        report[name] = diff
        assert max(diff.values()) <= TOL, (preset, name, diff)
    print(f"\n{preset} max |JAX - torch|:")
    for name, diff in report.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()))
