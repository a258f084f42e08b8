"""Divergences between distributions given in log space, reducing the vocabulary axis.

Each `divergence(log_a, log_b, axis=-1)` returns one value per row. These are the building blocks
of the losses (paper §IV-B) and of the barycenter operator (paper §III), which minimises
Σ_k w_k D(q, p_k) for whichever D the user passes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _safe_exp_and_finite(log_x):
  """exp(log_x) and a mask of finite entries; -inf maps to 0 with zero gradient."""
  finite = jnp.isfinite(log_x)
  return jnp.where(finite, jnp.exp(jnp.where(finite, log_x, 0.0)), 0.0), finite


def kl_divergence(log_p: jax.Array, log_q: jax.Array, axis: int = -1) -> jax.Array:
  """KL(p ‖ q) = Σ_i p_i (log p_i − log q_i), with 0 · log 0 = 0.

  Entries where p_i = 0 (log_p = -inf) contribute exactly 0 and have finite (zero) gradients,
  so masked target tokens are safe. Where p_i > 0 and q_i = 0 the result is +inf, as it should be.

  Args:
    log_p: `[..., V]` log-probabilities of the first (target) distribution.
    log_q: `[..., V]` log-probabilities of the second distribution.
    axis: the vocabulary axis.

  Returns:
    `[...]` per-row divergences.

  >>> kl_divergence(jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.25, 0.75]))).round(4)
  Array(0.1438, dtype=float32)
  """
  if jnp.shape(log_p) != jnp.shape(log_q):
    raise ValueError(
      f"log_p and log_q must have the same shape [..., V], got log_p.shape={jnp.shape(log_p)}, "
      f"log_q.shape={jnp.shape(log_q)}"
    )
  p, support = _safe_exp_and_finite(log_p)
  safe_log_p = jnp.where(support, log_p, 0.0)
  safe_log_q = jnp.where(support, log_q, 0.0)
  return jnp.sum(jnp.where(support, p * (safe_log_p - safe_log_q), 0.0), axis=axis)


def reverse_kl(log_q: jax.Array, log_p: jax.Array, axis: int = -1) -> jax.Array:
  """D(q, p) = KL(p ‖ q): its weighted barycenter is the linear mixture Σ_k w_k p_k."""
  return kl_divergence(log_p, log_q, axis=axis)


def forward_kl(log_q: jax.Array, log_p: jax.Array, axis: int = -1) -> jax.Array:
  """D(q, p) = KL(q ‖ p): its weighted barycenter is the geometric pool ∝ Π_k p_k^{w_k}."""
  return kl_divergence(log_q, log_p, axis=axis)


def squared_hellinger(log_q: jax.Array, log_p: jax.Array, axis: int = -1) -> jax.Array:
  """D(q, p) = Σ_i (√q_i − √p_i)²: its barycenter is the power mean with α = 1/2."""
  sqrt_q, _ = _safe_exp_and_finite(0.5 * log_q)
  sqrt_p, _ = _safe_exp_and_finite(0.5 * log_p)
  return jnp.sum((sqrt_q - sqrt_p) ** 2, axis=axis)


# Names usable in configs, e.g. `operators.get("barycenter", divergence="hellinger")`.
DIVERGENCES = {
  "kl": forward_kl,
  "reverse_kl": reverse_kl,
  "hellinger": squared_hellinger,
}
