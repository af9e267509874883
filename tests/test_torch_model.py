"""Tests of torch_bridge.torch_model: golden parity with the original (both revisions),
exact state-dict keys/shapes and parameter counts, and behaviour of the building blocks."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spacenit_jax import sensors  # noqa: E402
from spacenit_jax import tokenization as tk  # noqa: E402
from spacenit_jax.model.config import make_config  # noqa: E402
from torch_bridge import torch_model as tm  # noqa: E402

GOLDEN_SENSORS = ("sentinel2_l2a", "sentinel1", "srtm")
GOLDEN = {
    "reference_head": ("reference_head_small.npz", 64),
    "reference_v1": ("reference_v1_small.npz", 32),
}
TOL = 1e-5


def small_config(preset: str, projection_dim: int):
    return make_config(preset, "nano", sensor_labels=GOLDEN_SENSORS, embed_dim=64, depth=2,
                       num_heads=4, decoder_depth=2, decoder_num_heads=4, drop_path=0.0,
                       projection_dim=projection_dim)


@pytest.fixture(scope="module", params=sorted(GOLDEN))
def golden(request, data_dir):
    preset = request.param
    fname, proj = GOLDEN[preset]
    data = dict(np.load(data_dir / "reference-golden" / fname))
    model = tm.LatentPredictor(small_config(preset, proj))
    weights = {k[2:]: torch.from_numpy(np.asarray(v)) for k, v in data.items()
               if k.startswith("w/")}
    model.load_state_dict(weights, strict=True)
    model.eval()
    x = {k[2:]: torch.from_numpy(v) for k, v in data.items() if k.startswith("x/")}
    return preset, data, weights, model, x


def _maxdiff(a, b) -> float:
    return float((a.detach() - torch.from_numpy(np.asarray(b))).abs().max())


# --------------------------------------------------------------------------------------
# Golden parity


def test_golden_state_dict_is_exactly_the_originals(golden):
    _, _, weights, model, _ = golden
    sd = model.state_dict()
    assert list(sd) == list(weights)  # same keys, same order
    for k, v in weights.items():
        assert tuple(sd[k].shape) == tuple(v.shape), k
        assert sd[k].dtype == v.dtype, k
    assert sd["_step"].dtype == torch.int64 and sd["_step"].shape == ()


def test_golden_config_json_matches(golden):
    import json

    preset, data, _, model, _ = golden
    cfg = json.loads(str(data["config_json"]))["model"]
    enc = cfg["encoder"]
    c = model.config
    assert enc["embed_dim"] == c.embed_dim and enc["depth"] == c.depth
    assert enc["num_heads"] == c.num_heads and enc["ffn_expansion"] == c.ffn_expansion
    assert enc["base_patch_size"] == c.layout.base_patch_size
    assert tuple(enc["sensor_labels"]) == c.sensor_labels
    assert cfg["decoder_depth"] == c.decoder_depth
    assert cfg["decoder_num_heads"] == c.decoder_num_heads
    assert cfg["projection_dim"] == c.projection_dim
    assert ("tokenization_config" in enc) == c.layout.spectral_groups
    assert list(data["patch_sizes"]) == [4, 8]


@pytest.mark.parametrize("patch", [4, 8])
def test_golden_encoder_tokens(golden, patch):
    preset, data, _, model, x = golden
    months = torch.from_numpy(data["month_indices"])
    with torch.no_grad():
        out = model.encoder(x, patch_size=patch, month_indices=months)
    assert len(out) == (3 if preset == "reference_v1" else 5)
    assert _maxdiff(out[0], data[f"y/encoder_tokens_p{patch}"]) <= TOL
    np.testing.assert_array_equal(out[1].numpy(), data[f"y/sensor_ids_p{patch}"])
    # the layout is (label, 1 + T*G*Hp*Wp) in config order
    layout = out[-1]
    assert [label for label, _ in layout] == list(GOLDEN_SENSORS)
    assert sum(n for _, n in layout) == out[0].shape[1]


def test_golden_encoder_tokens_without_months(golden):
    _, data, _, model, x = golden
    with torch.no_grad():
        out = model.encoder(x, patch_size=4)
    assert _maxdiff(out[0], data["y/encoder_tokens_p4_no_months"]) <= TOL


def test_golden_target_encoder_runs(golden):
    # The golden target encoder is a separate set of weights; it must load and run too.
    _, data, _, model, x = golden
    with torch.no_grad():
        out = model.target_encoder(x, patch_size=4)
    assert out[0].shape == data["y/encoder_tokens_p4_no_months"].shape
    assert torch.isfinite(out[0]).all()


def test_golden_latent_predictor(golden):
    preset, data, _, model, x = golden
    months = torch.from_numpy(data["month_indices"])
    with torch.no_grad():
        if preset == "reference_head":
            out = model(x, visibility_mask=torch.from_numpy(data["visibility_mask"]),
                        patch_size=4, month_indices=months)
        else:
            out = model(x, visible_indices=torch.from_numpy(data["visible_indices"]),
                        target_indices=torch.from_numpy(data["target_indices"]),
                        patch_size=4, month_indices=months)
    expected = {k.split("/")[-1]: v for k, v in data.items()
                if k.startswith("y/latent_predictor/")}
    assert set(out) == set(expected)
    for k, v in expected.items():
        assert tuple(out[k].shape) == v.shape, k
        assert _maxdiff(out[k], v) <= TOL, k


def test_golden_v1_index_sets_match_visibility_mask(data_dir):
    data = np.load(data_dir / "reference-golden" / "reference_v1_small.npz")
    mask = data["visibility_mask"]
    for b in range(mask.shape[0]):
        np.testing.assert_array_equal(np.nonzero(mask[b] == 0)[0], data["visible_indices"][b])
        np.testing.assert_array_equal(np.nonzero(mask[b] == 2)[0], data["target_indices"][b])


# --------------------------------------------------------------------------------------
# Parameter counts and state-dict keys of the original's official sizes

COUNTS = {  # (encoder, decoder, each projection head, total, state-dict keys)
    ("reference_head", "nano"): (1_346_304, 635_860, 33_024, 3_394_516, 284),
    ("reference_head", "tiny"): (6_168_192, 1_425_344, 74_112, 13_909_952, 540),
    ("reference_head", "base"): (88_373_760, 22_658_816, 1_181_184, 201_768_704, 540),
    ("reference_head", "large"): (306_735_104, 40_255_144, 2_099_200, 657_923_752, 924),
    ("reference_v1", "nano"): (3_248_896, 1_318_016, 49_536, 7_914_880, 213),
    ("reference_v1", "tiny"): (10_381_440, 2_952_384, 86_464, 23_888_192, 357),
    ("reference_v1", "base"): (126_460_416, 47_198_976, 787_456, 301_694_720, 357),
    ("reference_v1", "large"): (420_296_704, 83_985_408, 1_312_000, 927_202_816, 573),
}


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset,size", sorted(COUNTS))
def test_official_parameter_counts(preset, size):
    enc, dec, proj, total, keys = COUNTS[(preset, size)]
    cfg = make_config(preset, size)  # the 9 official sensors
    with torch.device("meta"):
        model = tm.LatentPredictor(cfg)
    assert _n(model.encoder) == enc
    assert _n(model.target_encoder) == enc
    assert _n(model.decoder) == dec
    assert _n(model.online_proj) == proj and _n(model.target_proj) == proj
    assert _n(model) == total
    assert _n(model) - _n(model.target_encoder) - _n(model.target_proj) == enc + dec + proj
    sd = model.state_dict()
    assert len(sd) == keys
    assert next(iter(sd)) == "_step" and sd["_step"].dtype == torch.int64


def _head_nano_encoder_spec() -> dict[str, tuple[int, ...]]:
    """The original latest revision's Nano encoder keys and shapes, written out."""
    d = 128
    patch = {
        "sentinel2_l2a__g0": 256, "sentinel2_l2a__g1": 384, "sentinel2_l2a__g2": 128,
        "sentinel1": 128, "landsat__g0": 64, "landsat__g1": 640, "worldcover": 64,
        "srtm": 64, "openstreetmap_raster": 1920, "wri_canopy_height_map": 64, "cdl": 64,
        "worldcereal": 512,
    }  # fmt: skip
    out = {}
    for key, k in patch.items():
        out[f"tokenizer.patch_embeds.{key}.proj.weight"] = (d, k)
        out[f"tokenizer.patch_embeds.{key}.proj.bias"] = (d,)
    out["tokenizer.sensor_embed.embedding.weight"] = (9, d)
    for label in ("cdl", "landsat", "openstreetmap_raster", "sentinel1", "sentinel2_l2a",
                  "srtm", "worldcereal", "worldcover", "wri_canopy_height_map"):
        out[f"tokenizer.sensor_type_tokens.{label}"] = (1, 1, d)
    out["month_embed.proj.weight"] = (d, 2)
    for i in range(4):
        p = f"transformer.layers.{i}."
        for n in ("norm1", "norm2"):
            out[p + n + ".weight"] = (d,)
            out[p + n + ".bias"] = (d,)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"attn.{n}.weight"] = (d, d)
            out[p + f"attn.{n}.bias"] = (d,)
        out[p + "mlp.fc1.weight"] = (512, d)
        out[p + "mlp.fc1.bias"] = (512,)
        out[p + "mlp.fc2.weight"] = (d, 512)
        out[p + "mlp.fc2.bias"] = (d,)
    out["norm.weight"] = (d,)
    out["norm.bias"] = (d,)
    return out


