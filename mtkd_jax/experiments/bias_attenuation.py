"""Supervisory bias attenuation (paper §VI, "Clarification on diversity and bias").

Teachers trained on class-shifted subsets over-predict their classes; a predictor's bias on test
data is b(c) = E_x[p(c | x)] − P(y = c). For the linear operator b_q = Σ_k w_k b_k exactly, so
‖b_q‖ ≤ Σ_k w_k ‖b_k‖ and opposite biases cancel; the other operators are measured.
"""

import dataclasses

import numpy as np

from mtkd_jax import data as data_lib
from mtkd_jax import operators, temperature, train
from mtkd_jax.experiments import common, digits, tables


def validate_config(config) -> None:
  common.check_numbers(config, positive_ints="window", unit="out_fraction")
  common.check_operators("operators", config.operators)
  ok = config.window <= data_lib.NUM_CLASSES
  common.require(ok, "window", f"at most {data_lib.NUM_CLASSES} classes, got {config.window}")
  digits.validate_embedded(config.digits)


def class_windows(num_teachers: int, window: int) -> list[list[int]]:
  """The favoured classes of each teacher: `window` consecutive digits, shifted by 10/K.

  >>> class_windows(3, 6)
  [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8], [7, 8, 9, 0, 1, 2]]
  """
  starts = [round(k * data_lib.NUM_CLASSES / num_teachers) for k in range(num_teachers)]
  return [[(s + j) % data_lib.NUM_CLASSES for j in range(window)] for s in starts]


def biased_views(config, train_labels: np.ndarray) -> list[data_lib.TeacherView]:
  """The digits views of `config.digits`, with each teacher's training rows class-shifted."""
  d = config.digits
  views = common.teacher_views(d, len(train_labels))
  windows = class_windows(d.num_teachers, config.window)
  out = []
  for k, (view, classes) in enumerate(zip(views, windows, strict=True)):
    rng = np.random.default_rng([d.data_seed, 100 + k])
    inside = np.isin(train_labels, classes)
    keep = inside | (rng.random(len(train_labels)) < config.out_fraction)
    out.append(dataclasses.replace(view, train_rows=np.flatnonzero(keep)))
  return out


def bias_stats(log_q: np.ndarray, labels: np.ndarray) -> dict:
  """Bias vector b [V], its L2 norm and TV size, accuracy, log-loss and Brier of log q [N, V]."""
  q = np.exp(np.asarray(log_q, np.float64))
  onehot = np.eye(q.shape[-1])[labels]
  b = (q - onehot).mean(axis=0)  # [V]
  return {
    "bias": b.tolist(),
    "bias_l2": float(np.linalg.norm(b)),
    "bias_tv": float(0.5 * np.abs(b).sum()),
    "accuracy": float(np.mean(q.argmax(-1) == labels)),
    "log_loss": float(-np.mean(np.log(np.maximum(q[np.arange(len(labels)), labels], 1e-30)))),
    "brier": float(np.mean(np.sum((q - onehot) ** 2, axis=-1))),
  }


def run(config, workdir: str) -> dict:
  """Trains the biased teachers (cached in workdir), then compares their bias with q's."""
  splits = data_lib.load_digits(seed=config.digits.data_seed)
  views = biased_views(config, splits["train"].y)
  loop = train.Loop.from_config(config.digits, workdir)
  loop = dataclasses.replace(loop, progress=config.progress)
  _, _, _, test_logits = common.train_teachers(config.digits, loop, views=views)  # [K, N, V]
  labels = splits["test"].y
  temperatures = np.asarray(config.digits.temperatures, np.float32)
  weights = np.asarray(config.digits.weights, np.float32)
  log_p = np.asarray(temperature.scale(test_logits, temperatures))  # [K, N, V]
  teachers = {f"teacher_{k}": bias_stats(log_p[k], labels) for k in range(len(log_p))}
  for k, name in enumerate(teachers):
    teachers[name]["classes"] = class_windows(len(log_p), config.window)[k]
    teachers[name]["train_examples"] = len(views[k].train_rows)
  aggregates = {}
  for spec in config.operators:
    log_q = operators.get(spec)(test_logits, temperatures=temperatures, weights=weights)
    aggregates[spec] = bias_stats(np.asarray(log_q), labels)
  mean_teacher = float(np.dot(weights, [t["bias_l2"] for t in teachers.values()]))
  linear_combo = np.tensordot(weights, [t["bias"] for t in teachers.values()], axes=1)
  linear_bias = aggregates["linear"]["bias"] if "linear" in aggregates else linear_combo
  return {
    "teachers": teachers,
    "aggregates": aggregates,
    "weighted_teacher_bias_l2": mean_teacher,  # Σ_k w_k ‖b_k‖
    "best_teacher_bias_l2": float(min(t["bias_l2"] for t in teachers.values())),
    # max_c |b_q(c) − Σ_k w_k b_k(c)| for the linear operator: 0 up to rounding
    "linear_identity_error": float(np.max(np.abs(np.asarray(linear_bias) - linear_combo))),
    "label_frequency": np.bincount(labels, minlength=data_lib.NUM_CLASSES).tolist(),
  }


def format_table(results: dict) -> str:
  """Bias size, accuracy, log-loss and Brier of every teacher and aggregate."""
  columns = [("model", "<24"), ("‖b‖₂", ">7.4f"), ("TV(b)", ">7.4f"), ("acc", ">7.4f")]
  columns += [("log-loss", ">9.4f"), ("Brier", ">7.4f"), (" notes", "")]
  keys = ("bias_l2", "bias_tv", "accuracy", "log_loss", "brier")
  rows = [
    (n, *(r[k] for k in keys), f" trained on classes {r['classes']} (+ a few others)")
    for n, r in results["teachers"].items()
  ]
  rows += [(f"q[{n}]", *(r[k] for k in keys), "") for n, r in results["aggregates"].items()]
  return "\n".join(
    [
      "Supervisory bias against held-out truth, b = E[p(·|x) − e_y] (test set):",
      *tables.lines(columns, rows),
      f"  Σ_k w_k ‖b_k‖ = {results['weighted_teacher_bias_l2']:.4f}; best single teacher "
      f"{results['best_teacher_bias_l2']:.4f}; linear: max |b_q − Σ w_k b_k| = "
      f"{results['linear_identity_error']:.1e}",
    ]
  )
