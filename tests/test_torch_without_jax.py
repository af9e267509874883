"""A PyTorch user without JAX: the README's "Use an export in PyTorch" snippets run in a
fresh interpreter in which importing JAX, Flax or any other JAX-side dependency fails,
load an export written here, and give the JAX model's tokens to float32 round-off."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

from spacenit_jax.model.config import config_to_dict, make_config  # noqa: E402
from torch_bridge import export as ex  # noqa: E402
from torch_bridge import import_checkpoint as im  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Everything that only the JAX side needs; any import of these fails in the subprocess.
BLOCKED = ("jax", "jaxlib", "flax", "optax", "orbax", "grain", "chex", "ml_collections",
           "einops", "h5py", "hdf5plugin", "wandb", "absl")

BLOCKER = f"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: this test runs without JAX")
sys.meta_path.insert(0, Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
"""


def readme_snippets() -> list[str]:
    """The python blocks of the README's "Use an export in PyTorch" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Use an export in PyTorch", 1)[1].split("\n#", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "expected two python snippets in the README section"
    return blocks


def run_without_jax(code: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_export_loads_and_runs_in_pytorch_without_jax(tmp_path):
    labels = ("sentinel2_l2a", "sentinel1", "srtm")
    cfg = make_config("design_card", "nano", sensor_labels=labels, embed_dim=32, depth=2,
                      num_heads=2, num_kv_heads=1, decoder_depth=1, decoder_num_heads=2,
                      decoder_num_kv_heads=1)
    rng = np.random.default_rng(0)
    flat = {p: (0.3 * rng.standard_normal(v.shape)).astype(np.float32)
            for p, v in im.param_shapes(cfg, "latent_predictor").items()}
    ex.export_params(flat, tmp_path / "export" / "nano", cfg=cfg, kind="latent_predictor",
                     step=11)
    # the export's config.json is the "config" a user passes to ModelConfig(**...)
    meta = json.loads((tmp_path / "export" / "nano" / "config.json").read_text())
    assert meta["config"] == config_to_dict(cfg) and meta["kind"] == "latent_predictor"

    first, second = readme_snippets()
    save = textwrap.dedent("""
        import numpy as np
        np.savez("first.npz", tokens=tokens.numpy(), step=int(model._step),
                 **{k: v.numpy() for k, v in x.items()})
        first_model = model
    """)
    checks = textwrap.dedent("""
        with torch.no_grad():
            again = model.encoder(x, patch_size=8, month_indices=torch.tensor([[5, 6]]))[0]
        assert torch.equal(again, tokens)
        assert model.config == first_model.config
        import torch_bridge
        assert torch_bridge.load_torch_model is load_torch_model
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    code = "\n".join([first, save, second, checks])
    proc = run_without_jax(code, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]

    with np.load(tmp_path / "first.npz") as got:
        assert int(got["step"]) == 11
        inputs = {k: got[k] for k in ("sentinel2_l2a", "srtm")}
        tokens = got["tokens"]
    expected = ex.encode_inputs(cfg, "latent_predictor", flat, {
        **inputs, "patch_size": np.asarray(8), "month_indices": np.asarray([[5, 6]])})
    assert tokens.shape == expected["tokens"].shape == (1, 2 + 3 * 4 * 4 * 2 + 4 * 4, 32)
    np.testing.assert_allclose(tokens, expected["tokens"], atol=1e-5, rtol=0)


def test_the_blocker_blocks(tmp_path):
    """The subprocess really has no JAX: importing the JAX-side exporter fails there."""
    proc = run_without_jax("import torch_bridge.export", tmp_path)
    assert proc.returncode != 0 and "blocked: this test runs without JAX" in proc.stderr


@pytest.mark.parametrize("preset", ["design_card", "reference_head", "reference_v1"])
def test_model_config_from_its_json_dict(preset):
    """ModelConfig(**cfg) of an export's config.json "config" is the exported config
    (hashable: the layout's lists become tuples), as config_from_dict gives."""
    from spacenit_jax.model.config import ModelConfig, config_from_dict

    custom = (("sentinel2_l2a", (("B04", "B03", "B02"), ("B08",))),)
    kw = {} if preset == "reference_v1" else {"custom_groups": custom}
    cfg = make_config(preset, "nano", sensor_labels=("sentinel2_l2a", "srtm"), **kw)
    as_json = json.loads(json.dumps(config_to_dict(cfg)))
    assert ModelConfig(**as_json) == cfg == config_from_dict(as_json)
    assert hash(ModelConfig(**as_json)) == hash(cfg)