def test_head_nano_encoder_keys_match_the_originals():
    enc = tm.Encoder(make_config("reference_head", "nano"))
    got = tm.state_dict_shapes(enc)
    expected = _head_nano_encoder_spec()
    assert got == expected
    assert len(got) == 101 and _n(enc) == 1_346_304
    assert all(v.dtype == torch.float32 for v in enc.state_dict().values())
    assert enc.patch_size == 8


def test_v1_nano_encoder_keys_match_the_originals():
    enc = tm.Encoder(make_config("reference_v1", "nano"), dropout=0.0)
    got = tm.state_dict_shapes(enc)
    d = 128
    patch = {"sentinel2_l2a": 3072, "sentinel1": 512, "landsat": 2816, "worldcover": 256,
             "srtm": 256, "openstreetmap_raster": 7680, "wri_canopy_height_map": 256,
             "cdl": 256, "worldcereal": 2048}
    expected = {}
    for key, k in patch.items():
        expected[f"tokenizer.patch_embeds.{key}.proj.weight"] = (d, k)
        expected[f"tokenizer.patch_embeds.{key}.proj.bias"] = (d,)
    expected["tokenizer.sensor_embed.embedding.weight"] = (9, d)
    for label in patch:
        expected[f"tokenizer.sensor_type_tokens.{label}"] = (1, 1, d)
    expected["month_embed.proj.weight"] = (d, 2)
    for i in range(4):
        p = f"transformer.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            expected[p + f"self_attn.{n}.weight"] = (d, d)
        expected[p + "self_attn_norm.weight"] = (d,)
        expected[p + "ffn.gate_proj.weight"] = (512, d)
        expected[p + "ffn.up_proj.weight"] = (512, d)
        expected[p + "ffn.down_proj.weight"] = (d, 512)
        expected[p + "ffn_norm.weight"] = (d,)
    expected["norm.weight"] = (d,)
    assert got == expected and len(got) == 66


