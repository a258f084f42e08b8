"""The default job: K heterogeneous digits teachers distilled into MLP students (paper §IV-B).

Trains K teachers that each see another subset of pixels, noise level, part of the training set
and width (`common.train_teachers`, cached by their own config), then one student per operator
(`config.operator` and `config.compare_operators`) and one per single teacher, and reports the
test accuracy and log-loss of every model, of the aggregate q itself and of the average teacher
(Thm IV.9, Cor IV.10). Config: experiments/configs/digits.py.
"""

from __future__ import annotations

import numpy as np

from mtkd_jax import data as data_lib
from mtkd_jax import models, operators, registry, train
from mtkd_jax import temperature as temperature_lib
from mtkd_jax.experiments import common

PER_TEACHER_FIELDS = (
  "teacher_hidden",
  "teacher_keep_fractions",
  "teacher_noises",
  "teacher_train_fractions",
)


def validate_config(config) -> None:
  """Raises ValueError("config.<field>: ...") for the first invalid field."""
  import jax

  common.check_numbers(
    config,
    positive_ints=(
      "num_teachers",
      "teacher_steps",
      "num_steps",
      "batch_size",
      "log_every",
      "checkpoint_every",
      "keep_checkpoints",
    ),
    non_negative_ints=("seed", "data_seed", "warmup_steps"),
    positive=("teacher_learning_rate", "learning_rate"),
    non_negative=("weight_decay", "teacher_noises"),
    fractions=("teacher_keep_fractions", "teacher_train_fractions"),
  )
  k = config.num_teachers
  common.check_field("model", lambda: _student(config))
  common.check_operators("operator", [config.operator])
  common.check_operators("compare_operators", config.compare_operators, allow_empty=True)
  common.check_field(
    "temperatures", lambda: temperature_lib.check_temperatures(config.temperatures, k)
  )
  if np.ndim(config.temperatures) != 1:
    raise ValueError(f"config.temperatures: need one per teacher (K={k}), got a scalar")
  common.check_field(
    "student_temperature",
    lambda: temperature_lib.check_temperatures(
      config.student_temperature, name="student_temperature"
    ),
  )
  check_loss = lambda: registry.check(
    "objective",
    config.loss,
    operator=operators.linear,
    temperatures=config.temperatures,
    divergence=config.divergence,
  )
  common.check_field("loss", check_loss)
  common.check_field("weights", lambda: operators.check_weights(config.weights, (k, 1)))
  for field in PER_TEACHER_FIELDS:
    if len(config[field]) != k:
      raise ValueError(f"config.{field}: need one entry per teacher (K={k}), got {config[field]}")
  common.check_mesh(config, jax.device_count())
  if not 0.0 <= config.label_weight <= 1.0:
    raise ValueError(f"config.label_weight: must be in [0, 1], got {config.label_weight}")
  common.check_field("weighting", lambda: _weighting(config))


def validate_embedded(config) -> None:
  """`validate_config` of a digits config embedded in another experiment's `config.digits`:
  its errors read `config.digits.<field>: ...`."""
  try:
    validate_config(config)
  except ValueError as e:
    raise ValueError(str(e).replace("config.", "config.digits.", 1)) from None


def _weighting(config):
  """The adaptive weighting of the K-teacher students (`config.weighting`, a spec), or None.

  The teachers' temperatures, the fixed weights and the gate's input size default to the job's.
  """
  if not config.weighting:
    return None
  name, kwargs = registry.parse(config.weighting)
  defaults = {
    "static": {"weights": config.weights},
    "confidence": {"temperatures": config.temperatures},
    "label_aware": {"temperatures": config.temperatures},
    "learned": {
      "temperatures": config.temperatures,
      "num_features": data_lib.NUM_PIXELS + data_lib.NUM_CLASSES,
      "num_teachers": config.num_teachers,
    },
  }.get(name, {})
  return registry.get("weighting", name, **{**defaults, **kwargs})


def _student(config) -> models.FunctionalModel:
  return models.build(
    config.model,
    in_features=data_lib.NUM_PIXELS,
    hidden=tuple(config.student_hidden),
    num_classes=data_lib.NUM_CLASSES,
  )


