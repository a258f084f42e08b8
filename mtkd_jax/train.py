"""The one update-step factory and the train loops: sharded, donated, checkpointed, resumable.

Read top to bottom: `make_train_step` (the distillation update; its one polymorphic argument is
the objective, `mtkd_jax.objectives`, which also says what a step logs),
`make_supervised_step` (teachers), `make_optimizer`, `Loop` (how a job's runs
are executed and observed), `train` (one model on a mesh, with checkpoints) and `train_seeds`
(several seeds of a small model at once, vmapped). Code passes functions; only configs hold
registry names (paper §VI's practical design).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtkd_jax import checkpoints, losses, operators
from mtkd_jax import data as data_lib
from mtkd_jax import objectives as objectives_lib
from mtkd_jax import sharding as sharding_lib
from mtkd_jax import weighting as weighting_lib


@flax.struct.dataclass
class TrainState:
  """What is checkpointed: the student only (frozen teachers never are)."""

  step: jax.Array  # [] int32
  params: Any
  opt_state: Any


# --------------------------------------------------------------------------------------------
# Update steps.
# --------------------------------------------------------------------------------------------
def init_params(student_init: Callable, weighting=None) -> Callable[[jax.Array], dict]:
  """`init(rng) -> {"student": ..., "weighting": ...}`, the params tree of every student.

  "weighting" holds a learned gate's parameters (`weighting.Learned`), and is empty otherwise,
  so the tree has the same keys whatever the weighting.
  """

  def init(rng):
    gate = (
      weighting.init(jax.random.fold_in(rng, 1)) if weighting_lib.is_trainable(weighting) else {}
    )
    return {"student": student_init(rng), "weighting": gate}

  return init


def make_train_step(
  student_apply: Callable,
  optimizer: optax.GradientTransformation,
  *,
  objective: objectives_lib.Objective,
  weights,
  label_weight: float = 0.0,
  teacher_apply: Callable | None = None,
  weighting: Callable | None = None,
):
  """Builds the distillation update `train_step(state, batch, teacher_params=None)`.

  The loss is the batch mean of `objective(student_logits, teacher_outputs, w)` (see
  `mtkd_jax.objectives`: the mixture L_mix, the sum of KLs L_multi, or a sparse mixture),
  optionally blended with hard-label cross-entropy: (1 − a)·KD + a·CE.

  Args:
    student_apply: `apply(params, x) -> logits [B, ..., V]`, or a `models.FunctionalModel`
      (needed, with its `features` and `head`, by an objective `from_hidden`, which fuses the
      output projection with the loss and never builds the student's logits).
    optimizer: an optax transformation.
    objective: an `objectives.Objective`, e.g.
      `objectives.mixture(operators.linear, temperatures=[1.0, 2.0])`.
    weights: [K] teacher weights summing to one (used when `weighting` is None).
    label_weight: a ∈ [0, 1] weight of the hard-label cross-entropy.
    teacher_apply: `teacher_apply(teacher_params, batch) -> [K, B, ..., V]` frozen teachers run
      inside the step (with an objective `from_hidden`, it may instead return K (hidden, head
      [, bias]) tuples); if None, the batch carries `teacher_logits` [K, B, ..., V] (K first,
      as everywhere in the library; logits or log-probabilities).
    weighting: adaptive weighting (`mtkd_jax.weighting`): a hook `weighting(teacher_logits,
      batch) -> weights [K] or [K, B, ...]`, or a trainable `weighting.Learned` gate whose
      parameters are `params["weighting"]`: the student trains on the stop-gradient gate
      weights and the gate on its own loss (logged as `gate_loss`). None uses `weights`.

  Returns:
    `train_step(state, batch, teacher_params=None) -> (state, metrics)`, a pure function to
    jit; `state.params` is `{"student": ..., "weighting": ...}` (`init_params`); `batch` holds
    "x" [B, ...] and "y" int [B, ...] (and "teacher_logits").

  >>> from mtkd_jax import models, objectives
  >>> m = models.build("mlp", in_features=4, hidden=(8,), num_classes=3)
  >>> obj = objectives.mixture(operators.geometric, temperatures=[1.0, 2.0])
  >>> step = make_train_step(m.apply, optax.adam(1e-3), objective=obj, weights=[0.5, 0.5])
  """
  if not isinstance(objective, objectives_lib.Objective):
    raise ValueError(
      f"objective: must be an objectives.Objective (e.g. objectives.mixture(op, "
      f"temperatures=...)), got {objective!r}"
    )
  features = head = None
  if not callable(student_apply) and hasattr(student_apply, "apply"):  # a FunctionalModel
    features, head, student_apply = student_apply.features, student_apply.head, student_apply.apply
  if objective.from_hidden:
    if features is None or head is None:
      raise ValueError(
        "student_apply: an objective from hidden states needs a models.FunctionalModel with "
        f"features and head (e.g. models.build('byte_lm', ...)), got {student_apply!r}"
      )
    if label_weight or weighting is not None:
      raise ValueError(
        "label_weight, weighting: not available with an objective from hidden states (each "
        "needs the student's or the teachers' full logits); use objectives.mixture"
      )
  num_teachers = objective.num_teachers
  weights = operators.check_weights(weights, (num_teachers, 1), name="weights")[:, 0]  # [K]
  if not 0.0 <= label_weight <= 1.0:
    raise ValueError(f"label_weight: must be in [0, 1], got {label_weight}")
  if weighting is not None and not callable(weighting):
    raise ValueError(f"weighting: must be a function or weighting.Learned, got {weighting!r}")
  trainable = weighting_lib.is_trainable(weighting)

  def train_step(state: TrainState, batch, teacher_params=None):
    # Teachers are frozen: their outputs are data, never differentiated.
    if teacher_apply is None:
      teacher_logits = _teacher_logits(batch, num_teachers)  # [K, B, ..., V]
    else:  # [K, B, ..., V]; from hidden states, also K (hidden, head[, bias]) tuples
      teacher_logits = teacher_apply(teacher_params, batch)
    teacher_logits = jax.tree.map(jax.lax.stop_gradient, teacher_logits)
    fixed_w = weights if weighting is None or trainable else weighting(teacher_logits, batch)

    def loss_fn(params):
      if objective.from_hidden:  # (hidden [B, ..., d], kernel [d, V], bias): no student logits
        student = (features(params["student"], batch["x"]), *head(params["student"]))
        return objective(student, teacher_logits, fixed_w).mean(), (student, fixed_w, 0.0)
      student_logits = student_apply(params["student"], batch["x"])  # [B, ..., V]
      w, gate_loss = fixed_w, 0.0  # [K] or [K, B, ...]
      if trainable:  # the gate reads the student; the student sees the gate's weights as data
        w = weighting(params["weighting"], teacher_logits, batch, student_logits)
        gate_loss = weighting.loss(w, teacher_logits, batch).mean()
        w = jax.lax.stop_gradient(w)
      per_example = objective(student_logits, teacher_logits, w)  # [B, ...]
      if label_weight:
        per_example = losses.hard_label_blend(
          per_example, student_logits, batch["y"], label_weight=label_weight
        )
      return per_example.mean() + gate_loss, (student_logits, w, gate_loss)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss_value, (student_logits, w, gate_loss)), grads = grad_fn(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = objective.metrics(
      jax.lax.stop_gradient(student_logits), teacher_logits, batch["y"], w
    )
    metrics.update(loss=loss_value, grad_norm=optax.tree.norm(grads))
    if trainable:  # the gate's gradient is the gate loss's alone (the student sees w as data)
      metrics.update(gate_loss=gate_loss, gate_grad_norm=optax.tree.norm(grads["weighting"]))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def _teacher_logits(batch, num_teachers: int) -> jax.Array:
  """`batch["teacher_logits"]` [K, B, ..., V], checked against K and the batch size."""
  if "teacher_logits" not in batch:
    raise ValueError(
      f"batch: needs 'teacher_logits' [K, B, ..., V] (or pass teacher_apply), "
      f"got keys {sorted(batch)}"
    )
  t, y = batch["teacher_logits"], batch["y"]
  if t.ndim < 3 or t.shape[0] != num_teachers or t.shape[1:-1] != y.shape:
    raise ValueError(
      f"batch['teacher_logits']: must be [K, *y.shape, V] = [{num_teachers}, "
      f"{', '.join(map(str, y.shape))}, V] (teacher axis first), got shape {tuple(t.shape)}"
    )
  return t


def make_supervised_step(apply: Callable, optimizer: optax.GradientTransformation):
  """Cross-entropy update `step(state, batch, teacher_params=None)` (trains the teachers)."""

  def train_step(state: TrainState, batch, teacher_params=None):
    del teacher_params

    def loss_fn(params):
      logits = apply(params, batch["x"])
      return losses.cross_entropy(logits, batch["y"]).mean(), logits

    (loss_value, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics = {
      "loss": loss_value,
      "log_loss": loss_value,
      "accuracy": (logits.argmax(-1) == batch["y"]).mean(),
      "grad_norm": optax.tree.norm(grads),
    }
    new_state = TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)
    return new_state, metrics

  return train_step


def make_optimizer(
  learning_rate: float,
  num_steps: int,
  *,
  weight_decay: float = 0.0,
  warmup_steps: int = 0,
  clip_norm: float | None = 1.0,
):
  """AdamW with linear warm-up and cosine decay, after global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, learning_rate, max(warmup_steps, 1), max(num_steps, warmup_steps + 1)
  )
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  return optax.chain(*chain, optax.adamw(schedule, weight_decay=weight_decay))