def test_nano_decoder_and_heads_keys_match_the_originals():
    for preset, hidden in (("reference_head", 341), ("reference_v1", 344)):
        with torch.device("meta"):
            model = tm.LatentPredictor(make_config(preset, "nano"))
        sd = tm.state_dict_shapes(model)
        dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
        assert dec["mask_token"] == (1, 1, 128) and next(iter(dec)) == "mask_token"
        if preset == "reference_head":
            assert dec["encoder_to_decoder_embed.weight"] == (128, 128)
            assert dec["sensor_embed.embedding.weight"] == (9, 128)
            assert dec["month_embed.proj.weight"] == (128, 2)
            assert dec["transformer.layers.3.mlp.fc1.weight"] == (hidden, 128)
            assert dec["transformer.layers.3.mlp.fc2.bias"] == (128,)
            assert {"input_norm.weight", "input_norm.bias", "norm.bias"} <= set(dec)
        else:
            assert dec["transformer.layers.3.ffn.gate_proj.weight"] == (hidden, 128)
            assert dec["context_cross_attn.layers.0.cross_attn.k_proj.weight"] == (128, 128)
            assert dec["context_cross_attn.layers.0.ffn.down_proj.weight"] == (128, hidden)
            assert "context_cross_attn.layers.1.ffn_norm.weight" not in dec
            assert "norm.bias" not in dec
        p = model.config.projection_dim
        for head in ("online_proj", "target_proj"):
            assert sd[f"{head}.net.0.weight"] == (128, 128)
            assert sd[f"{head}.net.2.weight"] == (p, 128) and sd[f"{head}.net.2.bias"] == (p,)
        enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        tgt = {k[len("target_encoder."):]: v for k, v in sd.items()
               if k.startswith("target_encoder.")}
        assert enc == tgt


@pytest.mark.parametrize("preset", ["reference_head", "reference_v1"])
def test_other_model_key_templates(preset):
    cfg = make_config(preset, "nano", axial_depth=2)
    with torch.device("meta"):
        ae = tm.AutoEncoder(cfg)
        db = tm.DualBranch(cfg)
        st = tm.SpatioTemporalEncoder(cfg)
    p0 = cfg.layout.base_patch_size
    ae_sd = tm.state_dict_shapes(ae)
    assert {k.split(".")[0] for k in ae_sd} == {"encoder", "decoder", "pixel_head"}
    assert ae_sd["pixel_head.proj.weight"] == (13 * p0 * p0, 128)
    db_sd = tm.state_dict_shapes(db)
    assert [k.split(".")[0] for k in dict.fromkeys(k.split(".")[0] for k in db_sd)] == [
        "_step", "encoder", "target_encoder", "latent_decoder", "pixel_decoder",
        "pixel_head", "online_proj", "target_proj"]
    st_sd = tm.state_dict_shapes(st)
    assert st_sd["pool.query"] == (1, 1, 128)
    assert st_sd["pool.norm.weight"] == (128,)
    assert "pool.cross_attn.q_proj.bias" not in st_sd
    assert st_sd["norm.weight"] == (128,) and "norm.bias" not in st_sd
    assert st_sd["proj.net.2.weight"] == (cfg.projection_dim, 128)
    blk = "axial_layers.1.t_block."
    if preset == "reference_head":
        assert st_sd[blk + "attn.q_proj.bias"] == (128,)
        assert st_sd[blk + "mlp.fc1.weight"] == (512, 128)
    else:
        assert st_sd[blk + "self_attn.q_proj.weight"] == (128, 128)
        assert st_sd[blk + "ffn.gate_proj.weight"] == (512, 128)
    assert "axial_layers.2.h_block.norm1.weight" not in st_sd


# --------------------------------------------------------------------------------------
# Tokenizer vs the host-side numpy contract (spacenit_jax.tokenization)


