"""Thm IV.9, the log-loss bound −log q(y) ≤ −Σ_k w_k log p_k(y), on digits and on random inputs.

The proof is Jensen's inequality for the linear mixture. It also holds for the geometric pool,
and for every power mean with α ≤ 1: q(y) = M_α(y)/Z with M_α(y) ≥ M_0(y) = Π_k p_k(y)^{w_k} and a
normaliser Z = Σ_i M_α(i) ≤ Σ_i M_1(i) = 1 (power means grow with α), so q(y) ≥ Π_k p_k(y)^{w_k}.
For α > 1 the normaliser exceeds 1, and the entropic pool flattens q: neither is covered, and the
measurements below show where they break.

Part 1 (digits): the digits job's teachers (trained or restored from the teacher cache)
on every train and test example, per operator: the fraction of examples with −log q(y) above the
bound, the largest excess, and the mean of both sides.
Part 2 (random): random teachers, weights and labels, the same statistics.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtkd_jax import operators, temperature, theory, train
from mtkd_jax.experiments import common, digits, tables

TOL = 1e-5  # −log q(y) − bound above this (float32 rounding) is a violation


def validate_config(config) -> None:
  """Raises ValueError("config.<field>: ...") for the first invalid field."""
  common.check_operators("operators", config.operators)
  if config.num_random < 1:
    raise ValueError(f"config.num_random: need ≥ 1 random problems, got {config.num_random}")
  digits.validate_embedded(config.digits)


def check_bound(log_p, labels, weights, temperatures, specs) -> dict:
  """Per operator: both sides of Thm IV.9 per example and the violation summary.

  Args:
    log_p: [K, N, V] teacher log-probabilities or logits.
    labels: int [N].
    weights: [K] or [K, N].
    temperatures: [K].
    specs: operator specs.
  """
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