# --------------------------------------------------------------------------------------------
# The train loops.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Loop:
  """How a job's runs are executed and observed, built once per job (`Loop.from_config`).

  Attributes:
    mesh: ("data", "model") mesh; batches go over "data", parameters follow `partition_rules`.
    partition_rules: `((regex, spec), ...)`, see `mtkd_jax.sharding`.
    workdir: checkpoints go to `<workdir>/checkpoints/<run>`, metric rows to
      `<workdir>/metrics.jsonl`; None: neither (nothing is written).
    checkpoint_every: save every this many steps (and always at the end).
    keep_checkpoints: keep the last this many checkpoints per run.
    log_every: fetch metrics to the host (a device sync) every this many steps.
    progress: a tqdm progress bar per run on stderr (process 0).
    report: optional `report(run_name, step, host_metrics)`, called every `log_every` steps on
      every process (e.g. to send metrics to an experiment tracker).
    stop_on_nonfinite: stop a run with `NonFiniteError` naming the first step whose loss or
      gradient norm is NaN or infinite (checked at each log and checkpoint step, so the last
      checkpoint saved before it is intact).
    teacher_cache: directory of the runs cached by their own config (`cached_run`: teachers),
      shared by every job and workdir; None: such runs are kept in the workdir like any other.
  """

  mesh: jax.sharding.Mesh
  partition_rules: tuple = ((r".*", ()),)
  workdir: str | None = None
  checkpoint_every: int = 1000
  keep_checkpoints: int = 2
  log_every: int = 10
  progress: bool = False
  report: Callable[[str, int, dict], None] | None = None
  stop_on_nonfinite: bool = True
  teacher_cache: str | None = None

  @classmethod
  def from_config(cls, config, workdir: str | None) -> Loop:
    """From a config's `mesh`, `partition_rules`, `checkpoint_every`, `keep_checkpoints`,
    `log_every`, `progress` and `teacher_cache` fields (defaults where a config has none; the
    teacher cache defaults to `checkpoints.default_cache()` when there is a workdir)."""
    mesh = config.get("mesh") or {"data": -1, "model": 1}
    default = cls(mesh=None)
    return cls(
      mesh=sharding_lib.make_mesh(mesh["data"], mesh["model"]),
      partition_rules=tuple(
        (r, tuple(spec)) for r, spec in config.get("partition_rules", default.partition_rules)
      ),
      workdir=workdir,
      checkpoint_every=config.get("checkpoint_every", default.checkpoint_every),
      keep_checkpoints=config.get("keep_checkpoints", default.keep_checkpoints),
      log_every=config.get("log_every", default.log_every),
      progress=config.get("progress", default.progress),
      stop_on_nonfinite=config.get("stop_on_nonfinite", default.stop_on_nonfinite),
      teacher_cache=(config.get("teacher_cache") or checkpoints.default_cache())
      if workdir
      else None,
    )