@pytest.mark.parametrize("preset,patches,hw", [
    ("reference_head", (8, 4, 2), (16, 24)),
    ("reference_v1", (16, 8, 6, 1), (48, 48)),
    ("design_card", (8, 4), (16, 16)),
])
def test_tokenizer_matches_numpy_contract(preset, patches, hw):
    second = "naip_10" if preset == "design_card" else "srtm"
    cfg = make_config(preset, "nano", sensor_labels=("sentinel2_l2a", second))
    torch.manual_seed(0)
    enc = tm.Encoder(cfg).double()
    mult = sensors.get(second).pixels_per_base_pixel
    x = {"sentinel2_l2a": torch.randn(2, 12, *hw, 2, dtype=torch.float64),
         second: torch.randn(2, sensors.get(second).num_channels, hw[0] * mult, hw[1] * mult,
                             dtype=torch.float64)}
    for p in patches:
        tok = enc.tokenizer(x, p).detach().numpy()
        parts, grids = [], {}
        for label in cfg.sensor_labels:
            a = x[label].numpy()
            temporal = a.ndim == 5
            img = np.moveaxis(a if temporal else a[..., None], 1, -1)  # (B, H, W, T, C)
            pt, grid = tk.sensor_patches(cfg.layout, label, img, p, temporal)
            grids[label] = grid
            embs = []
            for g in cfg.layout.sensor_groups(label):
                lin = enc.tokenizer.patch_embeds[g.key].proj
                e = pt[g.key] @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
                embs.append(e.reshape(2, grid.t, grid.hp * grid.wp, -1))
            e = np.concatenate(embs, 2).reshape(2, -1, cfg.embed_dim)
            e = e + enc.tokenizer.sensor_embed.embedding.weight.detach().numpy()[
                cfg.layout.sensor_id(label)]
            tt = enc.tokenizer.sensor_type_tokens[label].detach().numpy()
            parts.append(np.concatenate([np.broadcast_to(tt, (2, 1, cfg.embed_dim)), e], 1))
        np.testing.assert_allclose(tok, np.concatenate(parts, 1), atol=1e-6, rtol=0)
        ids = enc.token_ids(x, p)
        st = tk.sample_tokens(cfg.layout, grids)
        for name in ("sensor", "row", "col", "time"):
            np.testing.assert_array_equal(getattr(ids, name).numpy(), getattr(st, name))


def test_position_scales_per_preset():
    x = {"sentinel2_l2a": torch.zeros(1, 12, 16, 16), "naip": torch.zeros(1, 4, 16, 16)}
    s2 = {"sentinel2_l2a": x["sentinel2_l2a"]}
    head = tm.Encoder(make_config("reference_head", "nano", sensor_labels=("sentinel2_l2a",)))
    assert set(head.token_ids(s2, 4).scale.tolist()) == {4.0}
    assert set(head.token_ids(s2, 4, gsd=30.0).scale.tolist()) == {12.0}
    assert set(head.token_ids(s2, 4, gsd=torch.tensor([20.0, 40.0])).scale.tolist()) == {12.0}
    v1 = tm.Encoder(make_config("reference_v1", "nano", sensor_labels=("sentinel2_l2a",)))
    assert set(v1.token_ids(s2, 4).scale.tolist()) == {1.0}
    assert set(v1.token_ids(s2, 4, gsd=25.0).scale.tolist()) == {2.5}
    dc = tm.Encoder(make_config("design_card", "nano", sensor_labels=("sentinel2_l2a", "naip")))
    ids = dc.token_ids(x, 4)
    s2 = ids.scale[ids.sensor == 0].unique().tolist()
    naip = ids.scale[ids.sensor == 1].unique().tolist()
    assert s2 == [4.0] and naip == [pytest.approx(0.25)]


def test_grid_limits_and_divisibility():
    cfg = make_config("reference_head", "nano", sensor_labels=("srtm",), max_grid=4)
    enc = tm.Encoder(cfg)
    with pytest.raises(ValueError, match="max_grid"):
        enc({"srtm": torch.zeros(1, 1, 40, 8)})
    # one rule at every patch size, the base patch size P0 = 8 included: the original
    # silently drops the remainder rows at P0; we refuse, as the JAX model does
    for p in (4, 8):
        with pytest.raises(ValueError, match=f"'srtm': spatial size 18x16 is not divisible "
                                             f"by the patch size {p}"):
            enc({"srtm": torch.zeros(1, 1, 18, 16)}, patch_size=p)
    assert enc({"srtm": torch.zeros(1, 1, 16, 16)})[0].shape == (1, 1 + 2 * 2, 128)


S2 = ", ".join(sensors.get("sentinel2_l2a").bands)


