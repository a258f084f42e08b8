"""The distillation loss T_S² · KL(q ‖ p_S) against a sparse target (paper §IV-B).

`sparse_kd_loss` computes T_S² · KL(q ‖ p_{S,T_S}) from the student's log-probs gathered at the
support plus one log-sum-exp over V; its gradient is analytic (`custom_vjp`). No dense [.., V]
target is ever built: the only dense arrays are the student's own (tempered logits, a
membership mask for "uniform"/"bucket") and the gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mtkd_jax import losses as losses_lib
from mtkd_jax import temperature as temperature_lib
from mtkd_jax import theory
from mtkd_jax.sparse.operators import _log_sum_over_support, _membership
from mtkd_jax.sparse.outputs import _NEG_INF, SparseTarget


# ---------------------------------------------------------------------------------------------
# The loss: student log-probs gathered at the support plus one log-sum-exp; analytic gradient.
# ---------------------------------------------------------------------------------------------
def _sparse_kl(cfg, student, inv_ts, indices, log_q, valid, tail_log_mass, *, with_grad):
  """Rows `[B, ...]`: KL(q ‖ p_S) [B] and (optionally) ∂KL/∂(z_S / T_S) [B, V] float32."""
  tail_mode, v = cfg
  x = student.astype(jnp.float32) * inv_ts  # [B, V] tempered student logits
  x_s = jnp.take_along_axis(x, indices, axis=-1)  # [B, n] gathered at the support
  q = jnp.where(valid, jnp.exp(log_q), 0.0)  # [B, n]
  t = jnp.exp(tail_log_mass)  # [B]
  if tail_mode == "drop":
    lse = jax.nn.logsumexp(x, axis=-1)  # [B] the one log-sum-exp over V
    in_u = None
  else:
    in_u = _membership(indices, v)  # [B, V]
    lse_tail = jax.nn.logsumexp(jnp.where(in_u, _NEG_INF, x), axis=-1)  # the one over V
    lse = jnp.logaddexp(lse_tail, _log_sum_over_support(x_s, valid))
  log_ps = x_s - lse[:, None]  # [B, n] student log-probs at the support
  positive = valid & (log_q != _NEG_INF)  # NaN counts: it propagates, never a silent 0
  safe_lq = jnp.where(positive, log_q, 0.0)
  kl = jnp.sum(jnp.where(positive, q * (safe_lq - log_ps), 0.0), axis=-1)  # [B]
  has_tail = t > 0
  safe_tail_lm = jnp.where(has_tail, tail_log_mass, 0.0)
  if tail_mode == "uniform":
    n_tail = (v - jnp.sum(valid, axis=-1)).astype(jnp.float32)  # [B]
    n_safe = jnp.maximum(n_tail, 1.0)
    sum_tail_x = jnp.sum(jnp.where(in_u, 0.0, x), axis=-1)  # Σ_{j ∉ U} x_j
    sum_tail_logp = sum_tail_x - n_tail * lse
    kl = kl + jnp.where(
      has_tail, t * (safe_tail_lm - jnp.log(n_safe)) - t / n_safe * sum_tail_logp, 0.0
    )
  elif tail_mode == "bucket":
    log_p_tail = lse_tail - lse  # log P_S(V \ U)
    kl = kl + jnp.where(has_tail, t * (safe_tail_lm - log_p_tail), 0.0)
  # A NaN target row (the non-finite policy): NaN loss and a NaN gradient for every logit.
  bad = jnp.any(valid & jnp.isnan(log_q), axis=-1) | jnp.isnan(tail_log_mass)
  kl = jnp.where(bad, jnp.nan, kl)
  if not with_grad:
    return kl, None
  # ∂/∂x_j = (Σ_U q + t)·p_S(j) − q_eff(j): q_eff = q on U; on V \ U, t/|V \ U| ("uniform"),
  # t·p_S(j)/P_S(tail) ("bucket": the student's own tail shape), or 0 ("drop").
  mass = jnp.sum(q, axis=-1) + (0.0 if tail_mode == "drop" else t)  # [B]
  grad = mass[:, None] * jnp.exp(x - lse[:, None])  # [B, V]
  if tail_mode == "uniform":
    grad = grad - jnp.where(in_u, 0.0, jnp.where(has_tail, t / n_safe, 0.0)[:, None])
  elif tail_mode == "bucket":
    safe_lse_tail = jnp.where(jnp.isfinite(lse_tail), lse_tail, 0.0)
    tail_share = jnp.where(has_tail[:, None] & ~in_u, jnp.exp(x - safe_lse_tail[:, None]), 0.0)
    grad = grad - t[:, None] * tail_share
  grad = jax.vmap(lambda g, i, qq: g.at[i].add(-qq))(grad, indices, q)  # only q's n entries
  return kl, jnp.where(bad[:, None], jnp.nan, grad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sparse_kl_vjp(cfg, student, inv_ts, indices, log_q, valid, tail_log_mass):
  return _sparse_kl(cfg, student, inv_ts, indices, log_q, valid, tail_log_mass, with_grad=False)[0]


def _sparse_kl_fwd(cfg, student, inv_ts, indices, log_q, valid, tail_log_mass):
  kl, grad = _sparse_kl(cfg, student, inv_ts, indices, log_q, valid, tail_log_mass, with_grad=True)
  # Residual: the [B, V] gradient ∂KL/∂z_S in the student's dtype; nothing else is dense.
  return kl, (grad * inv_ts).astype(student.dtype)


def _sparse_kl_bwd(cfg, grad, g):
  # The target, temperatures and weights are frozen: no cotangents for them.
  student_ct = (g[:, None] * grad.astype(jnp.float32)).astype(grad.dtype)
  return student_ct, None, None, None, None, None


_sparse_kl_vjp.defvjp(_sparse_kl_fwd, _sparse_kl_bwd)


def sparse_kd_loss(
  student_logits: jax.Array,
  sparse_target: SparseTarget,
  *,
  student_temperature=1.0,
  temperature_sq_scaling: bool = True,
  where=None,
) -> jax.Array:
  """T_S² · KL(q ‖ softmax(z_S / T_S)) for a sparse target q, per example.

  With x = z_S / T_S, LSE = log Σ_V e^x and log p_S(i) = x_i − LSE gathered at the n support
  entries, the KL is Σ_U q_i (log q_i − log p_S(i)) plus, for the tail mass t on V \\ U:
  "uniform": t·log(t/|V \\ U|) − (t/|V \\ U|)·Σ_{j ∉ U} log p_S(j);
  "bucket":  t·(log t − log P_S(V \\ U));  "drop": nothing (t = 0).
  ∂/∂z_S = T_S·(p_S − q_eff) with scaling (see `_sparse_kl`); it is the only dense output.

  Args:
    student_logits: `[..., V]` float32 or bfloat16 (computed in float32, gradient in this dtype).
    sparse_target: a `SparseTarget` with `[..., n]` entries (from `linear`/`geometric`).
    student_temperature: T_S > 0, a scalar.
    temperature_sq_scaling: multiply by T_S² (Hinton et al.).
    where: optional per-example mask `[...]`: False gives 0 and exactly 0 gradient, whatever
      the row holds. A NaN target row (NaN or +inf teacher outputs under `jit`) gives NaN and a
      NaN gradient; an empty one (no teacher present) 0 and a zero gradient (docs/design.md).

  Returns:
    `[...]` float32 per-example losses.

  >>> from mtkd_jax.sparse import from_dense, linear
  >>> out = from_dense(jnp.log(jnp.array([[[0.7, 0.2, 0.1]]])), 2)
  >>> q = linear(out, temperatures=1.0, weights=jnp.ones(1), tail_mode="uniform")
  >>> sparse_kd_loss(jnp.log(jnp.array([[0.7, 0.2, 0.1]])), q).round(6)
  Array([0.], dtype=float32)
  """
  student_logits = jnp.asarray(student_logits)
  if not isinstance(sparse_target, SparseTarget):
    raise ValueError(f"sparse_target must be a SparseTarget, got {type(sparse_target).__name__}")
  batch_shape = sparse_target.log_probs.shape[:-1]
  if student_logits.shape != (*batch_shape, sparse_target.vocab_size):
    raise ValueError(
      f"student_logits must have shape [..., V] = {(*batch_shape, sparse_target.vocab_size)}, "
      f"got student_logits.shape={student_logits.shape}"
    )
  t_s = temperature_lib.check_temperatures(student_temperature, name="student_temperature")
  if t_s.ndim:
    raise ValueError(f"student_temperature must be a scalar, got shape={t_s.shape}")
  v, n = sparse_target.vocab_size, sparse_target.indices.shape[-1]
  stop = jax.lax.stop_gradient
  log_q = sparse_target.log_probs.astype(jnp.float32)
  tail = sparse_target.tail_log_mass.astype(jnp.float32)
  if where is not None:
    # Double where: a masked row becomes an empty target and zero logits, so its gradient is
    # exactly 0 whatever it held (NaN included), never 0·NaN.
    losses_lib.apply_where(jnp.zeros(batch_shape), where)  # the mask's shape check
    student_logits = losses_lib.mask_rows(student_logits, where)
    log_q = losses_lib.mask_rows(log_q, where, _NEG_INF)
    tail = jnp.where(where, tail, _NEG_INF)
  kl = _sparse_kl_vjp(
    (sparse_target.tail_mode, v),
    student_logits.reshape(-1, v),
    stop(1.0 / t_s),
    stop(sparse_target.indices.reshape(-1, n)),
    stop(log_q.reshape(-1, n)),
    stop(sparse_target.valid.reshape(-1, n)),
    stop(tail.reshape(-1)),
  ).reshape(batch_shape)
  if temperature_sq_scaling:
    kl = kl * t_s**2
  return losses_lib.apply_where(kl, where)


# ---------------------------------------------------------------------------------------------
# Training diagnostics with the signature of `train.distill_metrics`.
# ---------------------------------------------------------------------------------------------
def distill_metrics(
  student_logits,
  teacher_outputs,
  labels,
  *,
  operator,
  temperatures,
  weights,
  student_temperature=1.0,
) -> dict[str, jax.Array]:
  """Batch means: `kl_q_student` KL(q ‖ p_S), `target_tail_mass`, `accuracy`, `log_loss`,
  `effective_num_teachers`; `teacher_outputs` is a `SparseTeacherOutputs`, `operator` a sparse
  operator (`get(name, tail_mode=...)`)."""
  target = operator(teacher_outputs, temperatures=temperatures, weights=weights)
  kl = sparse_kd_loss(
    student_logits, target, student_temperature=student_temperature, temperature_sq_scaling=False
  )
  w = jnp.asarray(weights, jnp.float32)
  return {
    "kl_q_student": kl.mean(),
    "target_tail_mass": jnp.exp(target.tail_log_mass).mean(),
    "accuracy": (student_logits.argmax(-1) == labels).mean(),
    "log_loss": losses_lib.cross_entropy(student_logits, labels).mean(),
    "effective_num_teachers": theory.effective_num_teachers(w, axis=0).mean(),
  }
