"""Where metrics go: metrics.jsonl always, W&B on process 0, a progress line on stderr.

W&B runs offline unless the config asks for an online run (or WANDB_MODE says so); the
run id is kept in <workdir>/wandb_run_id.txt so a resumed run continues the same W&B run.
A run resumed from step s first drops the metrics.jsonl records after s (steps that a
crash made the run repeat) and any torn last line, so the file holds each step once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import sys
import time
import uuid

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled (the WANDB_MODE variable wins)
    project: str = "spacenit-jax"
    entity: str | None = None


class Tracker:
    def __init__(self, workdir, *, total_steps: int, config: dict | None = None,
                 enabled: bool = True, wandb: WandbConfig = WandbConfig(),
                 run_name: str | None = None, progress: bool = True, start_step: int = 0):
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        self.total_steps = total_steps
        self.progress = progress and enabled
        self._file = None
        self._wandb = None
        self._start = time.time()
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "metrics.jsonl"
        if path.exists():
            _truncate_after(path, start_step)
        self._file = open(path, "a", buffering=1)
        mode = os.environ.get("WANDB_MODE", wandb.mode)
        if mode != "disabled":
            self._wandb = _start_wandb(self.workdir, mode, wandb.project, wandb.entity,
                                       run_name, config)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=int(step))
        if self.progress:
            self._progress(step, record)

    def _progress(self, step: int, record: dict) -> None:
        if "loss" not in record:  # e.g. in-loop evaluation results
            scores = ", ".join(f"{k}={v:.4f}" for k, v in record.items()
                               if isinstance(v, float) and k.startswith("eval/")
                               and k.count("/") == 1)
            print(f"step {step}: {scores}", file=sys.stderr, flush=True)
            return
        step_s = record.get("time/step_s")
        eta = ""
        if step_s and math.isfinite(step_s):
            remaining = max(self.total_steps - step, 0) * step_s
            eta = f" eta {_duration(remaining)}"
        tok = record.get("throughput/tokens_per_s")
        tok = f" {tok:,.0f} tok/s" if tok else ""
        loss = record.get("loss", float("nan"))
        width = 24
        filled = int(width * min(step / max(self.total_steps, 1), 1.0))
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{bar}] step {step}/{self.total_steps} loss {loss:.4f}{tok}{eta}"
        if sys.stderr.isatty():
            print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self.progress and sys.stderr.isatty():
            print(file=sys.stderr)


def _start_wandb(workdir: pathlib.Path, mode: str, project, entity, name, config):
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        log.warning("wandb is not installed; metrics go to metrics.jsonl only")
        return None
    id_file = workdir / "wandb_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    os.environ.setdefault("WANDB_DIR", str(workdir))
    os.environ.setdefault("WANDB_CACHE_DIR", str(workdir / "wandb_cache"))
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        return wandb.init(project=project, entity=entity, name=name, id=run_id,
                          resume="allow", mode=mode, dir=str(workdir), config=config)
    except Exception as e:  # a logging service must not stop (or block resuming) a run
        log.warning("W&B run %s could not start (%s: %s); metrics go to metrics.jsonl only",
                    run_id, type(e).__name__, e)
        return None


def _truncate_after(path: pathlib.Path, step: int) -> None:
    """Keep the records of steps <= step (atomically); unparsable lines are torn writes."""
    kept, dropped, torn = [], 0, 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if int(record.get("step", 0)) <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped or torn:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        log.warning("metrics.jsonl: resuming at step %d, dropped %d records of later steps "
                    "and %d unreadable lines", step, dropped, torn)


def _plain(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