@pytest.mark.parametrize("inputs,error,match", [
    # unknown and misspelled sensors are refused (they used to be dropped silently)
    ({"sentinel2_l2": torch.zeros(1, 12, 8, 8)}, ValueError,
     r"^unknown sensor 'sentinel2_l2' \(did you mean 'sentinel2_l2a'\?\); this model's "
     r"sensors: sentinel2_l2a, srtm \(all known sensors: sentinel2_l2a, .*\)$"),
    ({"Sentinel1": torch.zeros(1, 2, 8, 8)}, ValueError,
     r"^unknown sensor 'Sentinel1' \(did you mean 'sentinel1'\?\)"),
    ({"modis": torch.zeros(1, 2, 8, 8)}, ValueError, r"^unknown sensor 'modis'; this model's"),
    ({"srtm": torch.zeros(1, 1, 8, 8), "sentinel1": torch.zeros(1, 2, 8, 8)}, ValueError,
     r"^sensor 'sentinel1' is not one of this model's sensors \(sentinel2_l2a, srtm\)"),
    # wrong layout, channel count, type, dtype, batch sizes, months
    ({"sentinel2_l2a": torch.zeros(1, 8, 8, 12)}, ValueError,
     rf"^sensor 'sentinel2_l2a': expected 12 channels \({S2}\) on axis 1 of \(B, C, H, W"
     r"\[, T\]\), got shape \(1, 8, 8, 12\); it looks channel-last: use "
     r"x.permute\(0, 3, 1, 2\)$"),
    ({"sentinel2_l2a": torch.zeros(1, 8, 8, 2, 12)}, ValueError,
     r"channel-last: use x.permute\(0, 4, 1, 2, 3\)$"),
    ({"sentinel2_l2a": torch.zeros(1, 10, 8, 8)}, ValueError,
     r"^sensor 'sentinel2_l2a': expected 12 channels .* got shape \(1, 10, 8, 8\)$"),
    ({"srtm": torch.zeros(8, 8)}, ValueError,
     r"^sensor 'srtm': expected a \(B, 1, H, W\) or \(B, 1, H, W, T\) tensor"),
    ({"srtm": np.zeros((1, 1, 8, 8), np.float32)}, TypeError,
     r"^sensor 'srtm': expected a torch.Tensor .* got ndarray \(torch.from_numpy"),
    ({"srtm": torch.zeros(1, 1, 8, 8, dtype=torch.int16)}, TypeError,
     r"^sensor 'srtm': dtype torch.int16, expected a floating-point tensor"),
    ({"srtm": torch.zeros(1, 1, 8, 8, dtype=torch.float64)}, TypeError,
     r"^sensor 'srtm': dtype torch.float64, but the model's parameters are torch.float32"),
    ({"srtm": torch.zeros(2, 1, 8, 8), "sentinel2_l2a": torch.zeros(3, 12, 8, 8)}, ValueError,
     r"^sensor inputs have different batch sizes: \{'srtm': 2, 'sentinel2_l2a': 3\}$"),
    ({}, ValueError, r"^no sensor inputs given; this model's sensors: sentinel2_l2a, srtm$"),
    ([torch.zeros(1, 1, 8, 8)], TypeError, r"^sensor_data must be a dict"),
])
def test_bad_inputs_raise_one_line_errors_naming_the_sensor(inputs, error, match):
    cfg = make_config("reference_head", "nano", sensor_labels=("sentinel2_l2a", "srtm"),
                      embed_dim=32, depth=1, num_heads=2, decoder_depth=1, decoder_num_heads=2)
    model = tm.LatentPredictor(cfg).eval()
    with pytest.raises(error, match=match) as err:
        model.encoder(inputs, patch_size=4)
    assert "\n" not in str(err.value)
    with pytest.raises(error, match=match):  # every entry point checks the same way
        model(inputs, patch_size=4)


def test_bad_month_indices():
    cfg = make_config("reference_head", "nano", sensor_labels=("srtm",), embed_dim=32,
                      depth=1, num_heads=2)
    enc = tm.Encoder(cfg)
    x = {"srtm": torch.zeros(2, 1, 8, 8)}
    enc(x, patch_size=4, month_indices=torch.tensor([[0], [-12]]))  # negative months wrap
    with pytest.raises(ValueError, match=r"^month_indices: months are 0-11 .* from 0 to 12$"):
        enc(x, patch_size=4, month_indices=torch.tensor([[0], [12]]))
    with pytest.raises(ValueError, match=r"^month_indices: expected a \(2, T\) integer"):
        enc(x, patch_size=4, month_indices=torch.tensor([1, 2]))


# --------------------------------------------------------------------------------------
# Building blocks


