"""The default job: K heterogeneous digits teachers distilled into MLP students (paper §IV-B).

Teachers see different pixels, noise, training rows and widths (`common.train_teachers`, cached
by their own config); one student per operator and one per single teacher; test accuracy and
log-loss of every model, of each aggregate q and of the average teacher (Thm IV.9, Cor IV.10).
"""

import numpy as np

from mtkd_jax import data as data_lib
from mtkd_jax import operators, registry, train
from mtkd_jax import temperature as temperature_lib
from mtkd_jax import weighting as weighting_lib
from mtkd_jax.experiments import common

PER_TEACHER_FIELDS = (
  "teacher_hidden",
  "teacher_keep_fractions",
  "teacher_noises",
  "teacher_train_fractions",
)


def validate_config(config) -> None:
  import jax

  common.check_numbers(
    config,
    positive_ints="num_teachers teacher_steps num_steps batch_size log_every checkpoint_every "
    "keep_checkpoints",
    non_negative_ints="seed data_seed warmup_steps",
    positive="teacher_learning_rate learning_rate student_temperature",
    non_negative="weight_decay teacher_noises",
    fractions="teacher_keep_fractions teacher_train_fractions",
    unit="label_weight",
  )
  k = config.num_teachers
  common.check_field("model", lambda: common.digits_model(config.student_hidden, config.model))
  common.check_operators("operator", [config.operator])
  common.check_operators("compare_operators", config.compare_operators, allow_empty=True)
  common.check_field(
    "temperatures", lambda: temperature_lib.check_temperatures(config.temperatures, k)
  )
  ok = np.ndim(config.temperatures) == 1
  common.require(ok, "temperatures", f"need one per teacher (K={k}), got a scalar")
  loss = {"temperatures": config.temperatures, "divergence": config.divergence}
  check_loss = lambda: registry.check("objective", config.loss, operator=operators.linear, **loss)
  common.check_field("loss", check_loss)
  common.check_field("weights", lambda: operators.check_weights(config.weights, (k, 1)))
  common.check_lengths(config, PER_TEACHER_FIELDS, k)
  common.check_mesh(config, jax.device_count())
  common.check_field("weighting", lambda: _weighting(config))


def validate_embedded(config) -> None:
  """`validate_config` of a digits config embedded in another experiment's `config.digits`:
  its errors read `config.digits.<field>: ...`."""
  try:
    validate_config(config)
  except ValueError as e:
    raise ValueError(str(e).replace("config.", "config.digits.", 1)) from None


def _weighting(config):
  """The adaptive weighting of the K-teacher students (`config.weighting`, a spec), or None; the
  temperatures, fixed weights and the gate's input size default to the job's."""
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

  # Students: one per operator, one per single teacher.
  op_specs = [config.operator] + [o for o in config.compare_operators if o != config.operator]
  students = [(f"student_{o}", o, list(range(k_teachers))) for o in op_specs]
  if config.single_teacher_students:
    students += [(f"student_from_teacher_{k}", "linear", [k]) for k in range(k_teachers)]
  student = common.digits_model(config.student_hidden, config.model)
  temperatures = np.asarray(config.temperatures, np.float32)
  weights = np.asarray(config.weights, np.float32)
  optimizer = common.optimizer(config, config.learning_rate, config.num_steps)
  loss = {"student_temperature": config.student_temperature, "divergence": config.divergence}
  loss["implementation"] = config.implementation
  # Every student: the same init and batch order (seed + 100); only q differs.
  fixed = {"optimizer": optimizer, "num_steps": config.num_steps, "seed": config.seed + 100}
  fixed.update(batch_size=config.batch_size, loop=loop)
  for name, spec, ks in students:
    w = weights[ks] / weights[ks].sum() if len(ks) > 1 else np.ones(1, np.float32)
    weighting = _weighting(config) if len(ks) == k_teachers else None
    op = operators.get(spec)
    objective = registry.get(
      "objective", config.loss, operator=op, temperatures=temperatures[ks], **loss
    )
    targets = {"objective": objective, "weights": w, "weighting": weighting}
    step = train.make_train_step(
      student.apply, optimizer, label_weight=config.label_weight, **targets
    )
    init = train.init_params(student.init, weighting)
    arrays = {"x": train_split.x, "y": train_split.y, "teacher_logits": train_logits[ks]}
    state, _ = train.train(name, init_params=init, train_step=step, arrays=arrays, **fixed)
    logits = train.predict(student.apply, state.params["student"], test_split.x, loop.mesh)
    results[name] = {
      **train.evaluate(logits, test_split.y),
      "description": f"distilled from {spec} q over teachers {ks}",
    }
    if weighting is not None:  # Cor IV.10's reference under the weights this student trained on
      w_test = _test_weights(weighting, state.params, test_logits, test_split, logits)
      results[name]["average_teacher"] = common.average_teacher(test_logits, test_split.y, w_test)

  # The aggregates q themselves, and the average teacher (Thm IV.9, Cor IV.10).
  for spec in op_specs:
    log_q = operators.get(spec)(test_logits, temperatures=temperatures, weights=weights)
    results[f"ensemble_q_{spec}"] = {
      **train.evaluate(np.asarray(log_q), test_split.y),
      "description": "the target itself (needs all teachers)",
    }
  # Both columns weighted by the run's weights w (an adaptively weighted student's own reference
  # is in its row: "average_teacher", under the weights the scheme gives each test example).
  teachers = [results[f"teacher_{k}"] for k in range(k_teachers)]
  results["average teacher"] = {
    "accuracy": float(np.dot(weights, [t["accuracy"] for t in teachers])),
    "log_loss": float(np.dot(weights, [t["log_loss"] for t in teachers])),
    "description": "Σ_k w_k accuracy_k, Σ_k w_k log-loss_k (Cor IV.10 reference)",
  }
  return results


def _test_weights(weighting, params, test_logits, test_split, student_logits) -> np.ndarray:
  """[K, N] weights the adaptive scheme gives the test examples (a gate: its trained params)."""
  batch = {"x": test_split.x, "y": test_split.y}
  if weighting_lib.is_trainable(weighting):
    w = weighting(params["weighting"], test_logits, batch, student_logits)
  else:
    w = weighting(test_logits, batch)
  w = np.asarray(w, np.float64)
  return np.broadcast_to(w.reshape(w.shape + (1,) * (2 - w.ndim)), test_logits.shape[:2])


def format_table(results: dict) -> str:
  """The results table: test accuracy and log-loss of every model."""
  lines = [f"{'model':<24} {'test acc':>9} {'test log-loss':>14}  notes", "-" * 100]
  for name, r in results.items():
    lines.append(f"{name:<24} {r['accuracy']:>9.4f} {r['log_loss']:>14.4f}  {r['description']}")
  avg = results["average teacher"]["log_loss"]
  lines.append("-" * 100)
  for name, r in results.items():
    if name.startswith("student_") and "teacher_" not in name:
      ref = r.get("average_teacher", {}).get("log_loss", avg)
      verdict = "beats" if r["log_loss"] < ref else "does NOT beat"
      which = " (under its adaptive weights)" if "average_teacher" in r else ""
      lines.append(
        f"{name} {verdict} the average teacher{which} log-loss: {r['log_loss']:.4f} vs {ref:.4f}"
      )
  return "\n".join(lines)
