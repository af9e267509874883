"""Feature extraction: pooling over patch tokens only, ABSENT patches, sharding, compiles."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_tiny_model import SENSOR, tiny_config, tiny_model
from flax import nnx

from spacenit_jax import checkpoint, tracing
from spacenit_jax.eval import features as feat
from spacenit_jax.eval.synthetic import SyntheticClassification
from spacenit_jax.model import models
from spacenit_jax.model.encoder import image_tokens

BATCH = 8  # divides over the 8 test devices


@pytest.fixture(scope="module")
def split():
    return feat.ArraySplit.from_dataset(SyntheticClassification("train", num_samples=20,
                                                                image_size=16))


_encode_images = nnx.jit(lambda e, im: e.encode_images({SENSOR: im}, patch_size=4))


def encoder_tokens(encoder, images):
    """Encoder outputs and the token groups (type tokens have group -1)."""
    x, stream = _encode_images(encoder, jnp.asarray(images))
    return np.asarray(x), np.asarray(stream.group[0])


def test_mean_pools_patch_tokens_only_with_one_compile(split):
    model = tiny_model()
    before = tracing.trace_count("extract")
    ex = feat.FeatureExtractor(model, feat.FeatureConfig(batch_size=BATCH))
    out = ex.extract(split)  # 20 samples = 3 batches, the last one padded
    traced = tracing.trace_count("extract")
    assert traced - before <= 1  # 0 when an earlier test compiled the same program
    assert out.features.shape == (20, 32) and out.features.dtype == np.float32
    np.testing.assert_array_equal(out.labels, np.arange(20) % 10)
    x, group = encoder_tokens(model.encoder, split.images[:BATCH])
    assert (group == -1).sum() == 1 and x.shape[1] == 1 + 3 * 16  # type token + 3 groups x 4x4
    np.testing.assert_allclose(out.features[:BATCH], x[:, group >= 0].mean(1), atol=1e-5)
    assert np.abs(x.mean(1) - x[:, group >= 0].mean(1)).max() > 1e-3  # the type token matters
    # another split size, another extractor of the same structure: no new trace
    small = feat.ArraySplit(split.images[:5], split.labels[:5], SENSOR)
    feat.FeatureExtractor(model, feat.FeatureConfig(batch_size=BATCH)).extract(small)
    assert tracing.trace_count("extract") == traced


def test_sharded_extraction_equals_single_device(split):
    model = tiny_model()
    assert jax.device_count() == 8
    sharded = feat.FeatureExtractor(model, feat.FeatureConfig(batch_size=BATCH))
    single = feat.FeatureExtractor(model, feat.FeatureConfig(batch_size=BATCH),
                                   devices=jax.devices()[:1])
    assert sharded.mesh.devices.size == 8 and single.mesh.devices.size == 1
    batch = sharded.embed_batch(split.images[:BATCH], SENSOR)
    assert len(batch.sharding.device_set) == 8
    np.testing.assert_allclose(sharded.extract(split).features, single.extract(split).features,
                               atol=1e-5)
    # a batch that does not divide over the devices falls back to one device
    assert feat.FeatureExtractor(model, feat.FeatureConfig(batch_size=6)).mesh.devices.size == 1


def test_fsdp_sharded_parameters_stay_on_their_mesh(split):
    """The in-loop case: parameters sharded over the training mesh are used where they are."""
    from spacenit_jax import sharding

    model = tiny_model()
    mesh = sharding.make_mesh(data=4, fsdp=2, tensor=1)
    graphdef, state = nnx.split(model)
    sharded = nnx.merge(graphdef, jax.device_put(state, sharding.state_shardings(mesh, state)))
    ex = feat.FeatureExtractor(sharded, feat.FeatureConfig(batch_size=BATCH))
    assert ex.mesh is mesh
    kernel = ex.state["encoder"]["tokenizer"]["sensor_embed"]["embedding"]
    assert kernel[...] is sharded.encoder.tokenizer.sensor_embed.embedding[...]  # not copied
    plain = feat.FeatureExtractor(model, feat.FeatureConfig(batch_size=BATCH))
    np.testing.assert_allclose(ex.extract(split).features, plain.extract(split).features,
                               atol=1e-5)


def test_absent_patches_are_left_out(split):
    model = tiny_model()
    cfg = tiny_config()
    images = split.images[:BATCH].copy()
    images[0, :4, :8] = -99999  # two whole 4x4 patches
    images[1, :2, :2] = -99999  # part of a patch only: not ABSENT
    images[2] = -99999  # a sample with nothing present
    vis, _, _ = feat.absent_visibility(cfg, {SENSOR: jnp.asarray(images)}, 4)
    vis = np.asarray(vis)
    assert (vis[0] == models.ABSENT).sum() == 2 * 3 and (vis[1] == models.ABSENT).sum() == 0
    assert (vis[2] == models.ABSENT).all() and vis[3:].max() == models.VISIBLE
    got = feat.FeatureExtractor(model, feat.FeatureConfig(batch_size=BATCH)).embed_batch(
        images, SENSOR)
    # independently: encode only the present tokens (segment -1 = left out) and average
    patches, stream = image_tokens(cfg, {SENSOR: images}, patch_size=4, xp=np)
    stream = stream._replace(segment=np.where(vis == models.ABSENT, -1, 0).astype(np.int32))
    x, _ = nnx.jit(lambda e, p, s: e(p, s))(model.encoder, jax.tree.map(jnp.asarray, patches),
                                            jax.tree.map(jnp.asarray, stream))
    keep = (vis == models.VISIBLE) & (stream.group >= 0)
    expected = [np.asarray(x)[i, keep[i]].mean(0) for i in (0, 1, 3)]
    np.testing.assert_allclose(np.asarray(got)[[0, 1, 3]], expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[2], 0.0)


def test_representations(split):
    model = nnx.clone(tiny_model())
    target = nnx.state(model.target_encoder, nnx.Param)
    nnx.update(model.target_encoder, jax.tree.map(lambda p: p * 1.1, target))
    images = split.images[:BATCH]

    def run(rep, **kw):
        config = feat.FeatureConfig(batch_size=BATCH, representation=rep, **kw)
        extractor = feat.FeatureExtractor(model, config)
        return np.asarray(extractor.embed_batch(images, SENSOR, split.months[:BATCH]))

    online, ema = run("encoder"), run("ema")
    assert np.abs(online - ema).max() > 1e-3
    x, group = encoder_tokens(model.target_encoder, images)
    np.testing.assert_allclose(ema, x[:, group >= 0].mean(1), atol=1e-5)
    proj = run("projection")
    np.testing.assert_allclose(proj, model.target_proj(jnp.asarray(ema)), atol=1e-5)
    np.testing.assert_allclose(run("online_projection"), model.online_proj(jnp.asarray(online)),
                               atol=1e-5)
    assert proj.shape == (BATCH, 16)
    assert np.abs(run("encoder", use_months=True) - online).max() > 1e-4  # month embedding
    with pytest.raises(ValueError, match="target_encoder"):
        feat.FeatureExtractor(tiny_model("encoder"), feat.FeatureConfig(
            representation="target_encoder"))
    with pytest.raises(ValueError, match="unknown representation"):
        feat.FeatureConfig(representation="decoder")


def test_token_and_attention_pooling(split):
    model = tiny_model()
    images = split.images[:BATCH]

    def run(pooling):
        config = feat.FeatureConfig(batch_size=BATCH, pooling=pooling)
        return np.asarray(feat.FeatureExtractor(model, config).embed_batch(images, SENSOR))

    x, group = encoder_tokens(model.encoder, images)
    np.testing.assert_allclose(run("tokens"), x[:, group >= 0], atol=1e-5)
    attention = run("attention")  # a fresh, untrained PoolingHead (RMS-normalised output)
    assert attention.shape == (BATCH, 32) and np.isfinite(attention).all()


def test_max_and_spatial_pooling_of_a_token_stream():
    """Two sensors on one 2x2 grid, one ABSENT token: pooled over present patch tokens."""
    # tokens: [type s0, s0 (r, c) x4, type s1, s1 (r, c) x4]; token 3 (s0 at r1 c0) is ABSENT
    group = np.array([-1, 0, 0, 0, 0, -1, 1, 1, 1, 1])
    row = np.array([-1, 0, 0, 1, 1, -1, 0, 0, 1, 1])
    col = np.array([-1, 0, 1, 0, 1, -1, 0, 1, 0, 1])
    segment = np.array([0, 0, 0, -1, 0, 0, 0, 0, 0, 0])
    stream = types.SimpleNamespace(group=group[None], row=row[None], col=col[None],
                                   segment=segment[None])
    x = np.random.default_rng(0).normal(size=(1, 10, 3)).astype(np.float32)
    x[0, 0] = x[0, 5] = 100.0  # type tokens would win a max
    pool = jax.jit(lambda x: [feat.pool_tokens(x, stream, p, grids={"a": (2, 2), "b": (2, 2)})
                              for p in ("max", "spatial")])
    got_max, got_spatial = (np.asarray(v) for v in pool(jnp.asarray(x)))
    present = [1, 2, 4, 6, 7, 8, 9]
    np.testing.assert_allclose(got_max[0], x[0, present].max(0), atol=1e-6)
    expected = np.stack([(x[0, 1] + x[0, 6]) / 2, (x[0, 2] + x[0, 7]) / 2, x[0, 8],
                         (x[0, 4] + x[0, 9]) / 2])
    np.testing.assert_allclose(got_spatial[0], expected, atol=1e-6)


def test_load_model_from_checkpoint(tmp_path):
    from eval_tiny_model import tiny_workdir

    tiny_workdir(tmp_path, step=3)
    params = nnx.to_pure_dict(nnx.state(tiny_model(), nnx.Param))
    loaded = checkpoint.load_model(tmp_path)
    assert loaded.step == 3 and loaded.kind == "latent_predictor"
    assert loaded.cfg == tiny_config()
    got = nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, got, params)
    with pytest.raises(FileNotFoundError, match="step 5"):
        checkpoint.load_model(tmp_path, step=5)
    # the same model from its step directory and from its checkpoints/ folder
    for path in (tmp_path / "checkpoints" / "3", tmp_path / "checkpoints"):
        again = checkpoint.load_model(path)
        assert again.step == 3 and again.cfg == tiny_config()
    with pytest.raises(FileNotFoundError, match="not a checkpoint: expected a pretraining"):
        checkpoint.load_model(tmp_path / "checkpoints" / "3" / "params")


def test_progress_bar_counts_finished_batches(split, capsys):
    extractor = feat.FeatureExtractor(tiny_model(), feat.FeatureConfig(batch_size=BATCH))
    extractor.extract(split, progress=True)  # the split's name comes from the data
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert re.match(r"features train: 100%\|.*\| 3/3 \[\d\d:\d\d<00:00, .*(batch/s|s/batch)\]",
                    err[-1]), err
    extractor.extract(split, split="valid", progress=False)
    assert capsys.readouterr().err == ""
