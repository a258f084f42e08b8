"""The distillation loss T_S² · D(q, p_S) against a sparse target (paper §IV-B).

`sparse_kd_loss` computes T_S² · D(q, p_{S,T_S}) for D the forward KL, the reverse KL or the
JSD_β (`divergences.kd_divergence`), from the student's log-probs gathered at the support plus
one log-sum-exp over V; its gradient is analytic (`custom_vjp`). No dense [.., V] target is
ever built: the only dense arrays are the student's own (tempered logits and what is
elementwise in them, a membership mask of the support) and the gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mtkd_jax import divergences as divergences_lib
from mtkd_jax import losses as losses_lib
from mtkd_jax import temperature as temperature_lib
from mtkd_jax import theory
from mtkd_jax.sparse.operators import _log_sum_over_support, _membership
from mtkd_jax.sparse.outputs import _NEG_INF, SparseTarget


# ---------------------------------------------------------------------------------------------
# The loss: student log-probs gathered at the support plus one log-sum-exp; analytic gradient.
# ---------------------------------------------------------------------------------------------
def _tempered(student, inv_ts):
  """(z_S − max z_S) / T_S in float32, [B, V]: the softmax's own shift, applied before the
  division. At |z_S| / T_S ~ 1e7 a float32 x = z_S / T_S is known to ±0.5 only, and an FMA of
  x − LSE (XLA:CPU contracts them) moved log p_S of the top token by that much (p_S by e^±0.5);
  shifted first, the top token is exactly 0 and each x_j is as exact as the gap z_j − max z."""
  z = student.astype(jnp.float32)
  return (z - jnp.max(z, axis=-1, keepdims=True)) * inv_ts


def _sparse_kl(cfg, student, inv_ts, indices, log_q, valid, tail_log_mass, *, with_grad):
  """Rows `[B, ...]`: KL(q ‖ p_S) [B] and (optionally) ∂KL/∂(z_S / T_S) [B, V] float32."""
  tail_mode, v = cfg
  x = _tempered(student, inv_ts)  # [B, V] tempered student logits
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


def _sparse_div(cfg, student, inv_ts, indices, log_q, valid, tail_log_mass, *, with_grad):
  """Rows `[B, ...]`: the reverse KL or the JSD_β, D(q, p_S) [B], and (optionally) ∂D/∂x [B, V]
  float32, x = z_S / T_S, for the target of `tail_mode` (see `sparse_kd_loss`).

  The gradient: with g = ∂D/∂p_S taken as if p_S were free (for "bucket" the partial in the
  tail class's mass P_S(V \\ U), shared by every j ∉ U), ∂D/∂x = p_S ⊙ (g − Σ_V p_S g).
  Reverse KL: g = log p_S − log q (log P_S(V \\ U) − log t on the bucket), Σ p_S g = D.
  JSD: g = (1 − β)·(log p_S − log m), Σ p_S g = (1 − β)·KL(p_S ‖ m) (the q-terms' partials
  cancel against those of m). Off the support g is one number per row except under
  "uniform", where m_j = β·t/|V \\ U| + (1 − β)·p_S(j) varies with j: one elementwise pass over
  the student's own [B, V] logits, no dense target.
  """
  tail_mode, v, divergence, beta = cfg
  f32 = jnp.float32
  x = _tempered(student, inv_ts)  # [B, V] tempered student logits
  x_s = jnp.take_along_axis(x, indices, axis=-1)  # [B, n]
  in_u = _membership(indices, v)  # [B, V]
  lse_tail = jax.nn.logsumexp(jnp.where(in_u, _NEG_INF, x), axis=-1)  # [B], −inf: no tail
  lse = jnp.logaddexp(lse_tail, _log_sum_over_support(x_s, valid))  # [B]
  log_p = x - lse[:, None]  # [B, V]
  p = jnp.exp(log_p)
  log_ps = x_s - lse[:, None]  # [B, n] at the support
  ps = jnp.exp(log_ps)
  positive = valid & (log_q != _NEG_INF)  # NaN counts: it propagates
  log_q = jnp.where(positive, log_q, _NEG_INF)
  q = jnp.where(positive, jnp.exp(jnp.where(positive, log_q, 0.0)), 0.0)  # [B, n]
  t = jnp.exp(tail_log_mass)  # [B]
  has_tail = t > 0
  n_tail = (v - jnp.sum(valid, axis=-1)).astype(f32)  # [B] |V \ U|
  log_pt = lse_tail - lse  # [B] log P_S(V \ U)
  p_t = jnp.exp(log_pt)
  on_tail = p_t > 0  # the student has mass off the support (0 log 0 = 0 otherwise)
  safe_log_pt = jnp.where(on_tail, log_pt, 0.0)
  log_c = tail_log_mass - jnp.log(jnp.maximum(n_tail, 1.0))  # [B] "uniform": log q(j), j ∉ U
  sum_u = lambda a: jnp.sum(jnp.where(valid, a, 0.0), axis=-1)  # over U (first occurrences)
  sum_t = lambda a: jnp.sum(jnp.where(in_u, 0.0, a), axis=-1)  # over V \ U
  if divergence == "reverse_kl":
    # KL(p_S ‖ q): +inf where q = 0 under p_S > 0 ("drop" is refused by `sparse_kd_loss`).
    g_u = log_ps - log_q  # [B, n]
    d = sum_u(ps * g_u)
    if tail_mode == "uniform":
      g_t = log_p - log_c[:, None]  # [B, V]
      d = d + jnp.where(on_tail, sum_t(p * log_p) - p_t * log_c, 0.0)
    else:  # "bucket": the tail class P_S(V \ U) against t
      g_t = (safe_log_pt - tail_log_mass)[:, None]  # [B, 1]
      d = d + jnp.where(on_tail, p_t * g_t[:, 0], 0.0)
    centre = d
  else:
    log_b, log_1b = jnp.log(beta), jnp.log1p(-beta)
    log_m = jnp.logaddexp(log_b + log_q, log_1b + log_ps)  # [B, n]
    g_u = (1.0 - beta) * (log_ps - log_m)
    pm = sum_u(ps * g_u)  # (1 − β)·Σ_U p_S log(p_S / m)
    d = beta * sum_u(jnp.where(positive, q * (log_q - log_m), 0.0)) + pm
    if tail_mode == "drop":  # q = 0 off U: m = (1 − β)·p_S there
      g_t = jnp.full((x.shape[0], 1), -(1.0 - beta) * log_1b)
      pm_t = p_t * g_t[:, 0]
      d_t = pm_t
    elif tail_mode == "uniform":
      log_m_t = jnp.logaddexp(log_b + log_c[:, None], log_1b + log_p)  # [B, V]
      g_t = (1.0 - beta) * (log_p - log_m_t)
      pm_t = sum_t(p * g_t)
      q_t = jnp.where(has_tail, t * log_c, 0.0) - (t / jnp.maximum(n_tail, 1.0)) * sum_t(
        jnp.where(has_tail[:, None], log_m_t, 0.0)
      )  # Σ_{j ∉ U} c (log c − log m_j), c = t / |V \ U|
      d_t = beta * jnp.where(n_tail > 0, q_t, 0.0) + pm_t
    else:  # "bucket": m_T = β·t + (1 − β)·P_S(V \ U)
      log_m_t = jnp.logaddexp(log_b + tail_log_mass, log_1b + log_pt)  # [B]
      safe_log_m_t = jnp.where(jnp.isfinite(log_m_t), log_m_t, 0.0)
      g_t = jnp.where(on_tail, (1.0 - beta) * (safe_log_pt - safe_log_m_t), 0.0)[:, None]
      pm_t = p_t * g_t[:, 0]
      safe_tail_lm = jnp.where(has_tail, tail_log_mass, 0.0)
      d_t = beta * jnp.where(has_tail, t * (safe_tail_lm - safe_log_m_t), 0.0) + pm_t
    d = d + d_t
    centre = pm + pm_t
  # An empty target (no teacher present) gives 0 and a zero gradient; a NaN row NaN and NaN.
  empty = ~jnp.any(positive, axis=-1) & ~has_tail
  bad = jnp.any(valid & jnp.isnan(log_q), axis=-1) | jnp.isnan(tail_log_mass)
  d = jnp.where(bad, jnp.nan, jnp.where(empty, 0.0, d))
  if not with_grad:
    return d, None
  grad = jnp.where(in_u, 0.0, p * (g_t - centre[:, None]))  # [B, V] off the support
  on_u = jnp.where(valid, ps * (g_u - centre[:, None]), 0.0)  # [B, n], once per token of U
  grad = jax.vmap(lambda gr, i, a: gr.at[i].add(a))(grad, indices, on_u)
  grad = jnp.where(empty[:, None], 0.0, grad)
  return d, jnp.where(bad[:, None], jnp.nan, grad)


def _sparse_loss(cfg, *args, with_grad):
  if cfg[2] == "forward_kl":
    return _sparse_kl(cfg[:2], *args, with_grad=with_grad)
  return _sparse_div(cfg, *args, with_grad=with_grad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sparse_kl_vjp(cfg, student, inv_ts, indices, log_q, valid, tail_log_mass):
  args = (student, inv_ts, indices, log_q, valid, tail_log_mass)
  return _sparse_loss(cfg, *args, with_grad=False)[0]


def _sparse_kl_fwd(cfg, student, inv_ts, indices, log_q, valid, tail_log_mass):
  args = (student, inv_ts, indices, log_q, valid, tail_log_mass)
  kl, grad = _sparse_loss(cfg, *args, with_grad=True)
  # Residual: the [B, V] gradient ∂KL/∂z_S in the student's dtype; nothing else is dense.
  return kl, (grad * inv_ts).astype(student.dtype)


def _sparse_kl_bwd(cfg, grad, g):
  # The target, temperatures and weights are frozen: no cotangents for them.
  student_ct = (g[:, None] * grad.astype(jnp.float32)).astype(grad.dtype)
  return student_ct, None, None, None, None, None


_sparse_kl_vjp.defvjp(_sparse_kl_fwd, _sparse_kl_bwd)


def _check_divergence(divergence, beta, tail_mode):
  """ValueError naming the argument: unknown divergence, β outside (0, 1) or not a number,
  or the reverse KL against a "drop" target (+inf for every softmax student)."""
  divergences_lib.check_kd_divergence(divergence, beta)
  if isinstance(beta, jax.core.Tracer) or jnp.ndim(beta):
    raise ValueError(f"beta must be a Python number in (0, 1); got {beta=} ({jnp.shape(beta)=})")
  if divergence == "reverse_kl" and tail_mode == "drop":
    raise ValueError(
      "divergence='reverse_kl' with tail_mode='drop': the target is 0 off its support, where "
      "every softmax student has mass, so KL(p_S ‖ q) = +inf; use tail_mode 'uniform' or "
      "'bucket', or divergence='jsd'"
    )


def sparse_kd_loss(
  student_logits: jax.Array,
  sparse_target: SparseTarget,
  *,
  student_temperature=1.0,
  temperature_sq_scaling: bool = True,
  where=None,
  divergence: str = "forward_kl",
  beta=0.5,
) -> jax.Array:
  """T_S² · D(q, softmax(z_S / T_S)) for a sparse target q, per example.

  D is one of the KD divergences of `divergences.kd_divergence`: "forward_kl" KL(q ‖ p_S)
  (mass-covering, the usual KD loss), "reverse_kl" KL(p_S ‖ q) (mode-seeking), "jsd"
  JSD_β = β·KL(q ‖ m) + (1 − β)·KL(p_S ‖ m), m = β·q + (1 − β)·p_S (mode-seeking as β → 1).
  The target off its support U is what its tail mode says (t: the tail mass on V \\ U):
  "drop" q = 0 there (q sums to 1 on U); "uniform" q(j) = t/|V \\ U| for each j ∉ U; "bucket"
  one class of mass t, compared with the student's P_S(V \\ U) = Σ_{j ∉ U} p_S(j): D is then
  the divergence between the coarse-grained distributions over n + 1 outcomes.

  With x = z_S / T_S, LSE = log Σ_V e^x and log p_S(i) = x_i − LSE gathered at the n support
  entries, the forward KL is Σ_U q_i (log q_i − log p_S(i)) plus
  "uniform": t·log(t/|V \\ U|) − (t/|V \\ U|)·Σ_{j ∉ U} log p_S(j);
  "bucket":  t·(log t − log P_S(V \\ U));  "drop": nothing (t = 0).
  The reverse KL is Σ_U p_S(i)(log p_S(i) − log q_i) plus
  "uniform": Σ_{j ∉ U} p_S(j) log p_S(j) − P_S(V \\ U)·log(t/|V \\ U|);
  "bucket":  P_S(V \\ U)·(log P_S(V \\ U) − log t);
  "drop": +inf for every student with mass off U (a softmax always has some), so
  `divergence="reverse_kl"` with a "drop" target is refused (ValueError): use "uniform",
  "bucket" or the JSD, which stays finite. The JSD is the U terms of both KLs against
  m_i = β q_i + (1 − β) p_S(i) plus "drop": −(1 − β)·log(1 − β)·P_S(V \\ U) (m = (1 − β) p_S
  off U); "uniform": Σ_{j ∉ U} [β c log(c/m_j) + (1 − β) p_S(j) log(p_S(j)/m_j)], c =
  t/|V \\ U|, m_j = β c + (1 − β) p_S(j) (one elementwise pass over V); "bucket":
  β t log(t/m_T) + (1 − β) P_S log(P_S/m_T), m_T = β t + (1 − β) P_S(V \\ U).
  The reverse KL is +inf when q = 0 somewhere p_S > 0 (e.g. "uniform" with t = 0 but tokens
  off U). ∂/∂z_S is analytic (`_sparse_kl`, `_sparse_div`) and the only dense output.

  Args:
    student_logits: `[..., V]` float32 or bfloat16 (computed in float32, gradient in this dtype).
    sparse_target: a `SparseTarget` with `[..., n]` entries (from `linear`/`geometric`).
    student_temperature: T_S > 0, a scalar.
    temperature_sq_scaling: multiply by T_S² (Hinton et al.).
    where: optional per-example mask `[...]`: False gives 0 and exactly 0 gradient, whatever
      the row holds. A NaN target row (NaN or +inf teacher outputs under `jit`) gives NaN and a
      NaN gradient; an empty one (no teacher present) 0 and a zero gradient (docs/design.md).
    divergence: "forward_kl", "reverse_kl" (not with tail mode "drop") or "jsd".
    beta: β ∈ (0, 1) of the JSD (checked whatever the divergence), a Python number.

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
  _check_divergence(divergence, beta, sparse_target.tail_mode)
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
    (sparse_target.tail_mode, v, divergence, float(beta)),
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