def test_attention_matches_sdpa_and_masks():
    torch.manual_seed(0)
    attn = tm.GroupedQueryAttention(32, 4, 2, bias=True)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    out = attn(x, context=ctx)
    q = attn.q_proj(x).view(2, 5, 4, 8).transpose(1, 2)
    k = attn.k_proj(ctx).view(2, 7, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
    v = attn.v_proj(ctx).view(2, 7, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref = attn.out_proj(ref.transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # masks: every accepted shape gives the same result; a row with no key gives 0
    mask = torch.ones(2, 5, 7, dtype=torch.bool)
    mask[1, 2] = False
    mask[0, :, 3:] = False
    outs = [attn(x, context=ctx, mask=m) for m in (mask, mask[:, None],
                                                   mask[:, None].expand(2, 4, 5, 7))]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])
    torch.testing.assert_close(outs[0][1, 2], attn.out_proj.bias)
    sub = attn(x[:1], context=ctx[:1, :3])
    torch.testing.assert_close(outs[0][:1], sub, atol=1e-6, rtol=1e-6)
    with pytest.raises(TypeError):
        attn(x, context=ctx, mask=mask.float())


def test_rope_interleaved_pairs_and_float32():
    x = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    ang = torch.randn(1, 3, 4)
    rot = torch.polar(torch.ones_like(ang), ang)
    y = tm.apply_rope(x, rot)
    assert y.dtype == torch.float64
    c, s = torch.cos(ang)[:, None].double(), torch.sin(ang)[:, None].double()
    e, o = x[..., 0::2], x[..., 1::2]
    torch.testing.assert_close(y[..., 0::2], e * c - o * s, atol=1e-6, rtol=0)
    torch.testing.assert_close(y[..., 1::2], e * s + o * c, atol=1e-6, rtol=0)
    # frequencies theta^(-4j/hd) (spatial) and theta^(-2k/hd) (temporal) for hd = 16
    torch.testing.assert_close(tm.SpatialRoPE(16).inv_freq,
                               torch.tensor([1.0, 0.1, 0.01, 0.001]))
    torch.testing.assert_close(tm.TemporalRoPE(16).freqs[1].angle(),
                               torch.tensor([10000.0 ** (-k / 8) for k in range(8)]))


def test_norms_and_ffns():
    torch.manual_seed(0)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    rms = tm.RMSNorm(16)
    rms.weight.data.uniform_(0.5, 1.5)
    ref = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(
        torch.bfloat16) * rms.weight
    torch.testing.assert_close(rms(x), ref)
    mlp = tm.Mlp(16, 40)
    xf = torch.randn(3, 16)
    h = mlp.fc1(xf)
    torch.testing.assert_close(mlp(xf), mlp.fc2(0.5 * h * (1 + torch.erf(h / 2**0.5))))
    sw = tm.SwiGLU(16, 40)
    torch.testing.assert_close(
        sw(xf), sw.down_proj(torch.nn.functional.silu(sw.gate_proj(xf)) * sw.up_proj(xf)))
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert getattr(sw, name).bias is None


def test_drop_path():
    dp = tm.DropPath(0.5)
    x = torch.ones(4000, 3)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert (y[:, 0] == y[:, 1]).all()  # per sample
    assert 0.4 < (y[:, 0] == 0).float().mean() < 0.6


def test_dropout_must_be_zero():
    cfg = make_config("reference_head", "nano", sensor_labels=("srtm",))
    for cls in (tm.Encoder, tm.LatentPredictor, tm.AutoEncoder):
        with pytest.raises(ValueError, match="dropout"):
            cls(cfg, dropout=0.1)
    with pytest.raises(ValueError, match="dropout"):
        tm.GroupedQueryAttention(16, 2, dropout=0.1)


def test_month_embedding_rules():
    torch.manual_seed(0)
    me = tm.CyclicMonthEmbed(8)
    months = torch.tensor([[1, 5, 11]])
    t = torch.tensor([[0, 2, 5, -1]])
    out = me.per_token(months, t)
    emb = me(months)[0]
    torch.testing.assert_close(out[0, 0], emb[0])
    torch.testing.assert_close(out[0, 1], emb[2])
    torch.testing.assert_close(out[0, 2], emb[2])  # clamped to T_m - 1
    torch.testing.assert_close(out[0, 3], emb.mean(0))
    one = me.per_token(months[:, :1], t)
    torch.testing.assert_close(one[0], emb[:1].expand(4, 8))
    raw = me.raw_embeddings[3]
    torch.testing.assert_close(raw, torch.tensor([1.0, 0.0]), atol=1e-7, rtol=0)


# --------------------------------------------------------------------------------------
# Decoder, composite models, initialisation


def _small(preset, **kw):
    base = dict(sensor_labels=("sentinel2_l2a", "srtm"), embed_dim=32, depth=1, num_heads=2,
                decoder_depth=1, decoder_num_heads=2, drop_path=0.0)
    if preset == "design_card":
        base.update(num_kv_heads=1, decoder_num_kv_heads=1)
    base.update(kw)
    return make_config(preset, "nano", **base)


def _inputs(b=2, hw=8):
    g = torch.Generator().manual_seed(1)
    return {"sentinel2_l2a": torch.randn(b, 12, hw, hw, 2, generator=g),
            "srtm": torch.randn(b, 1, hw, hw, generator=g)}


def _equal_count_mask(n: int, b: int, type_pos, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, n), np.int64)
    free = [i for i in range(n) if i not in type_pos]
    for i in range(b):
        perm = rng.permutation(free)
        mask[i, perm[:4]] = tm.PREDICTED
        mask[i, perm[4:6]] = tm.TARGET_ONLY
        mask[i, perm[6:7]] = tm.ABSENT
    return torch.from_numpy(mask)


def test_head_decoder_quirk_and_batch_independence():
    torch.manual_seed(0)
    cfg = _small("reference_head")
    model = tm.LatentPredictor(cfg).eval()
    x = _inputs()
    ids = model.encoder.token_ids(x, 4)
    n = ids.sensor.shape[0]
    type_pos = [0, n - 5]
    mask = _equal_count_mask(n, 2, type_pos)
    tokens = torch.randn(2, n, 32)
    args = (ids.sensor[None], ids.spatial[None], ids.time[None], None, 4, None)
    with torch.no_grad():
        both = model.decoder(tokens, mask, *args)
        alone = model.decoder(tokens[1:], mask[1:], *args)
        torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)
        # unequal counts: sample 1 loses one PREDICTED -> its first VISIBLE token fills the
        # surplus query slot and is decoded as a query (the original's behaviour)
        m2 = mask.clone()
        drop = int(torch.nonzero(m2[1] == tm.PREDICTED)[0])
        m2[1, drop] = tm.VISIBLE_ENCODER
        first_vis = int(torch.nonzero(m2[1] == tm.VISIBLE_ENCODER)[0])
        quirk = model.decoder(tokens, m2, *args)
        solo = model.decoder(tokens[1:], m2[1:], *args)
        assert not torch.allclose(quirk[1, first_vis], solo[0, first_vis], atol=1e-4)
        # ... while sample 0 (the full count) is unaffected
        torch.testing.assert_close(quirk[0], both[0], atol=1e-5, rtol=1e-5)
        # without PREDICTED tokens the decoder only re-encodes and normalises
        none = model.decoder(tokens, torch.zeros_like(mask), *args)
        assert none.shape == tokens.shape