# Bump when a change to the library alters what a cached run computes (batch order, optimizer,
# models): entries written before then are not reused.
_CACHE_VERSION = 2


@contextlib.contextmanager
def cached_run(loop: Loop, name: str, key: Mapping):
  """The loop for a run cached by its own config, e.g. a teacher: `train(name, loop=...)` inside
  the block checkpoints to `<loop.teacher_cache>/<name>-<hash of key>/`, so every job and workdir
  whose run has the same `key` (all that determines its result: data, model, optimizer, steps,
  seed) trains it once and restores it after. The entry is locked while in use (a second job
  waits); on exit the run's metric rows are copied into the job's `metrics.jsonl`.

  >>> with cached_run(loop, "teacher_0", {"seed": 0, ...}) as teacher_loop:  # doctest: +SKIP
  ...   state, _ = train("teacher_0", ..., loop=teacher_loop)
  """
  if loop.teacher_cache is None or loop.workdir is None:
    yield loop
    return
  from mtkd_jax import __version__

  key = {**key, "cache": _CACHE_VERSION, "mtkd_jax": __version__, "jax": jax.__version__}
  entry = checkpoints.cache_entry(loop.teacher_cache, name, key)
  with checkpoints.WorkdirLock(entry, wait=True):
    yield dataclasses.replace(loop, workdir=entry)
  checkpoints.copy_metric_rows(entry, loop.workdir, name)


