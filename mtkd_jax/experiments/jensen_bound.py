"""Thm IV.7, the Jensen bound L_mix ≤ L_multi, along a student's training run and on random inputs.

Part 1: digits students trained on L_multi = Σ_k w_k KL(p_k ‖ p_S), one per operator G with the
same init and batches (one trajectory), each logging KL(G(p) ‖ p_S) and the Jensen–Shannon gap
Σ_k w_k KL(p_k ‖ q_lin); for linear G, L_multi − L_mix = JS at every step, and a twin trained
on L_mix (the same gradient) follows the same curve. Part 2: random teachers, weights and
students, per operator. The proof is convexity of KL (the linear mixture); others are measured.
"""

import os

import jax.numpy as jnp
import numpy as np

from mtkd_jax import losses, operators, theory
from mtkd_jax.experiments import common, digits, tables

GAP_TOL = 1e-5  # |L_multi − L_mix − JS| for the linear operator (float32 rounding)
BOUND_TOL = 1e-5  # L_mix − L_multi above this is a violation


def validate_config(config) -> None:
  common.check_random_search(config)
  common.check_operators("operators", config.operators)
  first = config.operators[0]
  common.require(first == "linear", "operators", f"the first must be 'linear', got {first!r}")
  digits.validate_embedded(_digits_config(config, "sum_of_kls", config.operators))


def _digits_config(config, loss: str, specs):
  return common.digits_job(config, specs, loss=loss, single_teacher_students=False)


def training_curves(config, workdir: str) -> dict:
  """Part 1: L_mix per operator, L_multi and JS along training; the L_mix-trained twin."""
  specs = list(config.operators)
  multi_dir, mix_dir = os.path.join(workdir, "sum_of_kls"), os.path.join(workdir, "mixture_kd")
  digits.run(_digits_config(config, "sum_of_kls", specs), multi_dir)
  # The twin's teachers are the same: restored from the teacher cache, not trained again.
  digits.run(_digits_config(config, "mixture_kd", ["linear"]), mix_dir)

  multi = common.read_metrics(os.path.join(multi_dir, "metrics.jsonl"))
  mix = common.read_metrics(os.path.join(mix_dir, "metrics.jsonl"))["student_linear"]
  lin = multi["student_linear"]
  l_multi, l_mix, js = (np.asarray(lin[k]) for k in ("loss", "kl_q_student", "jensen_gap"))
  twin = np.asarray(mix["kl_q_student"])
  return {
    "steps": lin["step"],
    "l_multi": l_multi.tolist(),
    "js": js.tolist(),
    "l_mix": {s: multi[f"student_{s}"]["kl_q_student"] for s in specs},
    "max_abs_gap_minus_js": float(np.max(np.abs(l_multi - l_mix - js))),
    "l_mix_of_mixture_trained": mix["kl_q_student"],
    # L_mix of the L_mix-trained vs the L_multi-trained student
    "max_abs_twin_difference": float(np.max(np.abs(twin - l_mix))),
    "max_abs_twin_relative": float(np.max(np.abs(twin / l_mix - 1.0))),
  }


def random_search(config) -> dict:
  """Part 2: KL(G(p) ‖ s) vs Σ_k w_k KL(p_k ‖ s) on random teachers, weights and students s."""
  k, v = config.random_num_teachers, config.random_vocab_size
  log_p, w, rng = common.random_teachers(config.seed, config.num_random, k, v)
  log_s = np.log(rng.dirichlet(np.ones(v), size=config.num_random)).astype(np.float32)  # [N, V]
  temperatures = jnp.ones(k)
  l_multi = np.asarray(losses.sum_of_kls(log_s, log_p, temperatures=temperatures, weights=w))
  js = np.asarray(theory.jensen_gap(log_p, temperatures=temperatures, weights=w))
  p, s = np.exp(log_p), np.exp(log_s)
  show = lambda j: {"teachers": p[:, j], "weights": w[:, j], "student": s[j]}
  out = {}
  for spec in config.operators:
    log_q = operators.get(spec)(log_p, temperatures=temperatures, weights=w)  # [N, V]
    l_mix = np.asarray(losses.kl_divergence(log_q, log_s))
    summary = common.worst_case(l_mix - l_multi, BOUND_TOL, show)
    summary["mean_l_mix"], summary["mean_l_multi"] = float(l_mix.mean()), float(l_multi.mean())
    if spec == "linear":
      summary["max_abs_gap_minus_js"] = float(np.max(np.abs(l_multi - l_mix - js)))
    out[spec] = summary
  return out


def run(config, workdir: str) -> dict:
  """Both parts; writes the digits runs under `<workdir>/sum_of_kls` and `<workdir>/mixture_kd`."""
  return {"training": training_curves(config, workdir), "random": random_search(config)}


def format_table(results: dict) -> str:
  """The identity and bound checks, and the per-operator violation table."""
  tr, rnd = results["training"], results["random"]
  lines = [
    "Thm IV.7 Jensen bound. Digits student trained on L_multi (λ = w), "
    f"{len(tr['steps'])} logged steps:",
    f"  linear: max |L_multi − L_mix − JS| = {tr['max_abs_gap_minus_js']:.2e} "
    f"({'✓' if tr['max_abs_gap_minus_js'] <= GAP_TOL else '✗'} ≤ {GAP_TOL:g})",
    f"  L_mix of the L_mix-trained twin vs the L_multi-trained student: max |Δ| = "
    f"{tr['max_abs_twin_difference']:.2e} (relative {tr['max_abs_twin_relative']:.2e}): "
    "same gradient, same trajectory",
  ]
  l_multi = np.asarray(tr["l_multi"])
  columns = [("operator", "<24"), ("steps with L_mix > L_multi", ">27"), ("final L_mix", ">12.4f")]
  columns += [("final L_multi", ">14.4f")]
  rows = []
  for spec, l_mix in tr["l_mix"].items():
    above = int(np.sum(np.asarray(l_mix) > l_multi + BOUND_TOL))
    rows.append((spec, f"{above:>20}/{len(l_multi):<6}", l_mix[-1], l_multi[-1]))
  lines += tables.lines(columns, rows)
  lines.append("Random teachers, weights and students: KL(G(p) ‖ s) ≤ Σ_k w_k KL(p_k ‖ s)?")
  columns = [("operator", "<24"), ("violations", ">10.2%"), ("max L_mix − L_multi", ">20.4g")]
  lines += tables.lines(columns, [(s, r["fraction"], r["max_violation"]) for s, r in rnd.items()])
  gap = rnd.get("linear", {}).get("max_abs_gap_minus_js")
  if gap is not None:
    lines.append(f"  linear: max |L_multi − L_mix − JS| = {gap:.2e}")
  for spec, r in rnd.items():
    if r["counterexample"] is not None:
      lines.append(f"  counterexample {spec}: {r['counterexample']}")
  return "\n".join(lines)