@pytest.mark.parametrize("preset", ["reference_head", "design_card"])
def test_latent_predictor_head_api(preset):
    torch.manual_seed(0)
    model = tm.LatentPredictor(_small(preset)).eval()
    x = _inputs()
    months = torch.tensor([[0, 6], [3, 11]])
    n = model.encoder.token_ids(x, 4).sensor.shape[0]
    mask = _equal_count_mask(n, 2, [0, n - 5])
    out = model(x, visibility_mask=mask, patch_size=4, month_indices=months)
    assert out["predictions"].shape == (2, 4, 32) and out["targets"].shape == (2, 4, 32)
    assert out["online_proj"].shape == (2, 4, model.config.projection_dim)
    torch.testing.assert_close(out["online_proj"].norm(dim=-1), torch.ones(2, 4))
    assert out["encoder_pooled"].shape == (2, 32)
    out["predictions"].sum().backward()
    assert model.encoder.tokenizer.patch_embeds["srtm"].proj.weight.grad is not None
    assert all(p.grad is None for p in model.target_encoder.parameters())
    # targets equal the target encoder's tokens at the PREDICTED positions
    with torch.no_grad():
        keep = tm._padded_indices(mask != tm.ABSENT)
        sub = model.target_encoder(x, patch_size=4, month_indices=months, mask_indices=keep)[0]
        full = tm._scatter_tokens(sub, keep, n)
    idx = tm._predicted_positions(mask)
    torch.testing.assert_close(out["targets"], tm._gather_tokens(full, idx))
    c = model(x, visibility_mask=mask, patch_size=4, contrastive_only=True)
    assert set(c) == {"online_proj", "target_proj"} and c["online_proj"].shape[0] == 2
    u = model(x, patch_size=4)
    assert u["predictions"].shape == (2, n, 32)


def test_padded_indices_duplicate_last():
    sel = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    np.testing.assert_array_equal(tm._padded_indices(sel).numpy(),
                                  [[0, 2, 3], [1, 1, 1], [0, 0, 0]])


def test_latent_predictor_v1_api():
    torch.manual_seed(0)
    model = tm.LatentPredictor(_small("reference_v1")).eval()
    x = {"sentinel2_l2a": torch.randn(2, 12, 16, 16, 2), "srtm": torch.randn(2, 1, 16, 16)}
    vis = torch.tensor([[0, 1, 2, 5, 7], [0, 2, 3, 4, 9]])
    tgt = torch.tensor([[3, 4, 6], [1, 5, 6]])
    out = model(x, visible_indices=vis, target_indices=tgt, patch_size=8)
    assert out["predictions"].shape == (2, 3, 32)
    # no positional signal in the v1 decoder: all predictions of a sample are identical
    torch.testing.assert_close(out["predictions"][:, 0], out["predictions"][:, 2])
    c = model(x, patch_size=8, contrastive_only=True)
    assert c["online_proj"].shape == (2, model.config.projection_dim)
    with pytest.raises(ValueError):
        model(x, visibility_mask=torch.zeros(2, 5, dtype=torch.long))


