"""Divergences between distributions given in log space, reducing the vocabulary axis.

Each `divergence(log_a, log_b, axis=-1)` returns one value per row. These are the building blocks
of the losses (paper §IV-B) and of the barycenter operator (paper §III), which minimises
Σ_k w_k D(q, p_k) for whichever D the user passes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtkd_jax import registry


def _safe_exp_and_finite(log_x):
  """exp(log_x) and a mask of finite entries; -inf maps to 0 with zero gradient."""
  finite = jnp.isfinite(log_x)
  return jnp.where(finite, jnp.exp(jnp.where(finite, log_x, 0.0)), 0.0), finite


def kl_divergence(log_p: jax.Array, log_q: jax.Array, axis: int = -1) -> jax.Array:
  """KL(p ‖ q) = Σ_i p_i (log p_i − log q_i), with 0 · log 0 = 0.

  Entries where p_i = 0 (log_p = -inf) contribute exactly 0 and have finite (zero) gradients,
  so masked target tokens are safe. Where p_i > 0 and q_i = 0 the result is +inf, as it should be.
  NaN or +inf in log_p gives NaN, never a silent 0 (docs/design.md, "Non-finite inputs").

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
  support = log_p != -jnp.inf  # NaN and +inf count as support, so they propagate
  safe_log_p = jnp.where(support, log_p, 0.0)
  p = jnp.where(support, jnp.exp(safe_log_p), 0.0)
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


# ---------------------------------------------------------------------------------------------
# Divergences of the KD objective: target q against the tempered student, times T_S².
# ---------------------------------------------------------------------------------------------

KD_DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def check_kd_divergence(divergence, beta):
  """Raises ValueError for an unknown KD divergence name or β outside (0, 1)."""
  if divergence not in KD_DIVERGENCES:
    raise ValueError(f"divergence must be one of {KD_DIVERGENCES}; got {divergence=!r}")
  if not isinstance(beta, jax.core.Tracer) and not 0.0 < float(beta) < 1.0:
    raise ValueError(f"beta must be in (0, 1); got {beta=} (shape {jnp.shape(beta)})")


def generalized_jsd(log_q: jax.Array, log_p: jax.Array, beta=0.5, axis: int = -1) -> jax.Array:
  """JSD_β(q, p) = β·KL(q ‖ m) + (1 − β)·KL(p ‖ m), m = β·q + (1 − β)·p (GKD, Agarwal et al.).

  Bounded by −β log β − (1 − β) log(1 − β) ≤ log 2. JSD_β / β → KL(q ‖ p) as β → 0
  (mass-covering) and JSD_β / (1 − β) → KL(p ‖ q) as β → 1 (mode-seeking).

  Args:
    log_q: `[..., V]` log-probabilities of the target.
    log_p: `[..., V]` log-probabilities of the student.
    beta: β in (0, 1).
    axis: the vocabulary axis.

  Returns:
    `[...]` per-row divergences.
  """
  log_m = jnp.logaddexp(jnp.log(beta) + log_q, jnp.log1p(-beta) + log_p)
  return beta * kl_divergence(log_q, log_m, axis=axis) + (1.0 - beta) * kl_divergence(
    log_p, log_m, axis=axis
  )


def kd_divergence(
  log_q: jax.Array,
  student_logits: jax.Array,
  *,
  divergence: str = "forward_kl",
  beta=0.5,
  student_temperature=1.0,
) -> jax.Array:
  """T_S² · D(q, p_S) per row, p_S = softmax(z_S / T_S); composed, differentiated by autodiff.

    forward_kl:  KL(q ‖ p_S)                        mass-covering (the usual KD loss)
    reverse_kl:  KL(p_S ‖ q)                        mode-seeking (on-policy distillation)
    jsd:         β·KL(q ‖ m) + (1 − β)·KL(p_S ‖ m),  m = β·q + (1 − β)·p_S, β ∈ (0, 1)

  The fused kernels (`mtkd_jax.kernels`) compute the same values with analytic gradients; for
  the JSD, ∂/∂z_S = (1 − β)·T_S·p_S ⊙ (log p_S − log m − KL(p_S ‖ m)).

  Args:
    log_q: `[..., V]` target log-probabilities (any aggregation operator's output).
    student_logits: `[..., V]` student logits z_S.
    divergence: one of `KD_DIVERGENCES`.
    beta: β of the JSD (ignored otherwise, but must be in (0, 1)).
    student_temperature: T_S > 0.

  Returns:
    `[...]` per-row losses (float32, or float64 for float64 inputs).

  >>> log_q = jnp.log(jnp.array([0.5, 0.5]))
  >>> kd_divergence(log_q, jnp.zeros(2), divergence="jsd").round(4)
  Array(0., dtype=float32)
  """
  check_kd_divergence(divergence, beta)
  if jnp.shape(log_q) != jnp.shape(student_logits):
    raise ValueError(
      f"log_q and student_logits must have the same shape; got {jnp.shape(log_q)=}, "
      f"{jnp.shape(student_logits)=}"
    )
  # At least float32 (bf16 logits are upcast); float64 stays float64 (under jax.enable_x64).
  dtype = jnp.promote_types(jnp.result_type(student_logits, log_q), jnp.float32)
  ts = jnp.asarray(student_temperature, dtype)
  log_q = jnp.asarray(log_q, dtype)
  # An empty target (every entry −inf: no teacher present) gives 0 and a zero gradient; the
  # double where keeps the reverse KL's +inf out of the backward.
  empty = jnp.all(log_q == -jnp.inf, axis=-1)
  z = jnp.where(empty[..., None], 0.0, jnp.asarray(student_logits, dtype))
  log_q = jnp.where(empty[..., None], 0.0, log_q)
  log_p = jax.nn.log_softmax(z / ts, axis=-1)
  if divergence == "forward_kl":
    d = kl_divergence(log_q, log_p)
  elif divergence == "reverse_kl":
    d = kl_divergence(log_p, log_q)
  else:
    d = generalized_jsd(log_q, log_p, beta)
  return jnp.where(empty, 0.0, ts**2 * d)


@dataclasses.dataclass(frozen=True)
class KDDivergence:
  """A KD divergence chosen by name (`registry.get("divergence", "jsd(beta=0.9)")`).

  Calling it is `kd_divergence(log_q, student_logits, divergence=name, beta=beta, ...)`;
  `objectives.mixture(..., divergence=...)` passes name and β to the fused kernel.
  """

  name: str
  beta: float = 0.5

  def __post_init__(self):
    check_kd_divergence(self.name, self.beta)

  def __call__(self, log_q, student_logits, *, student_temperature=1.0) -> jax.Array:
    return kd_divergence(
      log_q,
      student_logits,
      divergence=self.name,
      beta=self.beta,
      student_temperature=student_temperature,
    )


registry.register("divergence", "forward_kl", factory=True)(lambda: KDDivergence("forward_kl"))
registry.register("divergence", "reverse_kl", factory=True)(lambda: KDDivergence("reverse_kl"))
registry.register("divergence", "jsd", factory=True)(lambda beta=0.5: KDDivergence("jsd", beta))
