"""Time the original's official training step in PyTorch, for comparison with JAX.

    python -m torch_bridge.benchmark_step [--size nano --samples 8 --patch-size 4 \
        --crop-patches 4 --timesteps 12 --steps 5]

The step is the latest original's ContrastiveLatentMIM step run
by our PyTorch twin of the original (torch_bridge/torch_model/, state-dict and output parity with
the original): EMA update, two masked views through the LatentPredictor, patch
discrimination (tau 0.1) + 0.1 x InfoNCE of the pooled online encodings, backward,
gradient clipping at 1.0, AdamW (lr 1e-4, wd 0.02), on the CPU in float32, or with
`--autocast bf16` under bfloat16 autocast around the model calls as the official recipe
trains (losses outside autocast, on its bf16 outputs, like the original). Same workload
as launch.benchmark_train: B samples of the official sensors cropped to H x H patches
of size P with T timesteps and the official masking. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from spacenit_jax import sensors
from spacenit_jax.data import masking
from spacenit_jax.model.config import make_config
from torch_bridge import torch_model


def patch_discrimination(pred, target, tau=0.1):
    p, y = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    scores = torch.einsum("bnd,bmd->bnm", p, y) / tau
    labels = torch.arange(scores.shape[1]).expand(scores.shape[0], -1)
    ce = F.cross_entropy(scores.flatten(0, 1), labels.flatten(), reduction="none")
    return ce.view(scores.shape[:2]).mean(-1).mul(2 * tau).mean()


def info_nce(a, q, tau=0.1):
    logits = a @ q.T / tau
    return F.cross_entropy(logits, torch.arange(a.shape[0]))


def workload(cfg, args, rng):
    """Channel-first inputs and visibility masks (tokenizer order) for one view."""
    layout = cfg.layout
    strategy = masking.build_masking({
        "type": "cross_sensor_random", "base_encode_ratio": 0.5, "base_decode_ratio": 0.5,
        "decode_only_sensors": [s for s in sensors.OFFICIAL_DECODE_ONLY
                                if s in layout.sensor_labels]})
    h, p, t = args.crop_patches, args.patch_size, args.timesteps
    data = {label: [] for label in layout.sensor_labels}
    vis = []
    for _ in range(args.samples):
        arrays = {}
        for label in layout.sensor_labels:
            spec = sensors.get(label)
            tt = t if spec.kind == sensors.SensorKind.SPACE_TIME else 1
            arrays[label] = rng.normal(size=(h * p, h * p, tt, spec.num_channels)).astype(np.float32)
        masks = masking.mask_sample(layout, arrays, p, strategy, rng, 0)
        vis.append(masking.visibility_vector(masks))
        for label, a in arrays.items():
            x = np.moveaxis(a, -1, 0)  # (C, H, W, T)
            data[label].append(x if sensors.get(label).kind == sensors.SensorKind.SPACE_TIME
                               else x[..., 0])
    tensors = {k: torch.from_numpy(np.stack(v)) for k, v in data.items()}
    return tensors, torch.from_numpy(np.stack(vis).astype(np.int64))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="nano")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--crop-patches", type=int, default=4)
    ap.add_argument("--timesteps", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--autocast", choices=("none", "bf16"), default="none",
                    help="bf16: torch.autocast around the model calls (the official recipe)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = make_config("reference_head", args.size)
    model = torch_model.build_model(cfg, "latent_predictor")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.02)
    views = [workload(cfg, args, rng) for _ in range(2)]
    months = torch.from_numpy(rng.integers(0, 12, size=(args.samples, args.timesteps)))
    tokens = int(sum((v != 3).sum() for _, v in views))

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16")

    def one_step():
        model.step_ema()
        with autocast():
            outs = [model(x, visibility_mask=v, patch_size=args.patch_size, month_indices=months)
                    for x, v in views]
            pooled = [model.online_proj(o["encoder_pooled"]) for o in outs]
        pd = 0.5 * sum(patch_discrimination(o["predictions"], o["targets"]) for o in outs)
        z = [F.normalize(x, dim=-1) for x in pooled]
        loss = pd + 0.1 * info_nce(z[0], z[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        one_step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = one_step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    print(json.dumps({
        "implementation": "original's official step (PyTorch twin), CPU",
        "precision": "bf16 autocast" if args.autocast == "bf16" else "float32",
        "size": args.size, "samples": args.samples, "patch_size": args.patch_size,
        "crop_patches": args.crop_patches, "timesteps": args.timesteps,
        "torch_threads": torch.get_num_threads(), "step_s_median": step_s,
        "step_s_min": min(times), "tokens_per_s": tokens / step_s,
        "samples_per_s": args.samples / step_s, "loss": loss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
