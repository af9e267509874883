"""torch_bridge export/import: the original's checkpoint format (its state-dict keys and
its config.json), bit-exact round trips in both directions and formats, golden vectors through an
imported checkpoint, refusals, and the command lines."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from flax import nnx, traverse_util  # noqa: E402

from spacenit_jax import checkpoint as ckpt  # noqa: E402
from spacenit_jax.model import models  # noqa: E402
from spacenit_jax.model import state_dict as sdm  # noqa: E402
from spacenit_jax.model.config import config_to_dict, make_config  # noqa: E402
from torch_bridge import export as ex  # noqa: E402
from torch_bridge import import_checkpoint as im  # noqa: E402
from torch_bridge import load as tl  # noqa: E402
from torch_bridge import reference_config as rc  # noqa: E402
from torch_bridge import torch_model as tm  # noqa: E402

LABELS = ("sentinel2_l2a", "sentinel1", "srtm")
SMALL = dict(embed_dim=32, depth=2, num_heads=4, decoder_depth=1, decoder_num_heads=4)
OFFICIAL = ("sentinel2_l2a", "sentinel1", "landsat", "worldcover", "srtm",
            "openstreetmap_raster", "wri_canopy_height_map", "cdl", "worldcereal")
ORIGINAL_HEAD_NANO_CONFIG = {  # the original's config.json "model" dict, verbatim
    "_CLASS_": "spacenit.arch.models.LatentPredictorConfig",
    "encoder": {"_CLASS_": "spacenit.arch.encoder.EncoderConfig", "embed_dim": 128, "depth": 4,
                "num_heads": 8, "ffn_expansion": 4.0, "dropout": 0.0, "drop_path": 0.1,
                "base_patch_size": 8, "max_grid": 64, "max_timesteps": 64,
                "reference_gsd": 10.0, "sensor_labels": list(OFFICIAL), "rope_theta": 10000.0,
                "tokenization_config": {
                    "_CLASS_": "spacenit.arch.band_tokenization.TokenizationConfig",
                    "custom_layouts": {}}},
    "decoder_depth": 4, "decoder_num_heads": 8, "ema_momentum": 1.0, "ema_momentum_end": 1.0,
    "ema_warmup_steps": 10000, "projection_dim": 128}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(preset: str, **kw):
    extra = dict(num_kv_heads=2, decoder_num_kv_heads=2) if preset == "design_card" else {}
    return make_config(preset, "nano", sensor_labels=LABELS, **{**SMALL, **extra, **kw})


def random_params(cfg, kind="latent_predictor", seed=0):
    """Random values for every parameter of our JAX model (from shapes: no init run)."""
    tmpl = im.param_shapes(cfg, kind)
    rng = np.random.default_rng(seed)
    return {p: rng.standard_normal(v.shape, dtype=np.float32) for p, v in tmpl.items()}


def make_workdir(path, cfg, kind, flat, step):
    config = {"model": {"config": config_to_dict(cfg), "kind": kind}}
    ckpt.write_params_checkpoint(path, traverse_util.unflatten_dict(flat), config, step=step)
    return path


def restored_flat(workdir):
    params, step = ckpt.restore_params(workdir)
    return ex.flatten_params(params), step


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


# ======================================================================================
# The original's state-dict keys and shapes, and its config dict


def original_head_nano_keys() -> dict[str, tuple]:
    """The original latest revision's Nano LatentPredictor keys and shapes, written out."""
    d = 128
    enc = {}
    for key, k in {"sentinel2_l2a__g0": 256, "sentinel2_l2a__g1": 384, "sentinel2_l2a__g2": 128,
                   "sentinel1": 128, "landsat__g0": 64, "landsat__g1": 640, "worldcover": 64,
                   "srtm": 64, "openstreetmap_raster": 1920, "wri_canopy_height_map": 64,
                   "cdl": 64, "worldcereal": 512}.items():
        enc[f"tokenizer.patch_embeds.{key}.proj.weight"] = (d, k)
        enc[f"tokenizer.patch_embeds.{key}.proj.bias"] = (d,)
    enc["tokenizer.sensor_embed.embedding.weight"] = (9, d)
    for label in OFFICIAL:
        enc[f"tokenizer.sensor_type_tokens.{label}"] = (1, 1, d)
    enc["month_embed.proj.weight"] = (d, 2)

    def head_block(p, hidden):
        out = {p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "norm2.weight": (d,),
               p + "norm2.bias": (d,), p + "mlp.fc1.weight": (hidden, d),
               p + "mlp.fc1.bias": (hidden,), p + "mlp.fc2.weight": (d, hidden),
               p + "mlp.fc2.bias": (d,)}
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"attn.{n}.weight"] = (d, d)
            out[p + f"attn.{n}.bias"] = (d,)
        return out

    for i in range(4):
        enc.update(head_block(f"transformer.layers.{i}.", 512))
    enc["norm.weight"] = enc["norm.bias"] = (d,)
    out = {"_step": ()}
    for prefix in ("encoder.", "target_encoder."):
        out.update({prefix + k: v for k, v in enc.items()})
    dec = {"mask_token": (1, 1, d), "input_norm.weight": (d,), "input_norm.bias": (d,),
           "encoder_to_decoder_embed.weight": (d, d), "encoder_to_decoder_embed.bias": (d,),
           "month_embed.proj.weight": (d, 2), "sensor_embed.embedding.weight": (9, d),
           "norm.weight": (d,), "norm.bias": (d,)}
    for i in range(4):
        dec.update(head_block(f"transformer.layers.{i}.", 341))
    out.update({"decoder." + k: v for k, v in dec.items()})
    for head in ("online_proj", "target_proj"):
        out.update({f"{head}.net.0.weight": (d, d), f"{head}.net.0.bias": (d,),
                    f"{head}.net.2.weight": (128, d), f"{head}.net.2.bias": (128,)})
    return out