def train(
  name: str,
  *,
  init_params: Callable[[jax.Array], Any],
  train_step: Callable,
  optimizer: optax.GradientTransformation,
  arrays: Mapping[str, np.ndarray],
  num_steps: int,
  batch_size: int,
  seed: int,
  loop: Loop,
  teacher_params=None,
  checkpoint_every: int | None = None,
):
  """Trains one model; resumes from its checkpoints; returns `(state, last_metrics)`.

  Args:
    name: run name (checkpoint directory, metric rows, progress bar). Avoid glob characters
      ("[", "*") in it: orbax's OCDBT merge would silently skip the checkpoint.
    init_params: `init(rng) -> params`.
    train_step: `step(state, batch, teacher_params) -> (state, metrics)` from
      `make_train_step` or `make_supervised_step`.
    optimizer: the optax transformation the step uses (for the initial state).
    arrays: training data, dict of host arrays with the example axis first ([N, ...]; for
      "teacher_logits" the teacher axis comes first, [K, N, ..., V]).
    num_steps: total number of steps (also when resuming).
    batch_size: global batch size.
    seed: seed of the initialisation and of the batch order (a batch is a pure function of
      (seed, step), so a resumed run sees the batches of an uninterrupted one).
    loop: the job's `Loop` (mesh, checkpoints, logging, progress).
    teacher_params: frozen teacher parameters passed to the step (replicated), or None.
    checkpoint_every: overrides `loop.checkpoint_every` for this run.
  """
  mesh = loop.mesh
  every = loop.checkpoint_every if checkpoint_every is None else checkpoint_every

  # ---- Shapes first, then shardings, then the sharded initialisation --------------------
  def init():
    params = init_params(jax.random.key(seed))
    return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
    )

  abstract_state = jax.eval_shape(init)
  state_shardings = sharding_lib.tree_shardings(mesh, loop.partition_rules, abstract_state)
  replicated = sharding_lib.replicated(mesh)
  batch_shardings = {k: sharding_lib.batch_sharding(mesh, data_lib.example_axis(k)) for k in arrays}
  teacher_shardings = jax.tree.map(lambda _: replicated, teacher_params)
  rows = sharding_lib.process_batch_rows(mesh, batch_size)

  # ---- Resume from the newest intact checkpoint, or initialise ---------------------------
  checkpointer = None
  if loop.workdir is not None:
    directory = os.path.join(loop.workdir, "checkpoints", name)
    checkpointer = checkpoints.Checkpointer(directory, every=every, keep=loop.keep_checkpoints)
  state = None
  if checkpointer is not None and checkpointer.latest_step() is not None:
    target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state,
      state_shardings,
    )
    state = checkpointer.restore(target, name)
  if state is None:
    state = jax.jit(init, out_shardings=state_shardings)()
  start = int(jax.device_get(state.step))
  if start > num_steps:
    raise ValueError(f"{name}: checkpoint at step {start} is past num_steps={num_steps}")

  # ---- The jitted update: explicit shardings, donated state -----------------------------
  step_fn = jax.jit(
    train_step,
    in_shardings=(state_shardings, batch_shardings, teacher_shardings),
    out_shardings=(state_shardings, replicated),
    donate_argnums=0,
  )
  if teacher_params is not None:
    teacher_params = sharding_lib.put_replicated(mesh, teacher_params)

  # ---- Loop ------------------------------------------------------------------------------
  log = _Log(name, loop, start, num_steps)
  finite = _Finite(name, loop.stop_on_nonfinite)
  host_metrics: dict = {}
  for step in range(start, num_steps):
    local = data_lib.get_batch(dict(arrays), batch_size, seed=seed, step=step, rows=rows)
    batch = sharding_lib.put_batch(mesh, local, batch_size)
    state, metrics = step_fn(state, batch, teacher_params)
    done = step + 1
    finite.update(done, metrics)
    if checkpointer is not None and done % every == 0:
      finite.check()  # a non-finite state is never saved: the last good checkpoint stays
      checkpointer.save(done, state)
    if done % loop.log_every == 0 or done == num_steps:
      finite.check()
      host_metrics = jax.tree.map(lambda x: np.asarray(x).tolist(), metrics)
      log(done, host_metrics)
  log.close()

  # ---- Final checkpoint ------------------------------------------------------------------
  if checkpointer is not None:
    finite.check()
    checkpointer.finish(num_steps, state)
  return state, host_metrics


