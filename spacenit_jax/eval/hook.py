"""In-loop evaluation during pretraining (the original's DownstreamEvalHook), as a hook of
the training loop:

    from spacenit_jax.eval import hook
    trainer = loop.Trainer.create(config, workdir)
    hook.attach(trainer)   # the tasks of config.eval, each at its own interval

or by hand:

    from spacenit_jax.eval.hook import InLoopEvaluator, load_tasks

    evaluator = InLoopEvaluator(load_tasks(["configs/eval/synthetic.py:small"]), mesh=mesh)
    # or, from the run config's `eval` section {"every": N, "tasks": [...]}:
    evaluator = InLoopEvaluator.from_config(config.eval, model_cfg)
    ...
    for step in range(1, num_steps + 1):
        ...  # train step
        metrics.update(evaluator.maybe_evaluate(step, model))  # {} when nothing is due

- tasks: task configs (ConfigDicts from `configs/eval/*.py`, or dicts with the same
  fields, see `spacenit_jax.eval.tasks`); each has a name, a dataset, mode "knn" or
  "linear_probe", every_n_steps, patch_size, representation, pooling, embedding batch size
  and the kNN / probe settings.
- `maybe_evaluate(step, model)` runs every task with step > 0 and step % every_n_steps == 0
  (every_n_steps <= 0 disables a task) and returns floats:
      "eval/<task>/<metric>"       scores on the validation split
      "eval/<task>"                the primary score (accuracy; micro-F1 for multilabel;
                                   mIoU for segmentation)
      "eval/test/<task>/<metric>"  with run_on_test=True (and bootstrap stats if configured)
      "eval_time/<task>"           seconds spent on the task (loading included)
  `evaluate(model)` runs every task now (e.g. before training, the reference's
  eval_on_startup).
- model: the model at that step, as an nnx module (LatentPredictor, DualBranch, AutoEncoder,
  SpatioTemporalEncoder, or a bare Encoder). For a functional loop that keeps
  (graphdef, state), pass `nnx.merge(graphdef, state)`: nothing is copied or modified. Its
  parameters may stay sharded; give the training `mesh` so batches are split over the same
  devices.
- `from_config(eval_config, model_cfg)`: eval_config.tasks lists config specs
  ("configs/eval/m_eurosat.py", "synthetic:small", see `tasks.resolve_config_path`) or task
  dicts; eval_config.every > 0 sets every task's interval; optional fields run_on_test
  (bool) and overrides ({"knn": {"k": 10}, ...}: typed values set in every task). With
  model_cfg, a task whose sensors the model does not have is an error at construction.
- A dataset that is not there (FileNotFoundError: $GEOBENCH_DIR unset or wrong, missing
  files) is reported once with logging.warning and the task is skipped for the rest of the
  run (`skipped` lists them). Invalid inputs (validation.EvalInputError: non-finite images
  or features, labels outside the classes, ...; the message names the split and rows) are
  reported with logging.error and skip the task likewise, so a bad benchmark sample or a
  diverged model does not stop pretraining (its own non-finite checks do that) and no score
  is computed from them. Other errors propagate: they are bugs, not missing data.

Cost: a task's splits are read once and kept in memory; features go through one compiled
program per input shape that is reused at every evaluation (the parameters are an argument,
not a constant), and so is the kNN / probe program. With `configs/eval/synthetic.py:small`
an evaluation of a small model takes about a second after the first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from spacenit_jax.eval import features as feat
from spacenit_jax.eval import tasks as tasks_lib
from spacenit_jax.eval.validation import EvalInputError

log = logging.getLogger(__name__)

IN_LOOP_MODES = ("knn", "linear_probe")


def load_tasks(specs: Sequence[str], overrides: Mapping | None = None) -> list:
    """Task configs from config-file specs ("path.py" or "path.py:arg"), with overrides
    ({"field.path": value}, typed) set in every task."""
    return [tasks_lib.override(tasks_lib.load_config_file(s), overrides or {}) for s in specs]


class InLoopEvaluator:
    """Runs the configured evaluation tasks on their schedule (see module docstring)."""

    def __init__(self, tasks: Sequence, *, run_on_test: bool = False, devices=None, mesh=None):
        self.tasks = [tasks_lib.as_task_config(t) for t in tasks]
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"in-loop eval task names must be unique, got {names}")
        for t in self.tasks:
            if t.mode not in IN_LOOP_MODES:
                raise ValueError(f"in-loop eval task {t.name!r}: mode must be one of "
                                 f"{IN_LOOP_MODES} (fine-tuning runs offline), got {t.mode!r}")
        self.splits = ("valid", "test") if run_on_test else ("valid",)
        self.devices, self.mesh = devices, mesh
        self.skipped: set[str] = set()
        self._data: dict[str, dict[str, feat.ArraySplit]] = {}

    @classmethod
    def from_config(cls, eval_config, model_cfg=None, *, mesh=None, devices=None
                    ) -> InLoopEvaluator:
        """An evaluator from a run config's `eval` section (see module docstring)."""
        overrides = dict(eval_config.get("overrides", None) or {})
        tasks = []
        for item in eval_config.tasks:
            if isinstance(item, str):
                task = tasks_lib.override(tasks_lib.load_config_file(item), overrides)
            else:
                task = tasks_lib.override(tasks_lib.as_task_config(item), overrides)
            every = int(eval_config.get("every", 0) or 0)
            if every > 0:
                task.every_n_steps = every
            tasks.append(task)
        if model_cfg is not None:
            for task in tasks:
                needed = tasks_lib.task_sensors(task, model_cfg.sensor_labels)
                lacking = [s for s in needed if s not in model_cfg.sensor_labels]
                if lacking:
                    raise ValueError(f"in-loop eval task {task.name!r} needs sensors {lacking}; "
                                     f"the model has {list(model_cfg.sensor_labels)}")
        return cls(tasks, run_on_test=bool(eval_config.get("run_on_test", False)), mesh=mesh,
                   devices=devices)

    def due(self, step: int) -> list[str]:
        """Names of the tasks scheduled at `step` (skipped ones excluded)."""
        return [t.name for t in self.tasks
                if t.name not in self.skipped and t.every_n_steps > 0 and step > 0
                and step % t.every_n_steps == 0]

    def maybe_evaluate(self, step: int, model) -> dict[str, float]:
        """Metrics of the tasks due at `step`; {} when none is."""
        names = self.due(step)
        return self.evaluate(model, names, step=step) if names else {}

    def evaluate(self, model, names: Sequence[str] | None = None, *, step: int | None = None
                 ) -> dict[str, float]:
        """Run the named tasks (default: all not skipped) now."""
        out: dict[str, float] = {}
        for task in self.tasks:
            if task.name in self.skipped or (names is not None and task.name not in names):
                continue
            start = time.perf_counter()
            data = self._load(task)
            if data is None:
                continue
            try:
                out.update(self._run(task, data, model))
            except EvalInputError as err:
                log.error("in-loop eval task %r skipped for the rest of the run: %s",
                          task.name, err)
                self.skipped.add(task.name)
                continue
            out[f"eval_time/{task.name}"] = time.perf_counter() - start
            log.info("step %s: eval %s = %.4f (%.1f s)", step, task.name,
                     out.get(f"eval/{task.name}", float("nan")), out[f"eval_time/{task.name}"])
        return out

    def _load(self, task) -> dict[str, feat.ArraySplit] | None:
        if task.name not in self._data:
            try:
                self._data[task.name] = {
                    s: feat.ArraySplit.from_dataset(tasks_lib.load_split(task, s))
                    for s in ("train", *self.splits)}
            except FileNotFoundError as err:
                log.warning("in-loop eval task %r skipped for the rest of the run: its "
                            "dataset is missing (%s)", task.name, err)
                self.skipped.add(task.name)
                return None
        return self._data[task.name]

    def _run(self, task, data, model) -> dict[str, float]:
        extractor = feat.FeatureExtractor(model, feat.feature_config_from(task),
                                          devices=self.devices, mesh=self.mesh)
        feats = {s: extractor.extract(split, split=s, progress=False)
                 for s, split in data.items()}
        rows = tasks_lib.evaluate_features(task, task.mode, feats, splits=self.splits,
                                           progress=False)
        out = {}
        for row in rows:
            prefix = "eval" if row["split"] == "valid" else f"eval/{row['split']}"
            out[f"{prefix}/{task.name}/{row['metric']}"] = row["value"]
            if row["primary"] and row["split"] == "valid":
                out[f"eval/{task.name}"] = row["value"]
        return out


def attach(trainer, eval_config=None) -> InLoopEvaluator | None:
    """Add the evaluator of a run's `eval` section (default: trainer.config.eval) to a
    Trainer as its "eval" hook; None (nothing added) when the section has no tasks.

    The hook runs after every step but builds the model view and evaluates only at steps
    where a task is due; its metrics go to the run's metrics.jsonl / W&B at that step.
    """
    eval_config = trainer.config.eval if eval_config is None else eval_config
    if not eval_config.tasks:
        return None
    evaluator = InLoopEvaluator.from_config(eval_config, trainer.model_cfg, mesh=trainer.mesh)

    def run(info):
        return evaluator.maybe_evaluate(info.step, info.model()) if evaluator.due(info.step) \
            else None

    trainer.hooks.add("eval", 1, run)
    return evaluator
