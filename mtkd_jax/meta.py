"""Anchored recursive meta-distillation: q_t = α q_base + (1 − α) p_{S_{t−1}} (paper §IX follow-on).

Generation t distils a student S_t from the anchored target q_t, a linear mixture of the base
aggregate q_base (fixed) and the previous student. KL is convex in its first argument, so

    KL(q_t ‖ q_base) ≤ α KL(q_base ‖ q_base) + (1 − α) KL(p_{S_{t−1}} ‖ q_base)
                     = (1 − α) KL(p_{S_{t−1}} ‖ q_base)                          (per example)

for any student. If every student fits its target exactly (p_{S_t} = q_t), then
q_t = (1 − (1 − α)^t) q_base + (1 − α)^t p_{S_0}, and
KL(q_t ‖ q_base) ≤ (1 − α)^t KL(p_{S_0} ‖ q_base): the sequence contracts geometrically to the
anchor. Real students add their fitting error each generation; `recursive_distillation` records
both bounds next to the measured values.
With α = 0 (no anchor) nothing contracts: each generation copies the previous one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import operators
from mtkd_jax.divergences import kl_divergence


def _check_alpha(alpha):
  if not 0.0 <= float(alpha) <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha=}")


def anchored_target(log_q_base, student_log_probs, alpha: float) -> jax.Array:
  """log q_t = log(α q_base + (1 − α) p_S): `operators.linear` over (q_base, p_S) with (α, 1 − α).

  Args:
    log_q_base: `[..., V]` log-probabilities of the base aggregate.
    student_log_probs: `[..., V]` log-probabilities (or logits) of the previous student.
    alpha: anchor weight α ∈ [0, 1].

  Returns:
    log q_t, `[..., V]`.

  >>> lq = jnp.log(jnp.array([0.5, 0.5])); lp = jnp.log(jnp.array([0.9, 0.1]))
  >>> jnp.exp(anchored_target(lq, lp, 0.5)).round(2)
  Array([0.7, 0.3], dtype=float32)
  """
  _check_alpha(alpha)
  log_q_base, student_log_probs = jnp.asarray(log_q_base), jnp.asarray(student_log_probs)
  if log_q_base.shape != student_log_probs.shape:
    raise ValueError(
      f"log_q_base and student_log_probs must have the same shape [..., V], got "
      f"{log_q_base.shape=}, {student_log_probs.shape=}"
    )
  stacked = jnp.stack([log_q_base, student_log_probs])  # [2, ..., V]
  weights = jnp.array([alpha, 1.0 - alpha], jnp.float32)
  return operators.linear(stacked, temperatures=jnp.ones(2), weights=weights)


def contraction_bound(log_q_base, previous_student_log_probs, alpha: float) -> jax.Array:
  """(1 − α) KL(p_{S_{t−1}} ‖ q_base) per example: a bound on KL(q_t ‖ q_base) for any student."""
  _check_alpha(alpha)
  log_p = jax.nn.log_softmax(jnp.asarray(previous_student_log_probs, jnp.float32), axis=-1)
  return (1.0 - alpha) * kl_divergence(log_p, jnp.asarray(log_q_base, jnp.float32))


def geometric_bound(kl_initial, alpha: float, generation) -> jax.Array:
  """(1 − α)^t KL(p_{S_0} ‖ q_base): the bound at generation t for students that fit exactly."""
  _check_alpha(alpha)
  return (1.0 - alpha) ** jnp.asarray(generation, jnp.float32) * jnp.asarray(kl_initial)


def recursive_distillation(
  train_student: Callable[[int, jax.Array], jax.Array],
  log_q_base,
  initial_student_log_probs,
  *,
  alpha: float,
  num_generations: int,
) -> dict[str, np.ndarray]:
  """Runs generations t = 1..T of anchored recursive distillation and records the contraction.

  Args:
    train_student: `train_student(t, log_q_t [N, V]) -> log p_{S_t} [N, V]`: trains generation
      t's student on the targets and returns its log-probabilities on the same N inputs.
    log_q_base: `[N, V]` the base aggregate on the training inputs.
    initial_student_log_probs: `[N, V]` the generation-0 student p_{S_0}.
    alpha: anchor weight α.
    num_generations: T ≥ 1.

  Returns:
    dict of `[T + 1]` arrays, index t = generation (index 0: the initial student, targets NaN):
    `kl_target_base` mean KL(q_t ‖ q_base), `kl_student_base` mean KL(p_{S_t} ‖ q_base),
    `kl_target_student` mean KL(q_t ‖ p_{S_t}) (the fitting error), `step_bound`
    (1 − α) mean KL(p_{S_{t−1}} ‖ q_base), `geometric_bound` (1 − α)^t mean KL(p_{S_0} ‖ q_base),
    `step_bound_holds` / `geometric_bound_holds` (per example, over all examples) and
    `geometric_bound_holds_mean` (for the means).
  """
  _check_alpha(alpha)
  if num_generations < 1:
    raise ValueError(f"num_generations must be ≥ 1, got {num_generations=}")
  log_q_base = jnp.asarray(log_q_base, jnp.float32)
  log_p = jax.nn.log_softmax(jnp.asarray(initial_student_log_probs, jnp.float32), axis=-1)
  kl0 = kl_divergence(log_p, log_q_base)  # [N]
  nan = float("nan")
  out = {k: [nan] for k in ("kl_target_base", "kl_target_student", "step_bound")}
  out["kl_student_base"] = [float(kl0.mean())]
  out["geometric_bound"] = [float(kl0.mean())]
  out["step_bound_holds"], out["geometric_bound_holds"] = [True], [True]
  out["geometric_bound_holds_mean"] = [True]
  for t in range(1, num_generations + 1):
    log_q_t = anchored_target(log_q_base, log_p, alpha)  # [N, V]
    kl_target = kl_divergence(log_q_t, log_q_base)  # [N]
    step = contraction_bound(log_q_base, log_p, alpha)  # [N]
    geometric = geometric_bound(kl0, alpha, t)  # [N]
    log_p = jax.nn.log_softmax(jnp.asarray(train_student(t, log_q_t), jnp.float32), axis=-1)
    out["kl_target_base"].append(float(kl_target.mean()))
    out["kl_student_base"].append(float(kl_divergence(log_p, log_q_base).mean()))
    out["kl_target_student"].append(float(kl_divergence(log_q_t, log_p).mean()))
    out["step_bound"].append(float(step.mean()))
    out["geometric_bound"].append(float(geometric.mean()))
    # Float32 slack: KL values near 0 are computed to ~1e-6.
    out["step_bound_holds"].append(bool(jnp.all(kl_target <= step + 1e-5)))
    out["geometric_bound_holds"].append(bool(jnp.all(kl_target <= geometric + 1e-5)))
    out["geometric_bound_holds_mean"].append(bool(kl_target.mean() <= geometric.mean() + 1e-6))
  return {k: np.asarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The fixed point: chains from different starting students.
# ---------------------------------------------------------------------------------------------
def mean_kl(log_p, log_q) -> float:
  """Mean over examples of KL(p ‖ q) (float64, from log-probabilities [N, V])."""
  log_p, log_q = np.asarray(log_p, np.float64), np.asarray(log_q, np.float64)
  return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1)))


def mean_tv(log_p, log_q) -> float:
  """Mean over examples of the total variation ½ ‖p − q‖₁."""
  return float(np.mean(0.5 * np.abs(np.exp(log_p) - np.exp(log_q)).sum(-1)))


def fixed_point_agreement(alpha: float, log_q_base, by_start: dict) -> dict:
  """Do chains from different starting students reach one fixed point, and how fast?

  Args:
    alpha: the anchor weight of the chains.
    log_q_base: `[N, V]` the anchor.
    by_start: start name -> (targets [log q_1..q_T], students [log p_{S_0}..p_{S_T}]), each
      `[N, V]`, the chains of one α from different generation-0 students.

  Returns:
    `student_distance[t]`: the largest mean TV between two chains' students at generation t;
    `target_distance[t]`: the same for their targets (t ≥ 1); `max_kl_final_targets` /
    `max_kl_final_students` / `max_kl_initial_students`: the largest mean KL between two chains'
    last targets, last students, and starts; `contraction_rate`: the measured per-generation
    factor (student_distance[T] / student_distance[0])^{1/T}, against `rate_bound` = 1 − α
    (with exact students two chains' targets differ by (1 − α)^t (p_{S_0}^a − p_{S_0}^b), so
    their distance shrinks by exactly 1 − α per generation; α = 0 does not contract at all);
    `rate_per_generation`, and `final_kl_student_base` per start.

  >>> lq = jnp.log(jnp.array([[0.5, 0.5]])); starts = {"a": [0.9, 0.1], "b": [0.1, 0.9]}
  >>> chains = {n: ([], [jnp.log(jnp.array([p]))]) for n, p in starts.items()}
  >>> chains = {n: ([anchored_target(lq, s[0], 0.5)], [s[0], anchored_target(lq, s[0], 0.5)])
  ...           for n, (_, s) in chains.items()}
  >>> round(fixed_point_agreement(0.5, lq, chains)["contraction_rate"], 3)
  0.5
  """
  names = list(by_start)
  pairs = [(a, b) for a in names for b in names if a != b]
  students = {n: s for n, (_, s) in by_start.items()}
  targets = {n: t for n, (t, _) in by_start.items()}
  num_generations = len(students[names[0]]) - 1
  dist = [
    max((mean_tv(students[a][t], students[b][t]) for a, b in pairs), default=0.0)
    for t in range(num_generations + 1)
  ]
  target_dist = [float("nan")] + [
    max((mean_tv(targets[a][t], targets[b][t]) for a, b in pairs), default=0.0)
    for t in range(num_generations)
  ]
  rate = (dist[-1] / dist[0]) ** (1.0 / num_generations) if dist[0] > 0 else float("nan")
  per_generation = [b / a if a > 0 else float("nan") for a, b in itertools.pairwise(dist)]
  return {
    "starts": names,
    "student_distance": dist,
    "target_distance": target_dist,
    "max_kl_final_targets": max(
      (mean_kl(targets[a][-1], targets[b][-1]) for a, b in pairs), default=0.0
    ),
    "max_kl_final_students": max(
      (mean_kl(students[a][-1], students[b][-1]) for a, b in pairs), default=0.0
    ),
    "max_kl_initial_students": max(
      (mean_kl(students[a][0], students[b][0]) for a, b in pairs), default=0.0
    ),
    "contraction_rate": float(rate),
    "rate_per_generation": per_generation,
    "rate_bound": 1.0 - alpha,
    "final_kl_student_base": {n: mean_kl(students[n][-1], log_q_base) for n in names},
  }
