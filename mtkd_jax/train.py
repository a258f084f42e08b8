"""Optax distillation update step and train loop: sharded, donated, checkpointed, resumable.

The step takes the aggregation operator and the loss as function arguments (SPEC §6); only
configs hold registry names. The mixture objective L_mix = T_S² KL(q ‖ p_S) (paper §IV-B) goes
through the fused kernel `mtkd_jax.kernels.fused_kd_loss` when the operator is one it fuses
(`operators.linear`, `operators.geometric`); any other operator function is composed with
`losses.mixture_kd`. `losses.sum_of_kls` is the alternative, per-teacher objective.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from mtkd_jax import data as data_lib
from mtkd_jax import losses, operators, theory
from mtkd_jax import sharding as sharding_lib
from mtkd_jax import temperature as temperature_lib
from mtkd_jax import weighting as weighting_lib

# Objectives by config name. A mixture-type loss has the signature of `losses.mixture_kd`
# (student_logits, target_log_q, *, student_temperature); `losses.sum_of_kls` takes the teachers.
LOSSES = {"mixture_kd": losses.mixture_kd, "sum_of_kls": losses.sum_of_kls}

# Operators the fused kernel implements, by function identity (a user's own function that
# happens to compute the same thing is composed, not fused).
_FUSED = {operators.linear: "linear", operators.geometric: "geometric"}


def get_loss(name: str) -> Callable:
  """The objective registered as `name`; an unknown name is a one-line ValueError."""
  if name not in LOSSES:
    raise ValueError(f"loss: unknown loss {name!r}; valid names: {sorted(LOSSES)}")
  return LOSSES[name]


@flax.struct.dataclass
class TrainState:
  """What is checkpointed: the student only (frozen teachers never are)."""

  step: jax.Array  # [] int32
  params: Any
  opt_state: Any


# --------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------
def distill_metrics(student_logits, teacher_logits, labels, *, operator, temperatures, weights,
                    student_temperature=1.0) -> dict[str, jax.Array]:  # fmt: skip
  """Training diagnostics of one batch (SPEC §7), all means over examples.

  Args:
    student_logits: [B, ..., V].
    teacher_logits: [K, B, ..., V] logits or log-probs.
    labels: int [B, ...].
    operator: the aggregation operator of the run (gives q).
    temperatures: [K]. weights: [K] or [K, B, ...]. student_temperature: T_S.

  Returns:
    dict with `kl_q_student` KL(q ‖ p_{S,T_S}), `jensen_gap` Σ_k w_k KL(p_k ‖ q_linear),
    `per_teacher_kl` [K] KL(p_{k,T_k} ‖ p_{S,T_S}), `accuracy` and `log_loss` of the student
    (T = 1) against the labels, and `effective_num_teachers` 1/Σ w².
  """
  log_q = operator(teacher_logits, temperatures=temperatures, weights=weights)  # [B, ..., V]
  log_p_s = losses.student_log_probs(student_logits, student_temperature)  # [B, ..., V]
  log_p = temperature_lib.scale(teacher_logits, temperatures)  # [K, B, ..., V]
  per_teacher = jnp.stack(
    [losses.kl_divergence(log_p[k], log_p_s).mean() for k in range(log_p.shape[0])]
  )  # [K]
  w = jnp.asarray(weights, jnp.float32)
  return {
    "kl_q_student": losses.kl_divergence(log_q, log_p_s).mean(),
    "jensen_gap": theory.jensen_gap(teacher_logits, temperatures=temperatures, weights=w).mean(),
    "per_teacher_kl": per_teacher,
    "accuracy": (student_logits.argmax(-1) == labels).mean(),
    "log_loss": losses.cross_entropy(student_logits, labels).mean(),
    "effective_num_teachers": theory.effective_num_teachers(w, axis=0).mean(),
    "weight_entropy": weighting_lib.entropy(w, axis=0).mean(),
  }


# --------------------------------------------------------------------------------------------
# Update steps.
# --------------------------------------------------------------------------------------------
def make_train_step(
  student_apply: Callable,
  optimizer: optax.GradientTransformation,
  *,
  operator: Callable,
  loss: Callable,
  temperatures,
  weights,
  student_temperature: float = 1.0,
  label_weight: float = 0.0,
  teacher_apply: Callable | None = None,
  weighting: Callable | None = None,
  implementation: str = "auto",
  metrics_fn: Callable | None = None,
):
  """Builds the distillation update `train_step(state, batch, teacher_params=None)`.

  The loss is the batch mean of the per-example objective,
    mixture:    T_S² KL(G(p_1..p_K; T, w) ‖ p_{S,T_S})     (fused kernel or operator + loss)
    sum_of_kls: T_S² Σ_k w_k KL(p_{k,T_k} ‖ p_{S,T_S}),
  optionally blended with hard-label cross-entropy: (1 − a)·KD + a·CE.

  Args:
    student_apply: `apply(params, x) -> logits [B, ..., V]`.
    optimizer: an optax transformation.
    operator: `op(teacher_log_probs, *, temperatures, weights) -> log_q`, e.g.
      `operators.linear` or `operators.get("power", alpha=0.5)`.
    loss: `losses.mixture_kd`, `losses.sum_of_kls`, or a function with the signature of
      `losses.mixture_kd`.
    temperatures: [K] teacher temperatures T_k > 0.
    weights: [K] teacher weights summing to one.
    student_temperature: T_S > 0.
    label_weight: a ∈ [0, 1] weight of the hard-label cross-entropy.
    teacher_apply: `teacher_apply(teacher_params, batch) -> [K, B, ..., V]` frozen teachers run
      inside the step; if None, the batch carries precomputed `teacher_logits` [B, ..., K, V].
    weighting: adaptive weighting (`mtkd_jax.weighting`): a hook `weighting(teacher_logits,
      batch) -> weights [K] or [K, B, ...]` (e.g. `weighting.get("confidence", tau=0.5)`), or a
      trainable `weighting.Learned` gate: then params are `{"student": ..., "weighting": φ}`,
      the student trains on the stop-gradient gate weights and the gate on `weighting.loss`
      (logged as `gate_loss`). None uses the fixed `weights`. The step logs the effective
      number of teachers and the weight entropy.
    implementation: `implementation=` of the fused kernel ("auto", "xla", "pallas").
    metrics_fn: diagnostics with the signature of `distill_metrics` (None: that function);
      e.g. `sparse.distill_metrics` when `teacher_apply` returns sparse top-k outputs.

  Returns:
    `train_step(state, batch, teacher_params=None) -> (state, metrics)`, a pure function to
    jit; `batch` holds "x" [B, ...] and "y" int [B, ...] (and "teacher_logits").

  >>> from mtkd_jax import models
  >>> m = models.build("mlp", in_features=4, hidden=(8,), num_classes=3)
  >>> step = make_train_step(m.apply, optax.adam(1e-3), operator=operators.geometric,
  ...                        loss=losses.mixture_kd, temperatures=[1.0, 2.0], weights=[0.5, 0.5])
  """
  if not callable(operator):
    raise ValueError(f"operator: must be a function op(teacher_log_probs, *, temperatures, "
                     f"weights), got {operator!r}")  # fmt: skip
  if not callable(loss):
    raise ValueError(f"loss: must be a function, got {loss!r}")
  temperatures = temperature_lib.check_temperatures(temperatures, name="temperatures")
  num_teachers = temperatures.shape[0] if temperatures.ndim else None
  if num_teachers is None:
    raise ValueError(f"temperatures: need one per teacher [K], got {temperatures.shape=}")
  weights = operators.check_weights(weights, (num_teachers, 1), name="weights")[:, 0]  # [K]
  temperature_lib.check_temperatures(student_temperature, name="student_temperature")
  if not 0.0 <= label_weight <= 1.0:
    raise ValueError(f"label_weight: must be in [0, 1], got {label_weight}")
  if weighting is not None and not callable(weighting):
    raise ValueError(f"weighting: must be a function or weighting.Learned, got {weighting!r}")
  trainable = weighting_lib.is_trainable(weighting)
  fused = _FUSED.get(operator) if loss is losses.mixture_kd else None
  if fused is not None:
    try:  # Imported here: the kernel package pulls in Pallas, which the other paths never need.
      from mtkd_jax.kernels import fused_kd_loss
    except ImportError:  # a checkout without kernels/: the composed path computes the same loss
      fused = None

  def per_example_loss(student_logits, teacher_logits, w):
    if loss is losses.sum_of_kls:
      return loss(student_logits, teacher_logits, temperatures=temperatures, weights=w,
                  student_temperature=student_temperature)  # fmt: skip
    if fused is not None:
      return fused_kd_loss(student_logits, teacher_logits, temperatures=temperatures, weights=w,
                           student_temperature=student_temperature, operator=fused,
                           implementation=implementation)  # fmt: skip
    log_q = operator(teacher_logits, temperatures=temperatures, weights=w)  # [B, ..., V]
    return loss(student_logits, jax.lax.stop_gradient(log_q),
                student_temperature=student_temperature)  # fmt: skip

  def train_step(state: TrainState, batch, teacher_params=None):
    # Teachers are frozen: their outputs are data, never differentiated.
    if teacher_apply is None:
      teacher_logits = jnp.moveaxis(batch["teacher_logits"], -2, 0)  # [K, B, ..., V]
    else:
      teacher_logits = teacher_apply(teacher_params, batch)  # [K, B, ..., V]
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    fixed_w = weights if weighting is None or trainable else weighting(teacher_logits, batch)

    def loss_fn(params):
      student_params = params["student"] if trainable else params
      student_logits = student_apply(student_params, batch["x"])  # [B, ..., V]
      w, gate_loss = fixed_w, 0.0  # [K] or [K, B, ...]
      if trainable:  # the gate reads the student; the student sees the gate's weights as data
        w = weighting(params["weighting"], teacher_logits, batch, student_logits)
        gate_loss = weighting.loss(w, teacher_logits, batch).mean()
        w = jax.lax.stop_gradient(w)
      per_example = per_example_loss(student_logits, teacher_logits, w)  # [B, ...]
      if label_weight:
        per_example = losses.hard_label_blend(
          per_example, student_logits, batch["y"], label_weight=label_weight
        )
      return per_example.mean() + gate_loss, (student_logits, w, gate_loss)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss_value, (student_logits, w, gate_loss)), grads = grad_fn(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = (distill_metrics if metrics_fn is None else metrics_fn)(
      jax.lax.stop_gradient(student_logits), teacher_logits, batch["y"], operator=operator,
      temperatures=temperatures, weights=w, student_temperature=student_temperature,
    )  # fmt: skip
    metrics.update(loss=loss_value, grad_norm=optax.tree.norm(grads))
    if trainable:
      metrics["gate_loss"] = gate_loss
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


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


def make_optimizer(learning_rate: float, num_steps: int, *, weight_decay: float = 0.0,
                   warmup_steps: int = 0, clip_norm: float | None = 1.0):  # fmt: skip
  """AdamW with linear warm-up and cosine decay, after global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, learning_rate, max(warmup_steps, 1), max(num_steps, warmup_steps + 1)
  )
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  return optax.chain(*chain, optax.adamw(schedule, weight_decay=weight_decay))