def original_v1_nano_keys() -> dict[str, tuple]:
    """The v1 original's Nano LatentPredictor keys and shapes, written out."""
    d = 128
    enc = {}
    for key, k in {"sentinel2_l2a": 3072, "sentinel1": 512, "landsat": 2816, "worldcover": 256,
                   "srtm": 256, "openstreetmap_raster": 7680, "wri_canopy_height_map": 256,
                   "cdl": 256, "worldcereal": 2048}.items():
        enc[f"tokenizer.patch_embeds.{key}.proj.weight"] = (d, k)
        enc[f"tokenizer.patch_embeds.{key}.proj.bias"] = (d,)
        enc[f"tokenizer.sensor_type_tokens.{key}"] = (1, 1, d)
    enc["tokenizer.sensor_embed.embedding.weight"] = (9, d)
    enc["month_embed.proj.weight"] = (d, 2)

    def v1_block(p, hidden, cross):
        out = {p + "self_attn_norm.weight": (d,), p + "ffn_norm.weight": (d,),
               p + "ffn.gate_proj.weight": (hidden, d), p + "ffn.up_proj.weight": (hidden, d),
               p + "ffn.down_proj.weight": (d, hidden)}
        for kind in ("self_attn",) + (("cross_attn",) if cross else ()):
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                out[p + f"{kind}.{n}.weight"] = (d, d)
        if cross:
            out[p + "cross_attn_norm.weight"] = (d,)
        return out

    for i in range(4):
        enc.update(v1_block(f"transformer.layers.{i}.", 512, False))
    enc["norm.weight"] = (d,)
    out = {"_step": ()}
    for prefix in ("encoder.", "target_encoder."):
        out.update({prefix + k: v for k, v in enc.items()})
    dec = {"mask_token": (1, 1, d), "norm.weight": (d,)}
    for i in range(4):
        dec.update(v1_block(f"transformer.layers.{i}.", 344, True))
    dec.update(v1_block("context_cross_attn.layers.0.", 344, True))
    out.update({"decoder." + k: v for k, v in dec.items()})
    for head in ("online_proj", "target_proj"):
        out.update({f"{head}.net.0.weight": (d, d), f"{head}.net.0.bias": (d,),
                    f"{head}.net.2.weight": (256, d), f"{head}.net.2.bias": (256,)})
    return out


@pytest.mark.parametrize("preset,spec,count", [
    ("reference_head", original_head_nano_keys, 284), ("reference_v1", original_v1_nano_keys, 213)])
