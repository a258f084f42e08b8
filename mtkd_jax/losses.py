"""Distillation objectives (paper §IV-B): per-example values, never a silent mean.

- Mixture objective: L_mix = KL(q ‖ p_{S,T_S}), one aggregated target.
- Sum-of-KLs objective: L_multi = Σ_k λ_k KL(p_{k,T_k} ‖ p_{S,T_S}).

With λ = w and the linear operator, L_multi − L_mix = Σ_k w_k KL(p_k ‖ q) does not depend on the
student, so both objectives have the same gradient; they differ for other operators, per-teacher
student temperatures, or weights that depend on the student.

Hinton's T_S² scaling (which keeps gradient magnitudes comparable across temperatures) is a flag,
on by default. `where` is a per-example boolean mask `[...]`: masked examples give exactly 0,
and exactly 0 gradient whatever they hold (NaN included). Non-finite teacher outputs follow the
library's one policy (docs/design.md, "Non-finite inputs"; `operators.row_status`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import operators as operators_lib
from mtkd_jax import temperature as temperature_lib
from mtkd_jax.divergences import kl_divergence

__all__ = [
  "cross_entropy",
  "hard_label_blend",
  "kl_divergence",
  "mixture_kd",
  "student_log_probs",
  "sum_of_kls",
]


def apply_where(values: jax.Array, where, name="where") -> jax.Array:
  """values where the per-example mask is True, else 0; a mask that would change the shape of
  `values` (e.g. [B, 1] against [B]) is a ValueError, not a silent broadcast."""
  if where is None:
    return values
  where = jnp.asarray(where)
  try:
    compatible = jnp.broadcast_shapes(where.shape, values.shape) == values.shape
  except ValueError:
    compatible = False
  if not compatible:
    raise ValueError(
      f"{name} must be a per-example mask broadcastable to {values.shape}, "
      f"got {name}.shape={where.shape}"
    )
  return jnp.where(where, values, 0.0)


def mask_rows(x: jax.Array, where, fill=0.0, batch_ndim=None) -> jax.Array:
  """x `[..., V]` (or `[K, ..., V]` with `batch_ndim` = len(...)) with the rows where the
  per-example mask is False replaced by `fill`: the inner where of a double where, so that a
  masked row's contents (NaN included) never reach the backward as 0·NaN."""
  if where is None:
    return x
  where = jnp.asarray(where, bool)
  batch_ndim = x.ndim - 1 if batch_ndim is None else batch_ndim
  batch = x.shape[x.ndim - 1 - batch_ndim : -1]
  if jnp.broadcast_shapes(where.shape, batch) != batch:
    raise ValueError(
      f"where must be a per-example mask broadcastable to {batch}, got {where.shape}"
    )
  return jnp.where(jnp.broadcast_to(where, batch)[..., None], x, fill)


def nan_rows(loss: jax.Array, bad: jax.Array, logits: jax.Array) -> jax.Array:
  """loss `[...]` made NaN where `bad`, with a NaN gradient w.r.t. every logit `[..., V]` of
  those rows (and an exact 0 added elsewhere): a bad input is visible in the value and in the
  gradient norm, never absorbed."""
  finite = jnp.where(jnp.isfinite(logits), logits, 0.0)  # a −inf student logit stays exact
  return loss + jnp.sum(jnp.where(bad[..., None], jnp.nan, 0.0) * finite, axis=-1)


def _check_temperature(t, name) -> float | jax.Array:
  t = temperature_lib.check_temperatures(t, name=name)
  if t.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got {name}.shape={t.shape}")
  return t


def student_log_probs(student_logits: jax.Array, student_temperature=1.0) -> jax.Array:
  """log p_{S,T_S} = log_softmax(z_S / T_S), computed in float32 (or wider)."""
  return temperature_lib.scale(student_logits, _check_temperature(student_temperature, "T_S"))


def mixture_kd(
  student_logits: jax.Array,
  target_log_q: jax.Array,
  *,
  student_temperature=1.0,
  temperature_sq_scaling: bool = True,
  where=None,
) -> jax.Array:
  """L_mix = T_S² · KL(q ‖ softmax(z_S / T_S)), per example.

  The gradient with respect to the student logits is T_S² · (p_{S,T_S} − q) / T_S.

  Args:
    student_logits: `[..., V]`.
    target_log_q: `[..., V]` aggregated target log q (from an operator); -inf entries allowed.
    student_temperature: T_S > 0, a scalar.
    temperature_sq_scaling: multiply by T_S² (Hinton et al.).
    where: optional per-example mask `[...]`.

  Returns:
    `[...]` per-example losses.

  >>> z = jnp.array([0.0, 1.0]); lq = jnp.log(jnp.array([0.5, 0.5]))
  >>> mixture_kd(z, lq).round(4)
  Array(0.1201, dtype=float32)
  """
  student_logits, target_log_q = jnp.asarray(student_logits), jnp.asarray(target_log_q)
  if student_logits.shape != target_log_q.shape:
    raise ValueError(
      f"student_logits and target_log_q must have the same shape [..., V], got "
      f"student_logits.shape={student_logits.shape}, target_log_q.shape={target_log_q.shape}"
    )
  t_s = _check_temperature(student_temperature, "student_temperature")
  if where is not None:
    apply_where(jnp.zeros(student_logits.shape[:-1]), where)  # the mask's shape check
    student_logits = mask_rows(student_logits, where)
    target_log_q = mask_rows(target_log_q, where, -jnp.inf)  # masked: an empty target
  log_p_s = temperature_lib.scale(student_logits, t_s)
  loss = kl_divergence(target_log_q.astype(log_p_s.dtype), log_p_s)
  if temperature_sq_scaling:
    loss = loss * t_s**2
  return apply_where(loss, where)


