"""Prop IV.11 / Cor IV.12, safety attenuation: q(unsafe) as the safety teacher's weight w* grows.

Cor IV.12: q(i) ≤ (1 − w*) max_{k≠k*} p_k(i) + w* p_{k*}(i); Prop IV.11: q(i) < max_k p_k(i). The
proofs treat q(i) as a convex combination (linear); normalised pools divide by Z(p, w), which can
be < 1, and the entropic pool lifts small probabilities. Part 1: scenarios over w* ∈ [0, 1];
part 2: random problems (Cor IV.12 on tokens with p_{k*}(i) ≤ `unsafe_threshold`).
"""

import jax.numpy as jnp
import numpy as np

from mtkd_jax import operators, theory
from mtkd_jax.experiments import common, tables

TOL = 1e-6  # q(i) − bound above this (float32 rounding) is a violation


def validate_config(config) -> None:
  common.check_random_search(config, unit="unsafe_threshold")
  common.check_operators("operators", config.operators)
  for name, teachers in config.scenarios.items():
    p = np.asarray(teachers, np.float64)
    ok = p.ndim == 2 and p.shape[0] >= 2 and not np.any(p <= 0)
    message = f"need K ≥ 2 rows of positive probabilities, got shape {p.shape}"
    common.require(ok, f"scenarios.{name}", message)
  n = config.num_weights
  common.require(n >= 2, "num_weights", f"need ≥ 2 values of w*, got {n}")


def scenario_sweep(teachers, specs, num_weights: int) -> dict:
  """q(0) and the Cor IV.12 bound for w* on a grid, the safety teacher being the last row."""
  p = np.asarray(teachers, np.float64)
  p = p / p.sum(-1, keepdims=True)  # [K, V]
  k = p.shape[0]
  w_star = np.linspace(0.0, 1.0, num_weights)  # [W]
  weights = np.concatenate(
    [np.repeat(((1.0 - w_star) / (k - 1))[None], k - 1, axis=0), w_star[None]]
  ).astype(np.float32)  # [K, W]
  log_p = jnp.log(jnp.asarray(np.repeat(p[:, None], num_weights, axis=1), jnp.float32))
  out = {"w_star": w_star.tolist(), "teachers": p.tolist(), "q": {}, "violations": {}}
  fixed = {"temperatures": jnp.ones(k), "weights": weights, "safety_teacher": k - 1}
  for spec in specs:
    q, bound = theory.safety_bound(log_p, operator=operators.get(spec), **fixed)
    q0, b0 = np.asarray(q[:, 0], np.float64), np.asarray(bound[:, 0], np.float64)
    out["bound"] = b0.tolist()
    out["q"][spec] = q0.tolist()
    out["violations"][spec] = [
      float(w) for w, a, b in zip(w_star, q0, b0, strict=True) if a > b + TOL
    ]
  return out


def random_search(config) -> dict:
  """Violation rates of Cor IV.12 (on premise tokens) and Prop IV.11 over random problems."""
  k, v = config.random_num_teachers, config.random_vocab_size
  log_p, w, _ = common.random_teachers(config.seed, config.num_random, k, v)  # [K, N, V], [K, N]
  p = np.exp(log_p.astype(np.float64))
  premise = p[-1] <= config.unsafe_threshold  # [N, V] tokens the safety teacher calls unsafe
  p_max = p.max(axis=0)  # [N, V]
  below = ((w[..., None] > 0) & (p < p_max - TOL)).any(axis=0)  # [N, V] Prop IV.11 premise
  out = {}
  fixed = {"temperatures": jnp.ones(k), "weights": w, "safety_teacher": k - 1}
  for spec in config.operators:
    q, bound = theory.safety_bound(log_p, operator=operators.get(spec), **fixed)
    q, bound = np.asarray(q, np.float64), np.asarray(bound, np.float64)
    cor = np.where(premise, q - bound, -np.inf).max(axis=-1)  # [N]
    prop = np.where(below, q - p_max, -np.inf).max(axis=-1)  # [N]
    show = lambda j, q=q: {"teachers": p[:, j], "weights": w[:, j], "q": q[j]}
    out[spec] = {
      "cor_iv12": common.worst_case(np.where(np.isfinite(cor), cor, -1.0), TOL, show),
      "prop_iv11": common.worst_case(np.where(np.isfinite(prop), prop, -1.0), TOL, show),
    }
  return out


def run(config, workdir: str) -> dict:
  """Scenario sweeps and the random search; everything is in the returned results."""
  del workdir
  specs = list(config.operators)
  return {
    "scenarios": {
      name: scenario_sweep(t, specs, config.num_weights) for name, t in config.scenarios.items()
    },
    "random": random_search(config),
    "unsafe_threshold": config.unsafe_threshold,
  }


def format_table(results: dict) -> str:
  """Per scenario, the w* where each operator exceeds the bound; random-search violation rates."""
  lines = ["Cor IV.12 safety bound q(unsafe) ≤ (1 − w*) max_{k≠k*} p_k + w* p_{k*}:"]
  for name, sc in results["scenarios"].items():
    lines.append(f"  scenario {name!r} (teachers: {np.round(sc['teachers'], 3).tolist()}):")
    for spec, ws in sc["violations"].items():
      q = sc["q"][spec]
      where = f"above the bound for w* ∈ [{min(ws):.2f}, {max(ws):.2f}]" if ws else "holds"
      lines.append(f"    {spec:<24} q(0) at w*=0: {q[0]:.4f}, at w*=1: {q[-1]:.4f}; {where}")
  lines.append(
    f"Random problems (Cor IV.12 on tokens with p_k*(i) ≤ {results['unsafe_threshold']}; "
    "Prop IV.11 q(i) < p_max):"
  )
  columns = [("operator", "<24")]
  for name in ("IV.12", "IV.11"):
    columns += [(f"{name} viol.", ">11.2%"), ("max excess", ">10.4f")]
  rate = lambda r: (r["fraction"], max(r["max_violation"], 0))
  rows = [(s, *rate(r["cor_iv12"]), *rate(r["prop_iv11"])) for s, r in results["random"].items()]
  lines += tables.lines(columns, rows)
  for spec, r in results["random"].items():
    if r["prop_iv11"]["counterexample"] is not None:
      lines.append(f"  IV.11 counterexample {spec}: {r['prop_iv11']['counterexample']}")
  return "\n".join(lines)