def run(config, workdir: str) -> dict:
  """Trains the teachers and students of `config` in `workdir`; returns the results dict."""
  loop = train.Loop.from_config(config, workdir)
  k_teachers = config.num_teachers
  splits, views, train_logits, test_logits = common.train_teachers(config, loop)  # [K, N, V]
  train_split, test_split = splits["train"], splits["test"]
  results: dict[str, dict] = {}
  for k, view in enumerate(views):
    results[f"teacher_{k}"] = {
      **train.evaluate(test_logits[k], test_split.y),
      "description": f"{view.pixel_mask.mean():.0%} pixels, noise {view.noise}, "
      f"{len(view.train_rows)} train ex., width {config.teacher_hidden[k]}",
    }

  # ---- Students: one per operator, one per single teacher ---------------------------------
  op_specs = [config.operator] + [o for o in config.compare_operators if o != config.operator]
  students = [(f"student_{o}", o, list(range(k_teachers))) for o in op_specs]
  if config.single_teacher_students:
    students += [(f"student_from_teacher_{k}", "linear", [k]) for k in range(k_teachers)]
  student = _student(config)
  temperatures = np.asarray(config.temperatures, np.float32)
  weights = np.asarray(config.weights, np.float32)
  optimizer = train.make_optimizer(
    config.learning_rate,
    config.num_steps,
    weight_decay=config.weight_decay,
    warmup_steps=config.warmup_steps,
  )
  for name, spec, ks in students:
    operator = operators.get(spec)
    w = weights[ks] / weights[ks].sum() if len(ks) > 1 else np.ones(1, np.float32)
    weighting = _weighting(config) if len(ks) == k_teachers else None
    objective = registry.get(
      "objective",
      config.loss,
      operator=operator,
      temperatures=temperatures[ks],
      student_temperature=config.student_temperature,
      divergence=config.divergence,
      implementation=config.implementation,
    )
    step = train.make_train_step(
      student.apply,
      optimizer,
      objective=objective,
      weights=w,
      label_weight=config.label_weight,
      weighting=weighting,
    )
    state, _ = train.train(
      name,
      init_params=train.init_params(student.init, weighting),
      train_step=step,
      optimizer=optimizer,
      arrays={"x": train_split.x, "y": train_split.y, "teacher_logits": train_logits[ks]},
      num_steps=config.num_steps,
      batch_size=config.batch_size,
      seed=config.seed + 100,  # every student: same init and batch order; only q differs
      loop=loop,
    )
    logits = train.predict(student.apply, state.params["student"], test_split.x, loop.mesh)
    results[name] = {
      **train.evaluate(logits, test_split.y),
      "description": f"distilled from {spec} q over teachers {ks}",
    }

  # ---- The aggregate q itself, and the average teacher (Thm IV.9, Cor IV.10) --------------
  for spec in op_specs:
    log_q = operators.get(spec)(test_logits, temperatures=temperatures, weights=weights)
    results[f"ensemble_q_{spec}"] = {
      **train.evaluate(np.asarray(log_q), test_split.y),
      "description": "the target itself (needs all teachers)",
    }
  # Both columns weighted by the run's weights w (for adaptive weighting, still the fixed w).
  teachers = [results[f"teacher_{k}"] for k in range(k_teachers)]
  results["average teacher"] = {
    "accuracy": float(np.dot(weights, [t["accuracy"] for t in teachers])),
    "log_loss": float(np.dot(weights, [t["log_loss"] for t in teachers])),
    "description": "Σ_k w_k accuracy_k, Σ_k w_k log-loss_k (Cor IV.10 reference)",
  }
  return results


def format_table(results: dict) -> str:
  """The results table: test accuracy and log-loss of every model."""
  lines = [f"{'model':<24} {'test acc':>9} {'test log-loss':>14}  notes", "-" * 100]
  for name, r in results.items():
    lines.append(f"{name:<24} {r['accuracy']:>9.4f} {r['log_loss']:>14.4f}  {r['description']}")
  avg = results["average teacher"]["log_loss"]
  lines.append("-" * 100)
  for name, r in results.items():
    if name.startswith("student_") and "teacher_" not in name:
      verdict = "beats" if r["log_loss"] < avg else "does NOT beat"
      lines.append(
        f"{name} {verdict} the average teacher log-loss: {r['log_loss']:.4f} vs {avg:.4f}"
      )
  return "\n".join(lines)