def test_initialisation_and_ema():
    torch.manual_seed(0)
    cfg = _small("reference_v1", embed_dim=256, num_heads=4, decoder_num_heads=4)
    model = tm.LatentPredictor(cfg)
    for (k, a), (_, b) in zip(model.encoder.state_dict().items(),
                              model.target_encoder.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not torch.equal(model.online_proj.net[0].weight, model.target_proj.net[0].weight)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    assert not any(p.requires_grad for p in model.target_proj.parameters())
    emb = model.encoder.tokenizer.sensor_embed.embedding.weight.detach()
    assert 0.8 < float(emb.std()) < 1.2
    tok = model.encoder.tokenizer.sensor_type_tokens["srtm"].detach()
    assert 0.01 < float(tok.std()) < 0.03
    assert 0.01 < float(model.decoder.mask_token.detach().std()) < 0.03
    w = model.encoder.transformer.layers[0].self_attn.q_proj.weight.detach()
    assert float(w.abs().max()) <= 1 / 256**0.5
    # EMA step: m = 0.996 at step 0
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = model.target_encoder.norm.weight.clone()
    online = model.encoder.norm.weight.detach().clone()
    m = model.step_ema()
    assert m == pytest.approx(0.996) and int(model._step) == 1
    torch.testing.assert_close(model.target_encoder.norm.weight, 0.996 * before + 0.004 * online)


def test_design_card_key_naming():
    cfg = make_config("design_card", "nano", sensor_labels=("sentinel2_l2a", "srtm"))
    with torch.device("meta"):
        model = tm.LatentPredictor(cfg)
    sd = tm.state_dict_shapes(model)
    p = "encoder.transformer.layers.0."
    assert sd[p + "norm1.weight"] == (128,) and p + "norm1.bias" not in sd
    assert sd[p + "attn.q_proj.weight"] == (128, 128)
    assert sd[p + "attn.k_proj.weight"] == (32, 128)  # 2 KV heads of 16
    assert sd[p + "mlp.gate_proj.weight"] == (344, 128)
    assert sd[p + "mlp.down_proj.weight"] == (128, 344)
    assert p + "attn.q_proj.bias" not in sd
    assert sd["decoder.input_norm.weight"] == (128,) and "decoder.input_norm.bias" not in sd
    assert sd["decoder.transformer.layers.0.attn.v_proj.weight"] == (32, 128)
    assert sd["decoder.encoder_to_decoder_embed.bias"] == (128,)
    assert sd["encoder.norm.weight"] == (128,) and "encoder.norm.bias" not in sd


def test_autoencoder_dualbranch_spatiotemporal_run():
    torch.manual_seed(0)
    cfg = make_config("reference_head", "nano", sensor_labels=("srtm",), embed_dim=32, depth=1,
                      num_heads=2, decoder_depth=1, decoder_num_heads=2, drop_path=0.0,
                      axial_depth=1, pooling_heads=2, out_channels=1)
    x = {"srtm": torch.randn(2, 1, 16, 16)}
    mask = torch.tensor([[0, 2, 2, 2, 2], [0, 2, 2, 2, 2]])
    ae = tm.AutoEncoder(cfg).eval()
    out = ae(x, visibility_mask=mask, height=16, width=16)
    assert out["reconstructed"].shape == (2, 1, 16, 16)
    db = tm.DualBranch(cfg).eval()
    out = db(x, visibility_mask=mask, height=16, width=16)
    assert out["latent_predictions"].shape == (2, 4, 32)
    assert out["reconstructed"].shape == (2, 1, 16, 16)
    st = tm.SpatioTemporalEncoder(cfg).eval()
    out = st(x, H=2, W=2, T=1)
    assert out["pooled"].shape == (2, 32)
    assert out["projected"].shape == (2, cfg.projection_dim)
    with pytest.raises(ValueError):
        st(x, H=3, W=2, T=1)


def test_pixel_head_fold():
    ph = tm.PixelHead(4, 2, 3)
    with torch.no_grad():
        ph.proj.weight.zero_()
        ph.proj.bias.copy_(torch.arange(12.0))
    img = ph(torch.zeros(1, 6, 4), 4, 6)
    assert img.shape == (1, 3, 4, 6)
    # token vector laid out channel-major: c*p*p + i*p + j
    assert img[0, 1, 1, 0] == 1 * 4 + 1 * 2 + 0
    assert img[0, 2, 3, 5] == 2 * 4 + 1 * 2 + 1


def test_bad_patch_sizes_masks_and_indices():
    cfg = make_config("reference_head", "nano", sensor_labels=("srtm",), embed_dim=32,
                      depth=1, num_heads=2, decoder_depth=1, decoder_num_heads=2)
    model = tm.LatentPredictor(cfg).eval()
    x = {"srtm": torch.zeros(2, 1, 8, 8)}  # 1 type token + 2x2 patches at P = 4
    for p in (0, -4, 2.5):
        with pytest.raises(ValueError, match=r"^patch_size must be a positive integer"):
            model.encoder(x, patch_size=p)
    with pytest.raises(ValueError, match=r"^mask_indices: token positions must be in \[0, 5\)"
                                         r" \(the input has 5 tokens\), got values from 0 to 5$"):
        model.encoder(x, patch_size=4, mask_indices=torch.tensor([[0, 5], [1, 2]]))
    with pytest.raises(ValueError, match=r"^mask_indices: expected a \(2, K\) integer tensor"):
        model.encoder(x, patch_size=4, mask_indices=torch.tensor([0, 1]))
    good = torch.tensor([[0, 2, 2, 1, 3], [0, 2, 2, 0, 1]])
    assert model(x, visibility_mask=good, patch_size=4)["predictions"].shape == (2, 2, 32)
    for bad, match in [
        (good.bool(), r"^visibility_mask must be a \(B, N\) = \(2, 5\) integer tensor of token "
                      r"states \(0 VISIBLE, 1 TARGET_ONLY, 2 PREDICTED, 3 ABSENT\), got "
                      r"torch.bool \(2, 5\)$"),
        (good[:, :4], r"^visibility_mask must be a \(B, N\) = \(2, 5\) .* got torch.int64 \(2, 4\)"),
        (good + 1, r"^visibility_mask: token states are 0 VISIBLE, .*; got values from 1 to 4$"),
    ]:
        with pytest.raises(ValueError, match=match):
            model(x, visibility_mask=bad, patch_size=4)
    ae = tm.AutoEncoder(cfg.replace(out_channels=1)).eval()
    with pytest.raises(ValueError, match=r"^visibility_mask: token states"):
        ae(x, visibility_mask=good - 1, patch_size=4, height=8, width=8)