def test_reference_export_of_official_nano_is_the_originals_format(tmp_path, preset, spec, count):
    cfg = make_config(preset, "nano")
    flat = random_params(cfg)
    out = ex.export_params(flat, tmp_path / "ref", cfg=cfg, kind="latent_predictor",
                           format="reference", step=123)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.pth"]
    sd = torch.load(out / "weights.pth", weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == spec() and len(sd) == count
    assert next(iter(sd)) == "_step" and sd["_step"].dtype == torch.int64
    assert int(sd["_step"]) == 123
    assert all(v.dtype == torch.float32 and v.is_contiguous() for k, v in sd.items()
               if k != "_step")
    model_json = json.loads((out / "config.json").read_text())
    assert list(model_json) == ["model"]
    if preset == "reference_head":
        assert model_json["model"] == ORIGINAL_HEAD_NANO_CONFIG
    else:  # v1: the same without drop_path and tokenization_config, ...
        expected = json.loads(json.dumps(ORIGINAL_HEAD_NANO_CONFIG))
        del expected["encoder"]["drop_path"], expected["encoder"]["tokenization_config"]
        expected["encoder"]["base_patch_size"] = 16
        expected.update(ema_momentum=0.996, projection_dim=256)
        assert model_json["model"] == expected
    # the original's loader path: build from "model", strict load of weights.pth
    cfg2, kind, notes = rc.parse_model_dict(model_json["model"], sd.keys())
    assert (cfg2, kind, notes) == (cfg, "latent_predictor", [])
    module = tm.build_model(cfg2, kind)
    module.load_state_dict(sd, strict=True)
    w = sd["encoder.transformer.layers.1." + ("attn.q_proj.weight" if preset == "reference_head"
                                               else "self_attn.q_proj.weight")]
    path = ("encoder", "blocks", "layers", 1, "attn", "q", "kernel")
    np.testing.assert_array_equal(w.numpy(), flat[path].T)


@pytest.mark.parametrize("preset,count,params", [
    ("reference_head", 540, 201_768_704), ("reference_v1", 357, 301_694_720)])
def test_base_key_set_abstractly(preset, count, params):
    """Base is checked from shapes only: our JAX mapping vs the PyTorch module on meta."""
    cfg = make_config(preset, "base")
    ours = im.expected_state_dict_shapes(cfg, "latent_predictor")
    assert ours == ex.torch_key_shapes(cfg, "latent_predictor")
    assert len(ours) == count
    assert sum(int(np.prod(s)) for k, s in ours.items() if k != "_step") == params
    assert rc.model_dict(cfg, "latent_predictor")["encoder"]["embed_dim"] == 768


def test_other_kinds_and_encoder_only(tmp_path):
    expected_class = {
        "autoencoder": ("spacenit.arch.models.AutoEncoderConfig",
                        {"decoder_depth", "decoder_num_heads", "out_channels"}),
        "dual_branch": ("spacenit.arch.models.DualBranchConfig",
                        {"decoder_depth", "decoder_num_heads", "ema_momentum",
                         "ema_momentum_end", "ema_warmup_steps", "projection_dim",
                         "out_channels"}),
        "spatiotemporal": ("spacenit.arch.models.SpatioTemporalConfig",
                           {"axial_depth", "projection_dim"}),
    }
    for kind, (cls, fields) in expected_class.items():
        cfg = small("reference_head", **({"axial_depth": 1} if kind == "spatiotemporal"
                                          else {"out_channels": 6}))
        flat = random_params(cfg, kind)
        out = ex.export_params(flat, tmp_path / kind, cfg=cfg, kind=kind, format="reference",
                               step=5)
        model_json = json.loads((out / "config.json").read_text())["model"]
        assert model_json["_CLASS_"] == cls
        assert set(model_json) == {"_CLASS_", "encoder"} | fields
        sd = torch.load(out / "weights.pth", weights_only=True)
        assert ("_step" in sd) == (kind == "dual_branch")
        tm.build_model(cfg, kind).load_state_dict(sd, strict=True)
        src = tl.read_source(out)
        assert src.kind == kind
        if kind != "spatiotemporal":  # no decoder there: its fields are not in the file
            assert src.cfg == cfg
        assert_same_params(im.state_dict_to_params(src.cfg, kind, src.state_dict), flat)
        assert src.step == (5 if kind == "dual_branch" else 0)  # only _step is persisted
        st = ex.export_params(flat, tmp_path / f"{kind}_st", cfg=cfg, kind=kind, step=5)
        assert tl.read_source(st).step == 5 and tl.read_source(st).cfg == cfg
    # --encoder-only from a LatentPredictor: bare EncoderConfig, keys without the prefix
    flat = random_params(cfg)
    out = ex.export_params(flat, tmp_path / "enc", cfg=cfg, kind="latent_predictor",
                           format="reference", encoder_only=True)
    model_json = json.loads((out / "config.json").read_text())["model"]
    assert model_json == rc.encoder_dict(cfg)
    assert model_json["_CLASS_"] == "spacenit.arch.encoder.EncoderConfig"
    sd = torch.load(out / "weights.pth", weights_only=True)
    assert "_step" not in sd and not any(k.startswith("encoder.") for k in sd)
    tm.Encoder(cfg).load_state_dict(sd, strict=True)
    path = im.import_checkpoint(out, tmp_path / "enc_jax")
    got, step = restored_flat(tmp_path / "enc_jax")
    assert step == 0 and path.name == "0"
    assert_same_params(got, ex.encoder_params(flat, "latent_predictor"))
    # the v1 EncoderConfig has no drop_path / tokenization_config
    v1 = rc.model_dict(small("reference_v1"), "dual_branch")
    assert "drop_path" not in v1["encoder"] and "tokenization_config" not in v1["encoder"]


# ======================================================================================
# Round trips


@pytest.mark.parametrize("preset,fmt", [
    ("reference_head", "reference"), ("reference_head", "safetensors"),
    ("reference_v1", "reference"), ("reference_v1", "safetensors"),
    ("design_card", "safetensors")])
def test_jax_torch_jax_is_bit_identical(tmp_path, preset, fmt):
    cfg = small(preset)
    flat = random_params(cfg, seed=1)
    make_workdir(tmp_path / "run", cfg, "latent_predictor", flat, step=42)
    out = ex.export_checkpoint(tmp_path / "run", tmp_path / "export", format=fmt)
    names = {"reference": ["config.json", "weights.pth"],
             "safetensors": ["config.json", "model.safetensors"]}[fmt]
    assert sorted(p.name for p in out.iterdir()) == names
    module = tl.load_torch_model(out)  # strict load into our PyTorch module
    assert int(module._step) == 42
    im.import_checkpoint(out, tmp_path / "back")
    got, step = restored_flat(tmp_path / "back")
    assert step == 42
    assert_same_params(got, flat)
    cfg_back, kind = ckpt.model_config(ckpt.read_config(tmp_path / "back"))
    assert cfg_back == cfg and kind == "latent_predictor"


def _torch_module(cfg, kind="latent_predictor", step=9):
    torch.manual_seed(0)
    module = tm.build_model(cfg, kind)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if hasattr(module, "_step"):
            module._step.fill_(step)
    return module


@pytest.mark.parametrize("preset", ["reference_head", "reference_v1", "design_card"])
def test_torch_jax_torch_is_bit_identical(tmp_path, preset):
    from safetensors.torch import save_file

    cfg = small(preset)
    module = _torch_module(cfg)
    sd = module.state_dict()
    fmts = ["safetensors"] + (["reference"] if preset != "design_card" else [])
    for fmt in fmts:
        src = tmp_path / f"src_{fmt}"
        src.mkdir()
        if fmt == "reference":  # what the original writes: "model" dict + torch.save(sd)
            (src / "config.json").write_text(json.dumps(
                {"model": rc.model_dict(cfg, "latent_predictor"), "trainer": {"lr": 1e-3}}))
            torch.save(sd, src / "weights.pth")
        else:
            (src / "config.json").write_text(json.dumps(
                {"format": ex.SAFETENSORS_FORMAT, "kind": "latent_predictor", "step": 9,
                 "config": config_to_dict(cfg)}))
            save_file({k: v.contiguous() for k, v in sd.items()}, src / "model.safetensors")
        im.import_checkpoint(src, tmp_path / f"jax_{fmt}")
        out = ex.export_checkpoint(tmp_path / f"jax_{fmt}", tmp_path / f"out_{fmt}", format=fmt)
        if fmt == "reference":
            back = torch.load(out / "weights.pth", weights_only=True)
        else:
            from safetensors.torch import load_file

            back = load_file(out / "model.safetensors")
        if fmt == "reference":  # the module's key order, _step first (safetensors sorts)
            assert list(back) == list(sd)
        assert back.keys() == sd.keys()
        for k, v in sd.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_scanned_layers_export_to_the_same_keys(tmp_path):
    cfg = small("reference_head")
    flat = random_params(cfg, seed=2)
    scfg = cfg.replace(scan_layers=True)
    stacked = sdm.stack_layers(flat, scfg)
    assert stacked.keys() == sdm.flat_params(
        nnx.eval_shape(lambda: models.build_model(scfg))).keys()
    sd_plain, _ = ex.torch_state_dict(cfg, "latent_predictor", flat)
    sd_scan, _ = ex.torch_state_dict(scfg, "latent_predictor", stacked)
    assert list(sd_plain) == list(sd_scan)
    for k in sd_plain:
        assert np.array_equal(sd_plain[k], sd_scan[k]), k
    make_workdir(tmp_path / "run", scfg, "latent_predictor", stacked, step=3)
    for fmt in ex.FORMATS:
        out = ex.export_checkpoint(tmp_path / "run", tmp_path / fmt, format=fmt)
        # import back into a scanned (reference) or the recorded (safetensors) layout
        extra = {"scan_layers": True} if fmt == "reference" else {}
        im.import_checkpoint(out, tmp_path / f"{fmt}_back", **extra)
        got, _ = restored_flat(tmp_path / f"{fmt}_back")
        assert_same_params(got, stacked)


def test_custom_token_layouts_round_trip():
    custom = (("sentinel2_l2a", (("B04", "B03", "B02"), ("B08",), ("B11", "B12"))),)
    cfg = small("reference_head", custom_groups=custom)
    d = rc.model_dict(cfg, "latent_predictor")
    layouts = d["encoder"]["tokenization_config"]["custom_layouts"]
    assert layouts == {"sentinel2_l2a": {
        "_CLASS_": "spacenit.arch.band_tokenization.SensorTokenLayout",
        "channel_groups": [["B04", "B03", "B02"], ["B08"], ["B11", "B12"]]}}
    assert rc.parse_model_dict(d)[0] == cfg
    assert ex.torch_key_shapes(cfg, "encoder")[
        "tokenizer.patch_embeds.sentinel2_l2a__g0.proj.weight"] == (32, 3 * 64)
    # one token group per sensor, but a custom layout for S1: all other multi-group
    # sensors are written as explicit single groups, and the model is the same
    one = small("reference_head", spectral_groups=False,
                custom_groups=(("sentinel1", (("vh",), ("vv",))),))
    d = rc.model_dict(one, "encoder")
    assert set(d["tokenization_config"]["custom_layouts"]) == {"sentinel1", "sentinel2_l2a"}
    back = rc.parse_model_dict(d)[0]
    assert [g.channels for g in back.layout.groups] == [g.channels for g in one.layout.groups]
    assert ex.torch_key_shapes(back, "encoder") == ex.torch_key_shapes(one, "encoder")
    # a layout equal to the sensor's spectral groups is no custom layout
    same = {"sentinel1": {"_CLASS_": rc.LAYOUT_CLASS, "channel_groups": [["vv", "vh"]]}}
    enc = dict(rc.encoder_dict(small("reference_head")),
               tokenization_config={"_CLASS_": rc.TOKENIZATION_CLASS, "custom_layouts": same})
    assert rc.parse_model_dict(enc)[0].layout.custom_groups == ()


def test_revision_detection_rule():
    head = rc.encoder_dict(small("reference_head"))
    v1 = rc.encoder_dict(small("reference_v1"))
    assert rc.detect_revision(head) == "reference_head"  # drop_path
    assert rc.detect_revision(v1) == "reference_v1"  # no drop_path, P0 16
    bare = {k: v for k, v in head.items() if k not in ("drop_path", "tokenization_config")}
    assert rc.detect_revision(bare) == "reference_head"  # P0 8
    assert rc.detect_revision(dict(bare, base_patch_size=16)) == "reference_v1"
    tok = dict(bare, base_patch_size=16, tokenization_config=head["tokenization_config"])
    assert rc.detect_revision(tok) == "reference_head"
    # the weights decide when given
    v1_keys = ["encoder.transformer.layers.0.self_attn.q_proj.weight"]
    head_keys = ["encoder.transformer.layers.0.attn.q_proj.weight"]
    assert rc.detect_revision(bare, v1_keys) == "reference_v1"
    assert rc.detect_revision(dict(v1), head_keys) == "reference_head"
    with pytest.raises(rc.ReferenceFormatError, match="drop_path.*v1"):
        rc.detect_revision(head, v1_keys)
    # missing fields take the original's defaults, unknown ones are reported
    cfg, kind, notes = rc.parse_model_dict(
        {"_CLASS_": rc.MODEL_CLASSES["latent_predictor"],
         "encoder": {"_CLASS_": rc.ENCODER_CLASS, "embed_dim": 32, "num_heads": 4,
                     "sensor_labels": ["srtm"], "drop_path": 0.0, "swiglu": True}})
    assert (cfg.depth, cfg.decoder_num_heads, cfg.projection_dim, cfg.ema_momentum) == (
        12, 12, 256, 0.996)
    assert cfg.layout.base_patch_size == 16 and not cfg.layout.spectral_groups
    assert cfg.ffn_expansion == pytest.approx(8 / 3) and kind == "latent_predictor"
    assert any("swiglu" in n for n in notes)


# ======================================================================================
# Golden vectors through an imported checkpoint, and the command lines


def golden_dir(data_dir, rev, tmp_path) -> tuple[pathlib.Path, dict]:
    """The golden weights as an original-format checkpoint directory."""
    data = dict(np.load(data_dir / "reference-golden" / f"reference_{rev}_small.npz"))
    model_json = json.loads(str(data["config_json"]))
    model_json = model_json.get("model", model_json)
    src = tmp_path / f"golden_{rev}"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model": model_json}))
    torch.save({k[2:]: torch.from_numpy(np.asarray(v)) for k, v in data.items()
                if k.startswith("w/")}, src / "weights.pth")
    return src, data


@pytest.mark.parametrize("rev", ["head", "v1"])
def test_golden_checkpoint_imports_and_reproduces(data_dir, tmp_path, rev):
    """The original's golden weights as a checkpoint directory -> JAX checkpoint: the
    config dict round-trips, the parameters are exactly those of the direct mapping, and
    the online encoder reproduces the golden tokens (the latest revision's full
    LatentPredictor too; tests/test_model.py covers v1's with the same parameters)."""
    src, data = golden_dir(data_dir, rev, tmp_path)
    model_json = json.loads((src / "config.json").read_text())["model"]
    im.import_checkpoint(src, tmp_path / "jax")
    cfg, kind = ckpt.model_config(ckpt.read_config(tmp_path / "jax"))
    assert cfg.preset == f"reference_{rev}" and kind == "latent_predictor"
    assert rc.model_dict(cfg, kind) == model_json  # the config dict round-trips exactly
    flat, step = restored_flat(tmp_path / "jax")
    assert step == int(data["w/_step"])
    weights = {k[2:]: v for k, v in data.items() if k.startswith("w/")}
    assert_same_params(flat, sdm.from_state_dict(cfg, weights, im.param_shapes(cfg, kind)))
    images = {k[2:]: jnp.asarray(np.moveaxis(v, 1, -1)) for k, v in data.items()
              if k.startswith("x/")}
    months = jnp.asarray(data["month_indices"])
    if rev == "v1":
        model = ex.jax_encoder(cfg, kind, flat)
        tokens = nnx.jit(lambda m, x, mo: m.encode_images(x, patch_size=4, months=mo)[0])(
            model, images, months)
        np.testing.assert_allclose(tokens, data["y/encoder_tokens_p4"], atol=1e-5, rtol=0)
        return
    model = nnx.eval_shape(lambda: models.build_model(cfg, kind))
    sdm.load_flat(model, flat)
    vis = data["visibility_mask"]

    @nnx.jit
    def forward(model, images, vis, months):
        view = models.view_from_images(cfg, images, visibility=vis, patch_size=4, months=months)
        every = view.tokens._replace(segment=jnp.zeros_like(view.tokens.segment))
        return model.encoder(view.patches, every)[0], model(view)

    tokens, out = forward(model, images, jnp.asarray(vis), months)
    np.testing.assert_allclose(tokens, data["y/encoder_tokens_p4"], atol=1e-5, rtol=0)
    for name in ("predictions", "targets", "online_proj", "target_proj"):
        ref = data[f"y/latent_predictor/{name}"]
        got = models.gather_positions(out[name], vis == models.PREDICTED, ref.shape[1])
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0, err_msg=name)
    np.testing.assert_allclose(out["encoder_pooled"][:, 0],
                               data["y/latent_predictor/encoder_pooled"], atol=1e-5, rtol=0)