def restore(
  name: str,
  *,
  init_params: Callable[[jax.Array], Any],
  optimizer: optax.GradientTransformation,
  loop: Loop,
) -> TrainState:
  """The newest intact checkpoint of run `name` in `loop.workdir`, e.g. a trained student.

  The state is placed on `loop.mesh` by `loop.partition_rules`, as `train` places it; its
  `params["student"]` goes to `student.apply` (or `predict`). `init_params` and `optimizer` are
  those the run was trained with (only their shapes are used: nothing is initialised).

  Raises:
    ValueError: `loop.workdir` holds no checkpoint of `name`.
    checkpoints.CheckpointError: checkpoints exist but none is intact.

  >>> state = restore("student", init_params=init, optimizer=opt, loop=loop)  # doctest: +SKIP
  >>> logits = predict(student.apply, state.params["student"], x_test, loop.mesh)  # doctest: +SKIP
  """
  directory = os.path.join(loop.workdir or "", "checkpoints", name)
  if loop.workdir is None or not os.path.isdir(directory):
    raise ValueError(f"{name}: no checkpoints in {directory!r} (train it with a workdir first)")
  abstract = jax.eval_shape(
    lambda: _init_state(init_params, optimizer, jax.random.key(0))
  )  # shapes only
  shardings = sharding_lib.tree_shardings(loop.mesh, loop.partition_rules, abstract)
  target = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  checkpointer = checkpoints.Checkpointer(directory, every=1, keep=loop.keep_checkpoints)
  try:
    state = checkpointer.restore(target, name)
  finally:
    checkpointer.manager.close()
  if state is None:
    raise ValueError(f"{name}: no checkpoints in {directory!r} (train it with a workdir first)")
  return state


