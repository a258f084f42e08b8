"""Diagnostics and closed forms of the paper's guarantees (paper §IV–V).

Each function computes one quantity of a theorem so that tests, experiments and training logs can
compare measured numbers with the math:

- Def IV.1  cross-teacher variance Var_k[p_k(i)] = Σ_k w_k p_k(i)² − q(i)².
- Thm IV.2  ensemble noise variance Σ_j Σ_l w_j w_l Cov(ε_j, ε_l).
- Thm IV.7  Jensen gap L_multi − L_mix = Σ_k w_k KL(p_k ‖ q) (linear operator, λ = w).
- Thm IV.9  log-loss bound −log q(y) ≤ −Σ_k w_k log p_k(y).
- Cor IV.12 safety bound q(i) ≤ (1 − w*) max_{k≠k*} p_k(i) + w* p_{k*}(i).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtkd_jax import operators as operators_lib
from mtkd_jax.divergences import kl_divergence


def cross_teacher_variance(teacher_logits, *, weights, temperatures=1.0) -> jax.Array:
  """Def IV.1: Var_k[p_k(i)] = Σ_k w_k p_k(i)² − q(i)², with q the linear mixture.

  Computed as Σ_k w_k (p_k(i) − q(i))², the same quantity without cancellation.

  Returns:
    `[..., V]` per-token variances, ≥ 0.
  """
  log_p, w = operators_lib.prepare(teacher_logits, temperatures, weights)
  p = jnp.exp(log_p)  # [K, ..., V]
  q = sum(w[k] * p[k] for k in range(p.shape[0]))
  return sum(w[k] * (p[k] - q) ** 2 for k in range(p.shape[0]))


def ensemble_noise_variance(weights, covariance) -> jax.Array:
  """Thm IV.2: Var[Σ_k w_k ε_k] = Σ_j Σ_l w_j w_l Cov(ε_j, ε_l) = wᵀ C w.

  For uncorrelated errors this is Σ_k w_k² σ_k² ≤ Σ_k w_k σ_k²; for equal σ and pairwise
  correlation ρ it is σ² (Σ w² + ρ (1 − Σ w²)).

  Args:
    weights: `[K]`.
    covariance: `[K, K]` covariance of the teacher errors.
  """
  w, c = jnp.asarray(weights, jnp.float32), jnp.asarray(covariance, jnp.float32)
  if w.ndim != 1 or c.shape != (w.shape[0], w.shape[0]):
    raise ValueError(
      f"need weights [K] and covariance [K, K], got weights.shape={w.shape}, "
      f"covariance.shape={c.shape}"
    )
  return w @ c @ w


def equicorrelated_covariance(sigmas, rho: float) -> jax.Array:
  """Cov(ε_j, ε_l) = ρ σ_j σ_l for j ≠ l and σ_j² on the diagonal."""
  s = jnp.asarray(sigmas, jnp.float32)
  k = s.shape[0]
  if not -1.0 / max(k - 1, 1) <= rho <= 1.0:
    raise ValueError(f"rho must be in [-1/(K-1), 1] for a valid covariance, got {rho=}, K={k}")
  corr = rho * jnp.ones((k, k)) + (1.0 - rho) * jnp.eye(k)
  return corr * s[:, None] * s[None, :]


def _weighted_sum(w, terms):
  """Σ_k w_k x_k with 0·(±∞) = 0: a teacher with zero weight contributes nothing."""
  return sum(jnp.where(w[k] == 0, 0.0, w[k] * terms[k]) for k in range(len(terms)))


def jensen_gap(teacher_logits, *, temperatures, weights) -> jax.Array:
  """L_multi − L_mix for the linear operator and λ = w: Σ_k w_k KL(p_{k,T} ‖ q).

  The generalised Jensen–Shannon divergence of the teachers. It is ≥ 0 (Thm IV.7) and independent
  of the student, so the two objectives share their gradient in this case.

  Returns:
    `[...]` per example.
  """
  log_p, w = operators_lib.prepare(teacher_logits, temperatures, weights)
  log_q = operators_lib.linear(log_p, temperatures=1.0, weights=w[..., 0])
  return _weighted_sum(w[..., 0], [kl_divergence(log_p[k], log_q) for k in range(len(log_p))])


def log_loss_bound(
  teacher_logits, labels, *, temperatures, weights, operator=operators_lib.linear
) -> tuple[jax.Array, jax.Array]:
  """Thm IV.9: both sides of −log q(y) ≤ −Σ_k w_k log p_{k,T}(y).

  It holds for the linear operator by Jensen's inequality and for the geometric pool by Hölder
  (its normaliser is ≤ 1); other operators are reported, not assumed.

  Args:
    teacher_logits: `[K, ..., V]`.
    labels: `[...]` integer targets y.
    temperatures, weights: as for operators.
    operator: the aggregation operator producing q.

  Returns:
    `(aggregate_log_loss, weighted_teacher_log_loss)`, each `[...]`.
  """
  labels = jnp.asarray(labels)
  log_p, w = operators_lib.prepare(teacher_logits, temperatures, weights)
  if labels.shape != log_p.shape[1:-1]:
    raise ValueError(f"labels must have shape {log_p.shape[1:-1]}, got labels.shape={labels.shape}")
  log_q = operator(teacher_logits, temperatures=temperatures, weights=weights)
  at_y = lambda lp: jnp.take_along_axis(lp, labels[..., None], axis=-1)[..., 0]
  rhs = -_weighted_sum(w[..., 0], [at_y(log_p[k]) for k in range(len(log_p))])
  return -at_y(log_q), rhs


def safety_bound(
  teacher_logits,
  *,
  temperatures,
  weights,
  safety_teacher: int,
  operator=operators_lib.linear,
) -> tuple[jax.Array, jax.Array]:
  """Cor IV.12: q(i) and the bound (1 − w*) max_{k≠k*} p_k(i) + w* p_{k*}(i).

  The bound holds for the linear operator; for non-linear operators it need not, and comparing
  the two sides is how the experiments report it.

  Returns:
    `(q, bound)`, each `[..., V]` probabilities.
  """
  log_p, w = operators_lib.prepare(teacher_logits, temperatures, weights)
  num_teachers = log_p.shape[0]
  if not 0 <= safety_teacher < num_teachers or num_teachers < 2:
    raise ValueError(
      f"safety_teacher must be in [0, {num_teachers}) with K ≥ 2, got "
      f"{safety_teacher=} for teacher_logits.shape={log_p.shape}"
    )
  p = jnp.exp(log_p)
  others = [p[k] for k in range(num_teachers) if k != safety_teacher]
  max_other = others[0]
  for o in others[1:]:
    max_other = jnp.maximum(max_other, o)
  w_star = w[safety_teacher]
  bound = (1.0 - w_star) * max_other + w_star * p[safety_teacher]
  q = jnp.exp(operator(teacher_logits, temperatures=temperatures, weights=weights))
  return q, bound


def effective_num_teachers(weights, axis: int = 0) -> jax.Array:
  """1 / Σ_k w_k²: K for uniform weights, 1 when one teacher takes all the weight."""
  w = jnp.asarray(weights, jnp.float32)
  return 1.0 / jnp.sum(w**2, axis=axis)