def test_cli_end_to_end(data_dir, tmp_path, capsys):
    """golden (original format) -> import CLI -> JAX workdir -> export CLI (both formats,
    --inputs/--outputs): tokens equal the golden outputs, weights equal the golden ones."""
    src, data = golden_dir(data_dir, "head", tmp_path)
    assert im.main(["--source", str(src), "--out", str(tmp_path / "jax")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["preset"] == "reference_head" and summary["step"] == 0
    inputs = {k[2:]: v for k, v in data.items() if k.startswith("x/")}
    np.savez(tmp_path / "in.npz", **inputs, patch_size=np.asarray(8),
             month_indices=data["month_indices"])
    for fmt in ex.FORMATS:
        out = tmp_path / f"out_{fmt}"
        argv = ["--checkpoint", str(tmp_path / "jax"), "--out", str(out), "--format", fmt]
        if fmt == "reference":
            argv += ["--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "o.npz")]
        assert ex.main(argv) == 0, capsys.readouterr().err
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["format"] == fmt and summary["kind"] == "latent_predictor"
        module = tl.load_torch_model(out)
        for k, v in module.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), data[f"w/{k}"], err_msg=k)
    with np.load(tmp_path / "o.npz") as res:
        np.testing.assert_allclose(res["tokens"], data["y/encoder_tokens_p8"], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(res["sensor_ids"], data["y/sensor_ids_p8"])
    # the PyTorch module on the exported weights gives the same tokens as the JAX export
    x = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        tokens = module.encoder(x, patch_size=8, month_indices=torch.from_numpy(
            data["month_indices"]))[0]
    np.testing.assert_allclose(tokens.numpy(), data["y/encoder_tokens_p8"], atol=1e-5, rtol=0)
    # errors are reported, not raised
    assert ex.main(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


# ======================================================================================
# Refusals


def test_refuses_non_reference_presets_and_incompatible_switches(tmp_path):
    flat = random_params(small("design_card"))
    with pytest.raises(rc.ReferenceFormatError, match="design_card.*no counterpart.*safetensors"):
        ex.export_params(flat, tmp_path / "x", cfg=small("design_card"),
                         kind="latent_predictor", format="reference")
    assert not (tmp_path / "x").exists()
    bad = small("reference_head").replace(norm="rms", bias=False)
    with pytest.raises(rc.ReferenceFormatError) as err:
        rc.model_dict(bad, "latent_predictor")
    assert "norm='rms'" in str(err.value) and "bias=False" in str(err.value)
    with pytest.raises(rc.ReferenceFormatError, match="tokenization_config"):
        rc.model_dict(small("reference_v1", spectral_groups=True), "encoder")
    with pytest.raises(rc.ReferenceFormatError, match="pooling_heads"):
        rc.model_dict(small("reference_head", pooling_heads=4), "spatiotemporal")
    # the safetensors format holds any preset
    ex.export_params(flat, tmp_path / "st", cfg=small("design_card"), kind="latent_predictor")


def test_refuses_mismatching_state_dicts(tmp_path):
    cfg = small("reference_head")
    out = ex.export_params(random_params(cfg), tmp_path / "ref", cfg=cfg,
                           kind="latent_predictor", format="reference")
    sd = torch.load(out / "weights.pth", weights_only=True)
    del sd["decoder.norm.bias"]
    sd["encoder.rope.inv_freq"] = torch.zeros(2)
    sd["online_proj.net.0.weight"] = torch.zeros(3, 3)
    torch.save(sd, out / "weights.pth")
    with pytest.raises(sdm.StateDictMismatch) as err:
        im.import_checkpoint(out, tmp_path / "jax")
    msg = str(err.value)
    assert "\n" not in msg
    assert "weights.pth" in msg
    assert "missing keys (1): ['decoder.norm.bias']" in msg
    assert "unexpected keys (1): ['encoder.rope.inv_freq']" in msg
    assert "online_proj.net.0.weight: (3, 3), expected (32, 32)" in msg
    # a LatentPredictor without its _step buffer is not strictly loadable either
    sd = torch.load(tmp_path / "ref" / "weights.pth", weights_only=True)
    sd["decoder.norm.bias"] = torch.zeros(32)
    del sd["encoder.rope.inv_freq"], sd["_step"]
    sd["online_proj.net.0.weight"] = torch.zeros(32, 32)
    torch.save(sd, out / "weights.pth")
    with pytest.raises(sdm.StateDictMismatch, match=r"missing keys \(1\): \['_step'\]"):
        im.import_checkpoint(out, tmp_path / "jax")
    # in-memory export checks the parameters too
    flat = random_params(cfg)
    flat.pop(("decoder", "norm", "bias"))
    with pytest.raises(ValueError, match="missing keys.*decoder.norm.bias"):
        ex.torch_state_dict(cfg, "latent_predictor", flat)


class NotATensor:  # pickled into a weights.pth: weights_only=True must reject it
    pass


def test_refuses_pickled_objects_and_bad_configs(tmp_path):
    cfg = small("reference_head")
    out = ex.export_params(random_params(cfg), tmp_path / "ref", cfg=cfg,
                           kind="latent_predictor", format="reference")
    sd = torch.load(out / "weights.pth", weights_only=True)
    torch.save({**sd, "extra": NotATensor()}, out / "weights.pth")
    with pytest.raises(rc.ReferenceFormatError, match="weights_only=True.*pickled"):
        im.import_checkpoint(out, tmp_path / "jax")
    assert not (tmp_path / "jax").exists()
    torch.save(sd, out / "weights.pth")
    config = json.loads((out / "config.json").read_text())
    del config["model"]["_CLASS_"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(rc.ReferenceFormatError, match="no \"_CLASS_\""):
        tl.read_source(out)
    (out / "config.json").write_text(json.dumps({"trainer": {}}))
    with pytest.raises(rc.ReferenceFormatError, match="neither a top-level \"model\""):
        tl.read_source(out)
    assert im.main(["--source", str(out), "--out", str(tmp_path / "jax")]) == 2


@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_benchmark_step_prints_one_json_line(capsys, autocast):
    from torch_bridge import benchmark_step

    assert benchmark_step.main(["--samples", "2", "--crop-patches", "2", "--timesteps", "2",
                                "--steps", "1", "--warmup", "0", "--autocast", autocast]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["precision"] == ("bf16 autocast" if autocast == "bf16" else "float32")
    assert out["tokens_per_s"] > 0 and np.isfinite(out["loss"])


def test_checkpoint_load_model_reads_exports_of_both_formats(tmp_path):
    """spacenit_jax.checkpoint.load_model(export dir) gives the exported parameters."""
    cfg = small("reference_head")
    flat = random_params(cfg, seed=4)
    for fmt in ex.FORMATS:
        out = ex.export_params(flat, tmp_path / fmt, cfg=cfg, kind="latent_predictor",
                               format=fmt, step=7)
        loaded = ckpt.load_model(out)
        assert (loaded.kind, loaded.step, loaded.cfg, loaded.source) == (
            "latent_predictor", 7, cfg, "export")
        assert_same_params(
            {k: np.asarray(v) for k, v in sdm.flat_params(loaded.model).items()}, flat)