# --------------------------------------------------------------------------------------------
# Workdir compatibility: a checkpoint is only resumed by the config that wrote it.
# --------------------------------------------------------------------------------------------
# Fields that change how a run is observed, not what it computes.
RESUMABLE_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints", "progress", "mesh")


def check_workdir(workdir: str, config: Mapping) -> None:
  """Refuses a workdir whose checkpoints come from an incompatible config; records the config.

  Raises:
    ValueError naming the first fields that differ, before anything is trained or written.
  """
  path = os.path.join(workdir, "config.json")
  current = json.loads(json.dumps(dict(config), default=_jsonable))
  current = {k: v for k, v in current.items() if k not in RESUMABLE_FIELDS}
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
      shown = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:3])
      raise ValueError(
        f"workdir {workdir!r} holds checkpoints of an incompatible config ({shown}); "
        "use a fresh --workdir or delete it"
      )
    return
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ValueError(f"workdir {workdir!r} holds checkpoints but no config.json; refusing to mix")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(current, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _jsonable(x):
  if hasattr(x, "to_dict"):
    return x.to_dict()
  if isinstance(x, np.ndarray | jax.Array):
    return np.asarray(x).tolist()
  return repr(x)


# --------------------------------------------------------------------------------------------
# The train loop.
# --------------------------------------------------------------------------------------------
def train(
  *,
  name: str,
  init_params: Callable[[jax.Array], Any],
  train_step: Callable,
  optimizer: optax.GradientTransformation,
  arrays: Mapping[str, np.ndarray],
  mesh: jax.sharding.Mesh,
  partition_rules,
  num_steps: int,
  batch_size: int,
  seed: int,
  checkpoint_dir: str | None,
  checkpoint_every: int,
  keep_checkpoints: int = 2,
  log_every: int = 10,
  teacher_params=None,
  report: Callable[[int, dict], None] | None = None,
):
  """Trains one model; resumes from `checkpoint_dir`; returns `(state, last_metrics)`.

  Args:
    name: run name (for messages).
    init_params: `init(rng) -> params`.
    train_step: `step(state, batch, teacher_params) -> (state, metrics)` from
      `make_train_step` or `make_supervised_step`.
    optimizer: the optax transformation the step uses (for the initial state).
    arrays: training data, dict of host arrays [N, ...] (e.g. "x", "y", "teacher_logits").
    mesh: ("data", "model") mesh; the batch goes over "data", parameters and optimizer state
      follow `partition_rules`.
    partition_rules: `((regex, spec), ...)`, see `mtkd_jax.sharding`.
    num_steps: total number of steps (also when resuming).
    batch_size: global batch size.
    seed: seed of the initialisation and of the batch order (a batch is a pure function of
      (seed, step), so a resumed run sees the batches of an uninterrupted one).
    checkpoint_dir: orbax directory of this run (None: no checkpoints). Avoid glob characters
      ("[", "*") in it: orbax's OCDBT merge would silently skip the checkpoint.
    checkpoint_every: save every this many steps (and always at the end).
    keep_checkpoints: keep the last this many checkpoints.
    log_every: fetch metrics to the host (a device sync) every this many steps.
    teacher_params: frozen teacher parameters passed to the step (replicated), or None.
    report: `report(step, metrics)` called on the host every `log_every` steps.
  """

  # ---- Shapes first, then shardings, then the sharded initialisation --------------------
  def init():
    params = init_params(jax.random.key(seed))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))  # fmt: skip

  abstract_state = jax.eval_shape(init)
  state_shardings = sharding_lib.tree_shardings(mesh, partition_rules, abstract_state)
  replicated = sharding_lib.replicated(mesh)
  batch_shardings = {k: sharding_lib.batch_sharding(mesh) for k in arrays}
  teacher_shardings = jax.tree.map(lambda _: replicated, teacher_params)
  rows = sharding_lib.process_batch_rows(mesh, batch_size)

  # ---- Resume from the latest checkpoint, or initialise ---------------------------------
  manager = None
  if checkpoint_dir is not None:
    if checkpoint_every < 1:
      raise ValueError(f"checkpoint_every: must be >= 1, got {checkpoint_every}")
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=checkpoint_every, max_to_keep=keep_checkpoints, create=True
    )
    manager = ocp.CheckpointManager(os.path.abspath(checkpoint_dir), options=options)
  latest = manager.latest_step() if manager is not None else None
  if latest is not None:
    target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state,
      state_shardings,
    )
    state = manager.restore(latest, args=ocp.args.StandardRestore(target))
  else:
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
  metrics = None
  host_metrics: dict = {}
  for step in range(start, num_steps):
    local = data_lib.get_batch(dict(arrays), batch_size, seed=seed, step=step, rows=rows)
    batch = sharding_lib.put_batch(mesh, local, batch_size)
    state, metrics = step_fn(state, batch, teacher_params)
    done = step + 1
    if manager is not None and done % checkpoint_every == 0:
      manager.save(done, args=ocp.args.StandardSave(state))
    if done % log_every == 0 or done == num_steps:
      host_metrics = jax.tree.map(lambda x: np.asarray(x).tolist(), metrics)
      if report is not None:
        report(done, host_metrics)

  # ---- Final checkpoint ------------------------------------------------------------------
  if manager is not None:
    if manager.latest_step() != num_steps:
      manager.save(num_steps, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()
    manager.close()
  return state, host_metrics


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
