"""The Flax model: reference parity, parameter counts, positions, packing, sharding, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spacenit_jax import sensors
from spacenit_jax.batch import PackedView, SubStream, TokenStream, embed_table_offsets
from spacenit_jax.model import layers, models, positions
from spacenit_jax.model import state_dict as sdm
from spacenit_jax.model.attention import Segments
from spacenit_jax.model.config import make_config
from spacenit_jax.model.encoder import image_tokens
from spacenit_jax.tokenization import SensorGrid, sample_tokens

SMALL = dict(embed_dim=64, depth=2, num_heads=4, decoder_depth=2, decoder_num_heads=4,
             drop_path=0.0)
LABELS = ("sentinel2_l2a", "sentinel1", "srtm")


def golden(data_dir, rev):
    d = np.load(data_dir / "reference-golden" / f"reference_{rev}_small.npz")
    cj = json.loads(str(d["config_json"]))["model"]
    preset = {"head": "reference_head", "v1": "reference_v1"}[rev]
    cfg = make_config(preset, "nano", sensor_labels=tuple(cj["encoder"]["sensor_labels"]),
                      **{**SMALL, "projection_dim": cj["projection_dim"]})
    model = models.build_model(cfg, "latent_predictor")
    sd = {k[2:]: d[k] for k in d.files if k.startswith("w/")}
    sdm.load_flat(model, sdm.from_state_dict(cfg, sd, sdm.flat_params(model)))
    images = {k[2:]: jnp.asarray(np.moveaxis(d[k], 1, -1)) for k in d.files if k.startswith("x/")}
    return d, cfg, model, images


@pytest.mark.parametrize("rev", ["head", "v1"])
def test_encoder_matches_original(data_dir, rev):
    d, cfg, model, images = golden(data_dir, rev)
    months = jnp.asarray(d["month_indices"])
    encode = nnx.jit(lambda m, months, p: m.encoder.encode_images(images, patch_size=p,
                                                                   months=months),
                     static_argnums=2)
    for p, key, m in [(4, "encoder_tokens_p4", months), (8, "encoder_tokens_p8", months),
                      (4, "encoder_tokens_p4_no_months", None)]:
        out, stream = encode(model, m, p)
        np.testing.assert_allclose(out, d[f"y/{key}"], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(stream.sensor, d[f"y/sensor_ids_p{p}"])


@pytest.mark.parametrize("rev", ["head", "v1"])
def test_latent_predictor_matches_original(data_dir, rev):
    d, cfg, model, images = golden(data_dir, rev)
    vis = d["visibility_mask"]
    if rev == "v1":  # the v1 model takes index sets and shows its target encoder everything
        vis = np.full_like(vis, models.TARGET_ONLY)
        for b in range(vis.shape[0]):
            vis[b, d["visible_indices"][b]] = models.VISIBLE
            vis[b, d["target_indices"][b]] = models.PREDICTED
    view = models.view_from_images(cfg, images, visibility=vis, patch_size=4,
                                   months=jnp.asarray(d["month_indices"]),
                                   target_sees_all=rev == "v1")
    out = nnx.jit(lambda m, v: m(v))(model, view)
    names = ["predictions", "targets", "online_proj", "target_proj"]
    for name in names:
        ref = d[f"y/latent_predictor/{name}"]
        got = models.gather_positions(out[name], vis == models.PREDICTED, ref.shape[1])
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0, err_msg=name)
    if rev == "head":
        np.testing.assert_allclose(out["encoder_pooled"][:, 0],
                                   d["y/latent_predictor/encoder_pooled"], atol=1e-5)


@pytest.mark.parametrize("preset,size,encoder,total,keys", [
    ("reference_head", "nano", 1_346_304, 3_394_516, 284),
    ("reference_head", "tiny", 6_168_192, 13_909_952, 540),
    ("reference_head", "base", 88_373_760, 201_768_704, 540),
    ("reference_v1", "nano", 3_248_896, 7_914_880, 213),
    ("reference_v1", "base", 126_460_416, 301_694_720, 357),
])
def test_reference_parameter_counts(preset, size, encoder, total, keys):
    cfg = make_config(preset, size)
    model = nnx.eval_shape(lambda: models.build_model(cfg, "latent_predictor"))
    flat = sdm.flat_params(model)
    count = {p: int(np.prod(v.shape)) for p, v in flat.items()}
    assert sum(v for p, v in count.items() if p[0] == "encoder") == encoder
    assert sum(count.values()) == total
    fake = {p: np.zeros(v.shape, np.float32) for p, v in flat.items()}
    assert len(sdm.to_state_dict(cfg, fake)) + 1 == keys  # + the `_step` buffer


def test_token_order_is_the_originals():
    cfg = make_config("reference_head", "nano", sensor_labels=LABELS)
    grids = {"sentinel2_l2a": SensorGrid(2, 3, 2, True), "srtm": SensorGrid(2, 3, 1, False)}
    ids = sample_tokens(cfg.layout, grids)
    assert len(ids.sensor) == 1 + 2 * 3 * 2 * 3 + 1 + 2 * 3
    assert ids.group[0] == -1 and ids.row[0] == -1 and ids.time[0] == -1  # type token first
    n = 1
    for t in range(2):
        for g in range(3):
            for r in range(2):
                for c in range(3):
                    assert (ids.time[n], ids.group[n], ids.row[n], ids.col[n]) == (t, g, r, c)
                    n += 1
    assert ids.sensor[n] == 2 and ids.group[n] == -1  # srtm's type token (sensor id 2)
    assert list(ids.time[n + 1:]) == [-1] * 6


def test_rope_depends_only_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 16)).astype(np.float32)

    def score(pa, pb, scale=2.0):
        rows = jnp.asarray([[pa[0], pb[0]]])
        cols = jnp.asarray([[pa[1], pb[1]]])
        times = jnp.asarray([[pa[2], pb[2]]])
        rot = positions.rope(rows, cols, times, jnp.full((1, 2), scale), 16, 10000.0)
        x = jnp.asarray(np.stack([q, k])[None, :, None, :])
        y = positions.apply_rope(x, rot)
        return float(jnp.dot(y[0, 0, 0], y[0, 1, 0]))

    base = score((1, 2, 0), (3, 5, 1))
    assert score((4, 6, 2), (6, 9, 3)) == pytest.approx(base, abs=1e-4)
    assert score((1, 2, 0), (3, 6, 1)) != pytest.approx(base, abs=1e-3)
    rot = positions.rope(jnp.asarray([[-1]]), jnp.asarray([[-1]]), jnp.asarray([[-1]]),
                         jnp.ones((1, 1)), 16, 10000.0)
    x = jnp.asarray(q[None, None, None])
    np.testing.assert_array_equal(positions.apply_rope(x, rot), x)  # type token untouched


def test_gqa_equals_mha_with_repeated_kv_heads():
    rngs = nnx.Rngs(0)
    gqa = layers.Attention(32, 4, 2, bias=True, rngs=rngs)
    mha = layers.Attention(32, 4, None, bias=True, rngs=rngs)
    hd = 8

    def repeat(w):  # (in, kv*hd) -> (in, heads*hd): query head h uses kv head h // 2
        return jnp.repeat(w.reshape(*w.shape[:-1], 2, hd), 2, axis=-2).reshape(*w.shape[:-1], -1)

    for name in ("q", "o"):
        getattr(mha, name).kernel[...] = getattr(gqa, name).kernel[...]
        getattr(mha, name).bias[...] = getattr(gqa, name).bias[...]
    for name in ("k", "v"):
        getattr(mha, name).kernel[...] = repeat(getattr(gqa, name).kernel[...])
        getattr(mha, name).bias[...] = repeat(getattr(gqa, name).bias[...])
    x = jax.random.normal(jax.random.key(1), (2, 5, 32))
    seg = jnp.asarray([[0, 0, 0, 1, -1], [0, 0, 0, 0, 0]])
    segs = Segments(seg, seg)
    np.testing.assert_allclose(gqa(x, segs), mha(x, segs), atol=1e-5)
    # a query without keys gets zero attention output: only the output bias remains
    np.testing.assert_allclose(gqa(x, segs)[0, 4], gqa.o.bias[...], atol=1e-6)


def test_patch_resize_against_independent_implementations():
    rng = np.random.default_rng(0)
    cfg = make_config("reference_head", "nano", sensor_labels=("srtm",), **SMALL)
    img = rng.normal(size=(1, 12, 12, 1)).astype(np.float32)
    patches, _ = image_tokens(cfg, {"srtm": img}, patch_size=4, xp=np)
    up = jax.image.resize(img[0, :, :, 0], (24, 24), method="bicubic", antialias=True)
    expected = np.asarray(up).reshape(3, 8, 3, 8).transpose(0, 2, 1, 3).reshape(9, 64)
    np.testing.assert_allclose(patches["srtm"][0], expected, atol=1e-5)
    v1 = make_config("reference_v1", "nano", sensor_labels=("srtm",), **SMALL)
    w = rng.normal(size=(16, 16)).astype(np.float32)
    patches, _ = image_tokens(v1, {"srtm": img}, patch_size=4, xp=np)
    # the token equals <area-resized kernel, raw patch>: average-pool the 16x16 kernel to 4x4
    small = w.reshape(4, 4, 4, 4).mean(axis=(1, 3))
    raw = img[0, :4, :4, 0]
    assert float(patches["srtm"][0, 0] @ w.reshape(-1)) == pytest.approx(
        float((small * raw).sum()), rel=1e-5)


def two_sensor_model(preset="design_card", **kw):
    cfg = make_config(preset, "nano", sensor_labels=LABELS, **{**SMALL, **kw})
    return cfg, models.build_model(cfg, "latent_predictor", seed=3)


def random_images(key, b=2, h=16, t=2):
    k = jax.random.split(jax.random.key(key), 3)
    return {"sentinel2_l2a": jax.random.normal(k[0], (b, h, h, t, 12)),
            "sentinel1": jax.random.normal(k[1], (b, h, h, t, 2)),
            "srtm": jax.random.normal(k[2], (b, h, h, 1))}


@pytest.mark.parametrize("preset", ["design_card", "reference_head", "reference_v1"])
def test_image_and_token_entry_points_agree(preset):
    cfg, model = two_sensor_model(preset)
    images = random_images(0)
    months = jnp.asarray([[3, 4], [11, 0]])
    out, _ = nnx.jit(lambda m: m.encoder.encode_images(images, patch_size=4, months=months))(model)
    patches, stream = image_tokens(cfg, {k: np.asarray(v) for k, v in images.items()},
                                   patch_size=4, months=np.asarray(months), xp=np)
    host = jax.tree.map(jnp.asarray, (dict(patches), stream))
    out2, _ = nnx.jit(lambda m, p, s: m.encoder(p, s))(model, *host)
    np.testing.assert_allclose(out, out2, atol=1e-5)


def pack(parts):
    """Put several one-sample (patches, stream) pairs side by side in one row (numpy)."""
    layout_keys = list(parts[0][0])
    caps = {k: sum(p[k].shape[1] for p, _ in parts) for k in layout_keys}
    patches = {k: np.concatenate([p[k] for p, _ in parts], axis=1) for k in layout_keys}
    return patches, caps


def test_packed_rows_equal_separate_rows():
    cfg, model = two_sensor_model()
    samples = [image_tokens(cfg, {k: np.asarray(v)[:1] for k, v in random_images(s, 1, h).items()},
                            patch_size=4, xp=np) for s, h in ((1, 16), (2, 8))]
    patches, caps = pack(samples)
    offsets, type_offset = embed_table_offsets(cfg.layout, caps)
    fields = {f: [] for f in TokenStream._fields}
    starts = {k: 0 for k in caps}
    for seg, (p, s) in enumerate(samples):
        own, own_type = embed_table_offsets(cfg.layout, {k: v.shape[1] for k, v in p.items()})
        idx = s.embed_index.copy()
        for g in cfg.layout.groups:
            sel = s.group == g.index
            idx[sel] += offsets[g.key] + starts[g.key] - own[g.key]
        idx[s.group < 0] += type_offset - own_type
        for k in starts:
            starts[k] += p[k].shape[1]
        for f in TokenStream._fields:
            fields[f].append(np.full_like(s.segment, seg) if f == "segment" else
                             idx if f == "embed_index" else getattr(s, f))
    packed = TokenStream(**{f: np.concatenate(v, axis=1) for f, v in fields.items()})
    encode = nnx.jit(lambda m, p, s: m.encoder(p, s)[0])
    out = encode(model, jax.tree.map(jnp.asarray, patches), jax.tree.map(jnp.asarray, packed))
    n0 = samples[0][1].sensor.shape[1]
    for i, (p, s) in enumerate(samples):
        alone = encode(model, jax.tree.map(jnp.asarray, dict(p)), jax.tree.map(jnp.asarray, s))
        part = out[:, :n0] if i == 0 else out[:, n0:]
        np.testing.assert_allclose(part, alone, atol=2e-5)


def test_masked_tokens_do_not_influence_visible_outputs():
    cfg, model = two_sensor_model()
    patches, stream = image_tokens(cfg, random_images(4), patch_size=4)
    n = stream.sensor.shape[1]
    rng = np.random.default_rng(0)
    keep = jnp.asarray(rng.random((2, n)) < 0.5)
    sub = SubStream(jnp.broadcast_to(jnp.arange(n), (2, n)), jnp.where(keep, 0, -1))
    # give every masked token other pixels and another position
    other = stream._replace(
        embed_index=jnp.where(keep, stream.embed_index, jnp.asarray(rng.integers(0, n, (2, n)))),
        row=jnp.where(keep, stream.row, 7), time=jnp.where(keep, stream.time, 1))
    encode = nnx.jit(lambda m, s: m.encoder(patches, s, sub)[0])
    a, b = encode(model, stream), encode(model, other)
    np.testing.assert_allclose(np.asarray(a)[np.asarray(keep)], np.asarray(b)[np.asarray(keep)],
                               atol=1e-5)
    assert np.abs(np.asarray(a - b)).max() > 1e-2  # the masked tokens themselves did change


def test_scan_and_unrolled_layers_agree():
    cfg, model = two_sensor_model()
    scfg = cfg.replace(scan_layers=True, remat="full")
    scanned = models.build_model(scfg, "latent_predictor", seed=3)
    flat = sdm.flat_params(model)
    assert sdm.stack_layers(flat, scfg).keys() == sdm.flat_params(scanned).keys()
    sdm.load_flat(scanned, sdm.stack_layers(flat, scfg))
    view = models.view_from_images(cfg, random_images(5), patch_size=4)
    forward = nnx.jit(lambda m, v: m(v))
    a, b = forward(model, view), forward(scanned, view)
    np.testing.assert_allclose(a["predictions"], b["predictions"], atol=1e-5)
    np.testing.assert_allclose(a["encoder_pooled"], b["encoder_pooled"], atol=1e-5)
    # stacked parameters carry the "layers" axis in their sharding metadata (Flax's axis
    # handling), in front of the per-layer axes
    gate = scanned.encoder.blocks.layers.ffn.gate.kernel
    assert gate.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
    assert gate.shape == (cfg.depth, *model.encoder.blocks.layers[0].ffn.gate.kernel.shape)


def test_sharded_forward_equals_single_device():
    from spacenit_jax import sharding

    assert jax.device_count() == 8
    cfg, model = two_sensor_model()
    view = models.view_from_images(cfg, random_images(6, b=8), patch_size=4)
    expected = nnx.jit(lambda m, v: m(v)["predictions"])(model, view)
    mesh = sharding.make_mesh(data=4, fsdp=2, tensor=1)
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, sharding.state_shardings(mesh, state))
    view = jax.device_put(view, jax.tree.map(lambda x: sharding.batch_sharding(mesh, x.ndim), view))

    @jax.jit
    def forward(state, view):
        return nnx.merge(graphdef, state)(view)["predictions"]

    got = forward(state, view)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(got, expected, atol=1e-5)
    tp = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    state = jax.device_put(state, sharding.state_shardings(tp, state))
    np.testing.assert_allclose(forward(state, view), expected, atol=1e-5)


def test_drop_path_is_stochastic_in_training_only():
    cfg, model = two_sensor_model(drop_path=0.5)
    images = random_images(7)
    encode = nnx.jit(lambda m, key, train: m.encoder.encode_images(
        images, patch_size=4, deterministic=not train, rng=key)[0], static_argnums=2)
    a = encode(model, jax.random.key(0), False)
    b = encode(model, jax.random.key(0), True)
    c = encode(model, jax.random.key(1), True)
    assert np.abs(np.asarray(a - b)).max() > 1e-3 and np.abs(np.asarray(b - c)).max() > 1e-3


@pytest.mark.parametrize("images,match", [
    ({"naip": np.zeros((1, 8, 8, 4))}, "not configured"),
    ({"sentinel3": np.zeros((1, 8, 8, 4))}, "unknown sensor 'sentinel3'.*known sensors"),
    ({"sentinel1": np.zeros((1, 8, 8, 2, 3))}, "sentinel1.*expected 2 channels"),
    ({"sentinel1": np.zeros((1, 10, 10, 2, 2))}, "sentinel1.*10x10 is not divisible.*4"),
    ({"sentinel1": np.zeros((1, 8, 8, 65, 2))}, "sentinel1.*65 timesteps.*64"),
    ({"sentinel1": np.zeros((2, 8, 8, 1, 2)), "srtm": np.zeros((3, 8, 8, 1))},
     "different batch sizes"),
    ({"sentinel1": np.zeros((8, 8, 2))}, "sentinel1.*expected \\(B,H,W,T,2\\)"),
])
def test_bad_inputs_raise_clear_errors(images, match):
    cfg = make_config("design_card", "nano", sensor_labels=LABELS, **SMALL)
    with pytest.raises((ValueError, KeyError), match=match):
        image_tokens(cfg, images, patch_size=4, xp=np)


def test_sensor_registry():
    assert len(sensors.all_labels()) == 18
    s2 = sensors.get("sentinel2_l2a")
    assert s2.bands == ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12",
                        "B01", "B09")
    assert [g.pixel_pitch for g in s2.groups] == [10, 20, 40]
    assert sensors.get("landsat").bands[:2] == ("B8", "B1")
    assert sensors.get("era5_10").kind is sensors.SensorKind.TIME
    assert sensors.get("latlon").kind is sensors.SensorKind.CONSTANT
    assert sensors.get("naip_10").stored_tile_edge == 1024
    with pytest.raises(KeyError, match="known sensors: sentinel2_l2a, sentinel1"):
        sensors.get("modis")
    with pytest.raises(ValueError, match="already registered"):
        sensors.register(s2)


def test_packed_view_pytree_roundtrip():
    cfg, _ = two_sensor_model()
    view = models.view_from_images(cfg, random_images(8), patch_size=4)
    leaves, tree = jax.tree.flatten(view)
    assert isinstance(jax.tree.unflatten(tree, leaves), PackedView)


def test_spatiotemporal_encoder_and_bfloat16_forward():
    cfg = make_config("design_card", "nano", sensor_labels=LABELS, axial_depth=1, **SMALL)
    model = models.build_model(cfg, "spatiotemporal", seed=1)
    view = models.view_from_images(cfg, random_images(3), patch_size=4)
    out = nnx.jit(lambda m, v: m(v))(model, view)
    assert out["pooled"].shape == (2, 1, 64) and out["projected"].shape == (2, 1, cfg.projection_dim)
    assert np.all(np.isfinite(out["projected"]))
    # type tokens skip the axial layers: they come out of the final norm of the encoder's
    encoded, stream = nnx.jit(lambda m, v: m.encoder(v.patches, v.tokens, v.online))(model, view)
    is_type = np.asarray(stream.group) < 0
    np.testing.assert_allclose(np.asarray(out["encoded"])[is_type],
                               np.asarray(model.norm(encoded))[is_type], atol=1e-5)
    bf16 = cfg.replace(compute_dtype="bfloat16")
    fast = models.build_model(bf16, "latent_predictor", seed=3)
    ref = models.build_model(cfg, "latent_predictor", seed=3)
    view = models.view_from_images(cfg, random_images(4), patch_size=4)
    forward = nnx.jit(lambda m, v: m(v)["encoder_pooled"])
    a, b = forward(ref, view), forward(fast, view)
    assert b.dtype == jnp.float32 or b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=0.1)
