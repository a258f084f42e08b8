"""Thm IV.9, the log-loss bound −log q(y) ≤ −Σ_k w_k log p_k(y), on digits and on random inputs.

Jensen proves it for the linear mixture; it holds too for the geometric pool and power means with
α ≤ 1 (q(y) = M_α(y)/Z, M_α ≥ Π_k p_k^{w_k}, Z ≤ 1), not for α > 1 (Z > 1) nor the entropic pool.
"""

import dataclasses

import numpy as np

from mtkd_jax import operators, temperature, theory, train
from mtkd_jax.experiments import common, digits, tables

TOL = 1e-5  # −log q(y) − bound above this (float32 rounding) is a violation


def validate_config(config) -> None:
  common.check_random_search(config)
  common.check_operators("operators", config.operators)
  digits.validate_embedded(config.digits)


def check_bound(log_p, labels, weights, temperatures, specs) -> dict:
  """Per operator spec: both sides of Thm IV.9 per example and the violation summary, for
  log_p [K, N, V] (log-probabilities or logits), labels [N], weights [K] or [K, N], temperatures
  [K]."""
  p = np.exp(np.asarray(temperature.scale(log_p, temperatures), np.float64))  # [K, N, V]
  w = np.broadcast_to(
    np.reshape(weights, np.shape(weights) + (1,) * (2 - np.ndim(weights))), p.shape[:2]
  )  # [K, N]
  out = {}
  fixed = {"temperatures": temperatures, "weights": weights}
  for spec in specs:
    lhs, rhs = theory.log_loss_bound(log_p, labels, operator=operators.get(spec), **fixed)
    lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
    show = lambda j, lhs=lhs, rhs=rhs: {
      "teachers": p[:, j],
      "weights": w[:, j],
      "label": labels[j],
      "neg_log_q_y": lhs[j],
      "bound": rhs[j],
    }
    out[spec] = common.worst_case(lhs - rhs, TOL, show)
    out[spec].update(mean_lhs=float(lhs.mean()), mean_rhs=float(rhs.mean()))
    out[spec].update(lhs=lhs.tolist(), rhs=rhs.tolist())
  return out


def run(config, workdir: str) -> dict:
  """Digits teachers (cached in workdir) and random problems; returns per-operator summaries."""
  specs = list(config.operators)
  loop = train.Loop.from_config(config.digits, workdir)
  loop = dataclasses.replace(loop, progress=config.progress)
  splits, _, train_logits, test_logits = common.train_teachers(config.digits, loop)
  logits = np.concatenate([train_logits, test_logits], axis=1)  # [K, N, V]
  labels = np.concatenate([splits["train"].y, splits["test"].y])  # [N]
  temperatures = np.asarray(config.digits.temperatures, np.float32)
  weights = np.asarray(config.digits.weights, np.float32)
  real = check_bound(logits, labels, weights, temperatures, specs)

  k, v = config.random_num_teachers, config.random_vocab_size
  log_p, w, rng = common.random_teachers(config.seed, config.num_random, k, v)
  random_labels = rng.integers(0, v, config.num_random)
  rnd = check_bound(log_p, random_labels, w, np.ones(k, np.float32), specs)
  for r in rnd.values():  # per-example sides of the random search are not needed downstream
    del r["lhs"], r["rhs"]
  return {"digits": real, "random": rnd, "num_digits_examples": len(labels)}


def format_table(results: dict) -> str:
  """Violation rates and mean log-losses per operator."""
  columns = [("operator", "<24"), ("digits viol.", ">12.2%"), ("max excess", ">10.4f")]
  columns += [("mean −log q(y)", ">15.4f"), ("mean bound", ">10.4f")]
  columns += [("random viol.", ">12.2%"), ("max excess", ">10.4f")]
  rows = []
  for spec, r in results["digits"].items():
    x = results["random"][spec]
    rows.append((spec, r["fraction"], max(r["max_violation"], 0), r["mean_lhs"], r["mean_rhs"]))
    rows[-1] += (x["fraction"], max(x["max_violation"], 0))
  lines = ["Thm IV.9 log-loss bound −log q(y) ≤ −Σ_k w_k log p_k(y):"]
  lines += tables.lines(columns, rows)
  lines.append(f"  ({results['num_digits_examples']} digits examples, train + test)")
  for part in ("digits", "random"):
    for spec, r in results[part].items():
      if r["counterexample"] is not None:
        lines.append(f"  counterexample {spec} ({part}): {r['counterexample']}")
  return "\n".join(lines)