def _init_state(init_params, optimizer, rng) -> TrainState:
  params = init_params(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


class NonFiniteError(FloatingPointError):
  """The loss or gradient norm of a run became NaN or infinite."""


class _Finite:
  """Watches loss and gradient norm on the device; `check()` raises at the first bad step."""

  def __init__(self, name: str, enabled: bool):
    self.name, self.enabled = name, enabled
    self.first_bad = jnp.int32(-1)

  def update(self, step: int, metrics) -> None:
    if self.enabled:  # two tiny device ops per step; the host looks only in check()
      ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
      self.first_bad = jnp.where((self.first_bad < 0) & ~ok, step, self.first_bad)

  def check(self) -> None:
    bad = int(self.first_bad) if self.enabled else -1
    if bad >= 0:
      raise NonFiniteError(
        f"{self.name}: non-finite loss or gradient norm at step {bad}; stopped, the last "
        "checkpoint before it is kept (a learning rate too high? NaN or inf in the data?)"
      )


class _Log:
  """Metric rows to `<workdir>/metrics.jsonl` and a progress bar (process 0 only)."""

  def __init__(self, name: str, loop: Loop, start: int, num_steps: int):
    main = jax.process_index() == 0
    self.name = name
    self.path = os.path.join(loop.workdir, "metrics.jsonl") if loop.workdir and main else None
    self.report = loop.report
    self.bar = None
    if loop.progress and main and start < num_steps:
      from tqdm import tqdm

      self.bar = tqdm(
        total=num_steps, initial=start, desc=name, file=sys.stderr, dynamic_ncols=True, leave=False
      )

  def __call__(self, step: int, metrics: dict) -> None:
    if self.report is not None:
      self.report(self.name, step, metrics)
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix_str(f"loss={metrics['loss']:.4f}", refresh=True)
    if self.path is not None:
      line = json.dumps({"run": self.name, "step": step, **metrics}) + "\n"
      with open(self.path, "a+b") as f:
        if f.seek(0, os.SEEK_END) > 0:
          f.seek(-1, os.SEEK_END)
          if f.read(1) != b"\n":  # a row cut off by a full disk or a kill stays on its own line
            line = "\n" + line
        f.write(line.encode())

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def train_seeds(
  train_step: Callable,
  init_params: Callable[[jax.Array], Any],
  optimizer: optax.GradientTransformation,
  arrays: Mapping[str, np.ndarray],
  *,
  keys: jax.Array,
  num_steps: int,
  batch_size: int | None = None,
  data_seed: int = 0,
  metrics: tuple[str, ...] | None = None,
):
  """Trains one model per key at once: `jax.vmap` over keys of a `lax.scan` over the steps.

  For small models whose seeds fit on one device (no mesh, no checkpoints): the batches are
  those of `train` with `seed=data_seed`, the same for every key, so only the initialisation
  differs; `batch_size=None` trains on all of `arrays` at every step.

  Args:
    train_step: `step(state, batch) -> (state, metrics)`.
    init_params: `init(rng) -> params`.
    optimizer: the step's optax transformation.
    arrays: training data, host arrays with the example axis first ("teacher_logits": second).
    keys: [S] PRNG keys, one model each.
    num_steps: update steps.
    batch_size: rows per step, or None for full batch.
    data_seed: seed of the batch order.
    metrics: names of the step's metrics to return (None: all).

  Returns:
    `(params, metrics)`: params with a leading [S] axis; metrics name -> [S, num_steps].
  """
  arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
  num_examples = arrays["y"].shape[0]
  rows = None
  if batch_size is not None:
    rows = jnp.asarray(
      np.stack(
        [
          data_lib.batch_indices(num_examples, batch_size, seed=data_seed, step=s)
          for s in range(num_steps)
        ]
      )
    )  # [T, B]
  if rows is None:  # full batch: the data are constants of the compiled loop (XLA folds them)
    fit = jax.jit(
      jax.vmap(
        lambda key: _fit_one(
          train_step, init_params, optimizer, metrics, key, arrays, None, num_steps
        )
      )
    )
    params, logged = fit(keys)
  else:  # minibatches: data and rows are arguments, so a refit on new targets reuses the program
    args = (train_step, init_params, optimizer, None if metrics is None else tuple(metrics))
    try:
      fit = _minibatch_fitter(*args, num_steps)
    except TypeError:  # an unhashable step or optimizer: compiled for this call only
      fit = _minibatch_fitter.__wrapped__(*args, num_steps)
    params, logged = fit(keys, arrays, rows)
  return params, jax.tree.map(np.asarray, logged)


def _fit_one(train_step, init_params, optimizer, metrics, key, arrays, rows, num_steps):
  """One seed's `lax.scan` over the steps: (params, logged metrics [T])."""
  params = init_params(key)
  state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  def body(state, idx):
    batch = arrays if idx is None else _take(arrays, idx)  # [B, ...]
    state, m = train_step(state, batch)
    return state, (m if metrics is None else {k: m[k] for k in metrics if k in m})

  state, logged = jax.lax.scan(body, state, rows, length=num_steps)
  return state.params, logged


@functools.lru_cache(maxsize=32)
def _minibatch_fitter(train_step, init_params, optimizer, metrics, num_steps):
  """The jitted, seed-vmapped loop of one step function (cached: compiled once per shapes)."""
  one = lambda key, arrays, rows: _fit_one(
    train_step, init_params, optimizer, metrics, key, arrays, rows, num_steps
  )
  return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def _take(arrays, idx):
  """Rows `idx` of every array, along its `data.example_axis`."""
  return {k: jnp.take(v, idx, axis=data_lib.example_axis(k)) for k, v in arrays.items()}


def predict(apply: Callable, params, x: np.ndarray, mesh: jax.sharding.Mesh) -> np.ndarray:
  """Logits of `apply(params, x)` for a whole host array (replicated; for small eval sets)."""
  x = sharding_lib.put_replicated(mesh, np.asarray(x))
  logits = jax.jit(apply, out_shardings=sharding_lib.replicated(mesh))(params, x)
  return np.asarray(logits)


def evaluate(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy and mean log-loss (−log p(y)) of logits [N, V] against labels [N]."""
  return {
    "accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
    "log_loss": float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)).mean()),
  }