def sum_of_kls(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  *,
  temperatures,
  weights,
  student_temperature=1.0,
  temperature_sq_scaling: bool = True,
  where=None,
) -> jax.Array:
  """L_multi = T_S² · Σ_k w_k KL(p_{k,T_k} ‖ p_{S,T_S}), per example (λ = w).

  Args:
    student_logits: `[..., V]`.
    teacher_logits: `[K, ..., V]` teacher log-probabilities or logits.
    temperatures: `[K]` or scalar teacher temperatures.
    weights: `[K]` or `[K, ...]` the λ_k, summing to one over K.
    student_temperature: T_S > 0; a `[K]` array gives per-teacher student temperatures.
    temperature_sq_scaling: multiply each term by its T_S².
    where: optional per-example mask `[...]`.

  Returns:
    `[...]` per-example losses: NaN where a teacher has NaN or +inf (a ValueError on concrete
    inputs), the weights renormalised over the teachers present in the row (a row entirely
    −inf is an absent teacher), 0 with a zero gradient where none is present (docs/design.md).
  """
  student_logits = jnp.asarray(student_logits)
  teacher_logits = jnp.asarray(teacher_logits)
  if teacher_logits.shape[1:] != student_logits.shape:
    raise ValueError(
      f"teacher_logits must have shape [K, *student_logits.shape], got "
      f"teacher_logits.shape={teacher_logits.shape}, "
      f"student_logits.shape={student_logits.shape}"
    )
  if where is not None:
    apply_where(jnp.zeros(student_logits.shape[:-1]), where)  # the mask's shape check
  log_p, w, (bad, empty) = operators_lib.prepare(
    teacher_logits, temperatures, weights, where=where, status=True
  )
  # Double where: masked and empty rows compute on a harmless stand-in (no 0·NaN backward).
  skip = empty if where is None else empty | ~jnp.asarray(where, bool)
  student_logits = mask_rows(student_logits, ~skip)
  log_p = mask_rows(log_p, ~skip, 0.0, batch_ndim=log_p.ndim - 2)
  num_teachers = log_p.shape[0]
  t_s = temperature_lib.check_temperatures(
    student_temperature, num_teachers, name="student_temperature"
  )
  t_s = jnp.broadcast_to(t_s, (num_teachers,))
  total = 0.0
  for k in range(num_teachers):  # Unrolled over K: each term is a single-teacher KL.
    log_p_s = temperature_lib.scale(student_logits, t_s[k])
    # 0·∞ = 0: a teacher with zero weight contributes nothing, even where p_S = 0 < p_k.
    term = jnp.where(w[k][..., 0] == 0, 0.0, w[k][..., 0] * kl_divergence(log_p[k], log_p_s))
    total = total + (term * t_s[k] ** 2 if temperature_sq_scaling else term)
  total = nan_rows(jnp.where(skip, 0.0, total), bad & ~skip, student_logits)
  return apply_where(jnp.broadcast_to(total, student_logits.shape[:-1]), where)


def cross_entropy(logits: jax.Array, labels: jax.Array, *, where=None) -> jax.Array:
  """−log softmax(logits)[label], per example. `labels` are integer class ids `[...]`."""
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if labels.shape != logits.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f"labels must be integers of shape logits.shape[:-1]={logits.shape[:-1]}, "
      f"got labels.shape={labels.shape} ({labels.dtype})"
    )
  if temperature_lib.is_concrete(labels) and (where is None or temperature_lib.is_concrete(where)):
    # Out-of-range ids would wrap (−1 -> V − 1) or gather NaN: refuse them where they count.
    # (Under jit the values are unknown: only shapes are checked there.)
    counted = np.asarray(labels)[np.broadcast_to(True if where is None else where, labels.shape)]
    bad = counted[(counted < 0) | (counted >= logits.shape[-1])]
    if bad.size:
      raise ValueError(
        f"labels must be class ids in [0, {logits.shape[-1]}) (logits.shape={logits.shape}), "
        f"got {bad.size} outside, e.g. {bad[:3].tolist()}"
      )
  log_p = jax.nn.log_softmax(logits.astype(temperature_lib.compute_dtype(logits.dtype)), axis=-1)
  loss = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
  return apply_where(loss, where)


def hard_label_blend(
  kd_loss: jax.Array,
  student_logits: jax.Array,
  labels: jax.Array,
  *,
  label_weight: float,
  where=None,
) -> jax.Array:
  """(1 − a) · kd_loss + a · CE(student, labels), per example, with a = `label_weight` ∈ [0, 1]."""
  if not 0.0 <= float(label_weight) <= 1.0:
    raise ValueError(f"label_weight must be in [0, 1], got {label_weight=}")
  ce = cross_entropy(student_logits, labels)
  return apply_where((1.0 - label_weight) * kd_loss + label_weight * ce, where)
