"""Sparse and offline teachers: stored top-k outputs, re-tempering, tail mass (SPEC §7).

A teacher seen only through its top-k is a `SparseTeacherOutputs`: `indices [K, ..., k]` int32
and `log_probs [K, ..., k]`, the log-probabilities log p_{k,T_g}(i) of the listed tokens at the
teacher's *generation* temperature T_g, normalised over the full vocabulary of size V (as
returned by APIs that expose top-k log-probs). The listed mass Σ_S p ≤ 1 leaves a known
*missing mass* m = 1 − Σ_S p on the V − k unlisted tokens, whose shape is unknown.

Re-tempering to a training temperature T (β = T_g / T) needs the whole distribution, because
p_T(i) = p(i)^β / Σ_j p(j)^β. We temper a *completion* of the truncated distribution: the
unlisted tokens get the maximum-entropy (uniform) share m / (V − k) each, so

    p̃_T(i) = p(i)^β / Z                      (i listed)
    p̃_T(j) = (m / (V − k))^β / Z             (j unlisted, each)
    Z = Σ_S p(i)^β + (V − k)·(m / (V − k))^β.

This is exact for β = 1 and for k = V. Otherwise it is an approximation: for β < 1 (T > T_g) the
power x^β is concave, so the uniform completion *overestimates* the tempered tail mass (the
true tail Σ_tail p_j^β is at most the uniform one); for β > 1 it underestimates it. Listed
tokens keep their exact relative values p(i)^β in every mode. The tail modes then say what the
student is asked to match outside the support:

- `"drop"`:    the tail is discarded; each teacher is renormalised on its support
               (softmax(β·log p) over S). This is what other toolkits do; it biases the target.
- `"uniform"`: the tempered tail mass is spread evenly over the unlisted tokens (the completion
               above, compared token by token with the student).
- `"bucket"`:  the same tempered tail mass is one extra class; the student is compared on the
               coarse partition {each listed token} ∪ {all others}, whose student mass is
               P_S(tail) = Σ_{j ∉ S} p_S(j). (Tempering the bucket as a single class, m^β, would
               send the tail mass to 1/(k + 1) instead of (V − k)/V as T → ∞, so we don't.)

Aggregating K sparse teachers works on the union U = ∪_k S_k of their supports. A token of U
that teacher k did not list gets teacher k's unlisted value: its uniform share under
"uniform"/"bucket" (so bucket and uniform give the same q on U and the same tail mass; they
differ only in the loss), 0 under "drop". `linear` pools q = Σ_k w_k p̃_{k,T}. `geometric`
pools q ∝ Π_k p̃_{k,T}^{w_k} with a *tail floor*: in every mode a token teacher k did not list
gets the uniform share of teacher k's missing mass (tempered, normalised), floored at e^-80, so
that one teacher's silence is not a veto (without a floor the log-linear pool of drop-tailed
teachers lives on the intersection of supports, which may be empty). The pooled tail over
V \\ U is then represented per tail mode (spread, one bucket, or dropped and renormalised).

`sparse_kd_loss` computes T_S² · KL(q ‖ p_{S,T_S}) from the student's log-probs gathered at the
support plus one log-sum-exp over V; its gradient is analytic (`custom_vjp`). No dense [.., V]
target is ever built: the only dense arrays are the student's own (tempered logits, a
membership mask for "uniform"/"bucket") and the gradient.
"""

from __future__ import annotations

import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import losses as losses_lib
from mtkd_jax import operators as operators_lib
from mtkd_jax import temperature as temperature_lib
from mtkd_jax import theory

TAIL_MODES = ("drop", "uniform", "bucket")
LOG_FLOOR = -80.0  # geometric tail floor: e^-80 ≈ 2e-35, as operators.barycenter
_NEG_INF = -jnp.inf


# ---------------------------------------------------------------------------------------------
# Types.
# ---------------------------------------------------------------------------------------------
@flax.struct.dataclass
class SparseTeacherOutputs:
  """Top-k outputs of K teachers at their generation temperatures (a pytree).

  Attributes:
    indices: `[K, ..., k]` int32 token ids, distinct within each row of each teacher.
    log_probs: `[K, ..., k]` log p_{k,T_g}(i) normalised over all V tokens (bf16/f16/f32).
    generation_temperatures: `[K]` the temperatures T_g the log-probs were produced at.
    vocab_size: V (static).
  """

  indices: jax.Array
  log_probs: jax.Array
  generation_temperatures: jax.Array
  vocab_size: int = flax.struct.field(pytree_node=False)

  @property
  def num_teachers(self) -> int:
    return self.indices.shape[0]

  @property
  def k(self) -> int:
    return self.indices.shape[-1]

  def truncate(self, k: int) -> SparseTeacherOutputs:
    """The top-`k` prefix (outputs are stored sorted by decreasing probability)."""
    if not 1 <= k <= self.k:
      raise ValueError(f"k must be in [1, {self.k}], got {k=}")
    return self.replace(indices=self.indices[..., :k], log_probs=self.log_probs[..., :k])


@flax.struct.dataclass
class SparseTarget:
  """An aggregated target q on a support U plus a tail (a pytree; see the module docstring).

  Attributes:
    indices: `[..., n]` int32; every index is in U, a token may repeat.
    log_probs: `[..., n]` float32 log q(i) at the first occurrence of each token, −inf at repeats.
    valid: `[..., n]` bool, True at the first occurrence of each token of U.
    tail_log_mass: `[...]` float32 log of the target mass on V \\ U (−inf: none).
    tail_mode: "drop", "uniform" (tail spread over V \\ U) or "bucket" (one class).
    vocab_size: V (static).
  """

  indices: jax.Array
  log_probs: jax.Array
  valid: jax.Array
  tail_log_mass: jax.Array
  tail_mode: str = flax.struct.field(pytree_node=False)
  vocab_size: int = flax.struct.field(pytree_node=False)

  def num_tail(self) -> jax.Array:
    """|V \\ U| per row, `[...]` int32."""
    return self.vocab_size - jnp.sum(self.valid, axis=-1, dtype=jnp.int32)


def _check_tail_mode(tail_mode: str) -> None:
  if tail_mode not in TAIL_MODES:
    raise ValueError(f"tail_mode must be one of {TAIL_MODES}, got {tail_mode=!r}")


def sparse_outputs(indices, log_probs, *, generation_temperatures=1.0, vocab_size: int):
  """Builds a validated `SparseTeacherOutputs`.

  Shapes are always checked; on concrete inputs also 0 ≤ index < V, distinct indices per row
  and log-probs ≤ 0 up to rounding. Raises ValueError naming the argument and its shape.

  >>> out = sparse_outputs(jnp.array([[2, 0]]), jnp.log(jnp.array([[0.6, 0.3]])), vocab_size=4)
  >>> out.k, out.num_teachers
  (2, 1)
  """
  indices, log_probs = jnp.asarray(indices), jnp.asarray(log_probs)
  if indices.ndim < 2 or indices.shape != log_probs.shape:
    raise ValueError(
      f"indices and log_probs must both have shape [K, ..., k], got "
      f"indices.shape={indices.shape}, log_probs.shape={log_probs.shape}"
    )
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"indices must be integers, got indices.dtype={indices.dtype}")
  if not 1 <= indices.shape[-1] <= vocab_size:
    raise ValueError(
      f"k must be in [1, vocab_size={vocab_size}], got indices.shape={indices.shape}"
    )
  num_teachers = indices.shape[0]
  t_g = temperature_lib.check_temperatures(
    generation_temperatures, num_teachers, name="generation_temperatures"
  )
  t_g = jnp.broadcast_to(t_g, (num_teachers,))
  if temperature_lib.is_concrete(indices) and temperature_lib.is_concrete(log_probs):
    idx = np.asarray(indices)
    if idx.size and (idx.min() < 0 or idx.max() >= vocab_size):
      raise ValueError(
        f"indices must be in [0, {vocab_size}), got range [{idx.min()}, {idx.max()}] "
        f"for indices.shape={idx.shape}"
      )
    srt = np.sort(idx, axis=-1)
    if np.any(srt[..., 1:] == srt[..., :-1]):
      raise ValueError(f"indices must be distinct within each row, indices.shape={idx.shape}")
    lp = np.asarray(log_probs, np.float32)
    if np.any(np.isnan(lp)) or np.any(lp > 1e-2):
      raise ValueError(f"log_probs must be ≤ 0 and not NaN, log_probs.shape={lp.shape}")
  return SparseTeacherOutputs(indices.astype(jnp.int32), log_probs, t_g, int(vocab_size))


def from_dense(teacher_log_probs, k: int, *, generation_temperatures=1.0) -> SparseTeacherOutputs:
  """Top-k of dense teacher outputs at their generation temperatures (what a store holds).

  Args:
    teacher_log_probs: `[K, ..., V]` logits or log-probs.
    k: number of tokens kept per row, 1 ≤ k ≤ V.
    generation_temperatures: `[K]` or scalar T_g.

  Returns:
    `SparseTeacherOutputs` with log_softmax(z / T_g) at the top-k, sorted by decreasing
    probability (float32; cast to bf16/f16 to store).

  >>> out = from_dense(jnp.log(jnp.array([[[0.1, 0.6, 0.3]]])), 2)
  >>> out.indices.tolist(), [round(float(p), 3) for p in jnp.exp(out.log_probs).ravel()]
  ([[[1, 2]]], [0.6, 0.3])
  """
  x = jnp.asarray(teacher_log_probs)
  if x.ndim < 2 or not 1 <= k <= x.shape[-1]:
    raise ValueError(f"need teacher_log_probs [K, ..., V] and 1 ≤ k ≤ V, got shape={x.shape}, {k=}")
  t_g = temperature_lib.check_temperatures(generation_temperatures, x.shape[0])
  log_p = temperature_lib.scale(x, t_g)  # [K, ..., V]
  values, indices = jax.lax.top_k(log_p, k)  # [K, ..., k], sorted descending
  t_g = jnp.broadcast_to(t_g, (x.shape[0],))
  return SparseTeacherOutputs(indices.astype(jnp.int32), values, t_g, int(x.shape[-1]))


# ---------------------------------------------------------------------------------------------
# Tail mass and re-tempering.
# ---------------------------------------------------------------------------------------------
def missing_log_mass(log_probs: jax.Array) -> jax.Array:
  """log m = log(1 − Σ_i exp(log_probs_i)) over the last axis; −inf when Σ ≥ 1 (rounding).

  >>> float(jnp.exp(missing_log_mass(jnp.log(jnp.array([0.5, 0.25])))))
  0.25
  """
  lp = jnp.asarray(log_probs)
  lp = lp.astype(temperature_lib.compute_dtype(lp.dtype))
  # 1 − Σ p in float32 loses everything below ~6e-8 when the top token is near 1, and a
  # re-tempering to a much higher T turns that into a visible error (T/T_g = 4 made a
  # 1.5e-5 tail 3% wrong). Instead m = (1 − p_max) − Σ_{others} p, with 1 − p_max = −expm1.
  top = jnp.argmax(lp, axis=-1)  # [...]
  l_max = jnp.take_along_axis(lp, top[..., None], axis=-1)[..., 0]
  others = jnp.arange(lp.shape[-1]) != top[..., None]
  rest = jnp.sum(jnp.where(others, jnp.exp(lp), 0.0), axis=-1)
  m = -jnp.expm1(jnp.minimum(l_max, 0.0)) - rest
  return jnp.where(m > 0, jnp.log(jnp.where(m > 0, m, 1.0)), _NEG_INF)


def retemper(outputs: SparseTeacherOutputs, temperatures, *, tail_mode: str = "uniform"):
  """Re-tempers each teacher's truncated distribution from T_g,k to T_k (module docstring).

  With β_k = T_g,k / T_k, a listed token gets β·log p(i) − log Z and each of the V − k unlisted
  tokens β·log(m / (V − k)) − log Z ("uniform"/"bucket"; Z the completion's normaliser) or
  nothing ("drop", Z = Σ_S p(i)^β).

  Args:
    outputs: `SparseTeacherOutputs` with `[K, ..., k]` arrays.
    temperatures: `[K]` or scalar training temperatures T_k > 0.
    tail_mode: one of `TAIL_MODES`.

  Returns:
    `(support_log_probs [K, ..., k], tail_token_log_prob [K, ...], tail_log_mass [K, ...])`
    float32: the tempered log-probs of the listed tokens, of one unlisted token, and of the
    whole unlisted set (−inf under "drop", or when m = 0 or k = V).

  >>> out = sparse_outputs(jnp.array([[0]]), jnp.log(jnp.array([[0.5]])), vocab_size=3)
  >>> s, tok, tail = retemper(out, 1.0)
  >>> jnp.exp(s).round(3), jnp.exp(tok).round(3), jnp.exp(tail).round(3)
  (Array([[0.5]], dtype=float32), Array([0.25], dtype=float32), Array([0.5], dtype=float32))
  """
  _check_tail_mode(tail_mode)
  num_teachers, k, v = outputs.num_teachers, outputs.k, outputs.vocab_size
  t = temperature_lib.check_temperatures(temperatures, num_teachers)
  t = jnp.broadcast_to(t, (num_teachers,))
  lp = outputs.log_probs.astype(temperature_lib.compute_dtype(outputs.log_probs.dtype))
  beta = (outputs.generation_temperatures / t).reshape((num_teachers,) + (1,) * (lp.ndim - 2))
  scaled = beta[..., None] * lp  # [K, ..., k]
  lse_support = jax.nn.logsumexp(scaled, axis=-1)  # [K, ...]
  num_unlisted = v - k
  if tail_mode == "drop" or num_unlisted == 0:
    log_z, token = lse_support, jnp.full_like(lse_support, _NEG_INF)
  else:
    token = beta * (missing_log_mass(lp) - math.log(num_unlisted))  # [K, ...] unnormalised
    log_z = jnp.logaddexp(lse_support, math.log(num_unlisted) + token)
    token = token - log_z
  tail = token + (math.log(num_unlisted) if num_unlisted else 0.0)
  return scaled - log_z[..., None], token, tail


# ---------------------------------------------------------------------------------------------
# Aggregation over the union of supports.
# ---------------------------------------------------------------------------------------------
def _shift_left(x: jax.Array, r: int, fill) -> jax.Array:
  if r == 0:
    return x
  pad = jnp.full((*x.shape[:-1], r), fill, x.dtype)
  return jnp.concatenate([x[..., r:], pad], axis=-1)


def _union(indices: jax.Array, values: jax.Array):
  """Union of K supports, and each teacher's value at every union entry.

  Args:
    indices: `[K, ..., k]` int32, distinct per teacher and row.
    values: `[K, ..., k]` float32.

  Returns:
    `(u [..., K·k] sorted token ids, first [..., K·k] bool first occurrences,
      listed: K arrays [..., K·k] bool, value: K arrays [..., K·k] (−inf where not listed))`.
    Only first-occurrence entries are meaningful.

  A token occurs at most K times (once per teacher); after sorting, its copies are adjacent,
  so K shifts find every teacher's entry: O(K²·K·k) per row, no [K·k, K·k] comparison matrix.
  """
  num_teachers = indices.shape[0]
  cat_idx = jnp.concatenate([indices[j] for j in range(num_teachers)], axis=-1)  # [..., n]
  cat_val = jnp.concatenate([values[j] for j in range(num_teachers)], axis=-1)
  cat_tid = jnp.concatenate(
    [jnp.full(indices.shape[1:], j, jnp.int32) for j in range(num_teachers)], axis=-1
  )
  # One multi-operand sort (no argsort + gathers): by token id, then teacher id.
  u, tid, val = jax.lax.sort((cat_idx, cat_tid, cat_val), dimension=-1, num_keys=2)  # [..., n]
  first = jnp.concatenate([jnp.ones((*u.shape[:-1], 1), bool), u[..., 1:] != u[..., :-1]], -1)
  listed, value = [], []
  for j in range(num_teachers):
    hit_j = jnp.zeros(u.shape, bool)
    val_j = jnp.full(u.shape, _NEG_INF, val.dtype)
    for r in range(num_teachers):
      hit = (_shift_left(u, r, -1) == u) & (_shift_left(tid, r, -1) == j)
      val_j = jnp.where(hit, _shift_left(val, r, _NEG_INF), val_j)
      hit_j = hit_j | hit
    listed.append(hit_j)
    value.append(val_j)
  return u, first, listed, value


def _prepare(outputs, temperatures, weights, tail_mode):
  if not isinstance(outputs, SparseTeacherOutputs):
    raise ValueError(f"outputs must be a SparseTeacherOutputs, got {type(outputs).__name__}")
  _check_tail_mode(tail_mode)
  w = operators_lib.check_weights(weights, outputs.log_probs.shape)  # [K, ..., 1]
  return w


def _log_sum_over_support(x: jax.Array, valid: jax.Array) -> jax.Array:
  return jax.nn.logsumexp(jnp.where(valid, x, _NEG_INF), axis=-1)


def linear(outputs: SparseTeacherOutputs, *, temperatures, weights, tail_mode="uniform"):
  """Sparse arithmetic mixture q = Σ_k w_k p̃_{k,T} on the union of supports.

  p̃_{k,T} is teacher k re-tempered with `tail_mode` (`retemper`); a union token teacher k did
  not list gets its unlisted value (uniform share, or 0 under "drop"). Equals
  `operators.linear` applied to the dense completed teachers.

  Args:
    outputs: `SparseTeacherOutputs`, arrays `[K, ..., k]`.
    temperatures: `[K]` or scalar training temperatures.
    weights: `[K]` or `[K, ...]` summing to one over K.
    tail_mode: "drop", "uniform" or "bucket".

  Returns:
    `SparseTarget` with `[..., K·k]` entries.

  >>> out = sparse_outputs(jnp.array([[0], [1]]), jnp.log(jnp.array([[0.5], [0.5]])),
  ...                      vocab_size=3)
  >>> q = linear(out, temperatures=1.0, weights=jnp.array([0.5, 0.5]))
  >>> [round(float(p), 3) for p in jnp.exp(q.log_probs)], round(float(jnp.exp(q.tail_log_mass)), 3)
  ([0.375, 0.375], 0.25)
  """
  w = _prepare(outputs, temperatures, weights, tail_mode)
  support, token, _ = retemper(outputs, temperatures, tail_mode=tail_mode)
  u, first, listed, value = _union(outputs.indices, support)
  log_w = operators_lib.safe_log(w)  # [K, ..., 1]
  num_teachers = outputs.num_teachers
  terms = [  # unrolled over K (KERNEL_NOTES)
    log_w[j] + jnp.where(listed[j], value[j], token[j][..., None]) for j in range(num_teachers)
  ]
  log_q = operators_lib.logsumexp_over_teachers(terms)  # [..., n]
  num_tail = outputs.vocab_size - jnp.sum(first, axis=-1)  # [...]
  if tail_mode == "drop":
    tail = jnp.full(num_tail.shape, _NEG_INF)
  else:
    tail_token = operators_lib.logsumexp_over_teachers(
      [log_w[j][..., 0] + token[j] for j in range(num_teachers)]
    )
    tail = jnp.where(num_tail > 0, jnp.log(jnp.maximum(num_tail, 1)) + tail_token, _NEG_INF)
  return SparseTarget(
    u, jnp.where(first, log_q, _NEG_INF), first, tail, tail_mode, outputs.vocab_size
  )


def geometric(outputs: SparseTeacherOutputs, *, temperatures, weights, tail_mode="uniform"):
  """Sparse log-linear pool q ∝ Π_k p̃_{k,T}^{w_k} on the union of supports, with a tail floor.

  Every teacher is completed uniformly (`retemper(..., tail_mode="uniform")`) and a token it did
  not list gets max(its uniform share, e^-80): the *tail floor*, in every tail mode. The pooled
  distribution is then restricted to U and renormalised ("drop"), or keeps its tail over
  V \\ U spread ("uniform") or as one class ("bucket"). With "uniform" it equals
  `operators.geometric` applied to the floored dense completions.

  Args and returns as `linear`.
  """
  w = _prepare(outputs, temperatures, weights, tail_mode)
  support, token, _ = retemper(outputs, temperatures, tail_mode="uniform")
  floor = jnp.maximum(token, LOG_FLOOR)  # [K, ...]
  u, first, listed, value = _union(outputs.indices, support)
  num_teachers = outputs.num_teachers

  def weighted(j, x):  # w_j · x with 0·(−inf) = 0, and a veto flag where w_j > 0, x = −inf
    finite = jnp.isfinite(x)
    return jnp.where(w[j] > 0, w[j] * jnp.where(finite, x, 0.0), 0.0), (w[j] > 0) & ~finite

  pooled, vetoed = 0.0, False
  for j in range(num_teachers):
    term, veto = weighted(j, jnp.where(listed[j], value[j], floor[j][..., None]))
    pooled, vetoed = pooled + term, vetoed | veto
  pooled = jnp.where(vetoed, _NEG_INF, pooled)  # [..., n]
  tail_token = sum(w[j][..., 0] * floor[j] for j in range(num_teachers))  # [...] floor > −inf
  num_tail = outputs.vocab_size - jnp.sum(first, axis=-1)
  log_tail = jnp.where(num_tail > 0, jnp.log(jnp.maximum(num_tail, 1)) + tail_token, _NEG_INF)
  lse_u = _log_sum_over_support(pooled, first)
  log_z = lse_u if tail_mode == "drop" else jnp.logaddexp(lse_u, log_tail)
  tail = jnp.full(log_z.shape, _NEG_INF) if tail_mode == "drop" else log_tail - log_z
  log_q = jnp.where(first, pooled - log_z[..., None], _NEG_INF)
  return SparseTarget(u, log_q, first, tail, tail_mode, outputs.vocab_size)


OPERATORS = {"linear": linear, "geometric": geometric}


def get(name: str, *, tail_mode: str = "uniform"):
  """The sparse operator `name` with its tail mode bound: `op(outputs, *, temperatures, weights)`.

  It has the signature of a dense operator, so `train.make_train_step` accepts it (with
  `loss=sparse_kd_loss` and a `teacher_apply` that returns `SparseTeacherOutputs`).
  """
  if name not in OPERATORS:
    raise ValueError(f"unknown sparse operator {name!r}; valid names: {sorted(OPERATORS)}")
  _check_tail_mode(tail_mode)
  op = functools.partial(OPERATORS[name], tail_mode=tail_mode)
  op.__name__ = f"sparse_{name}({tail_mode})"
  return op


def to_dense(target: SparseTarget) -> jax.Array:
  """The dense log q of a target, for checks and small V only (training never calls this).

  Returns `[..., V]` for "drop"/"uniform" (the tail spread over V \\ U), and `[..., V + 1]` for
  "bucket": −inf on V \\ U and the bucket's log-mass in the last class.
  """
  v = target.vocab_size
  shape = target.log_probs.shape[:-1]
  flat_idx = target.indices.reshape(-1, target.indices.shape[-1])
  flat_lq = jnp.where(target.valid, target.log_probs, _NEG_INF).reshape(flat_idx.shape)
  in_u = _membership(flat_idx, v).reshape(*shape, v)
  if target.tail_mode == "uniform":
    n_tail = jnp.maximum(target.num_tail(), 1)
    fill = (target.tail_log_mass - jnp.log(n_tail))[..., None]
  else:
    fill = jnp.full((*shape, 1), _NEG_INF)
  dense = jnp.broadcast_to(fill, (*shape, v))
  scattered = jax.vmap(lambda i, x: jnp.full((v,), _NEG_INF).at[i].max(x))(flat_idx, flat_lq)
  dense = jnp.where(in_u, scattered.reshape(*shape, v), dense)
  if target.tail_mode == "bucket":
    dense = jnp.concatenate([dense, target.tail_log_mass[..., None]], axis=-1)
  return dense


# ---------------------------------------------------------------------------------------------
# The loss: student log-probs gathered at the support plus one log-sum-exp; analytic gradient.
# ---------------------------------------------------------------------------------------------
def _membership(indices: jax.Array, vocab_size: int) -> jax.Array:
  """[B, n] int -> [B, V] bool, True at every listed token (a scatter, no [B, n, V] compare)."""
  return jax.vmap(lambda i: jnp.zeros((vocab_size,), bool).at[i].set(True))(indices)


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
  positive = valid & (q > 0)
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
  return kl, grad


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
    where: optional per-example mask `[...]` (False gives 0 and no gradient).

  Returns:
    `[...]` float32 per-example losses.

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
  kl = _sparse_kl_vjp(
    (sparse_target.tail_mode, v),
    student_logits.reshape(-1, v),
    stop(1.0 / t_s),
    stop(sparse_target.indices.reshape(-1, n)),
    stop(sparse_target.log_probs.astype(jnp.float32).reshape(-1, n)),
    stop(sparse_target.valid.reshape(-1, n)),
    stop(sparse_target.tail_log_mass.astype(jnp.float32).reshape(-1)),
  ).reshape(batch_shape)
  if temperature_sq_scaling:
    kl = kl * t_s**2
  return losses_lib.apply_where(kl, where)


# ---------------------------------------------------------------------------------------------
# Training diagnostics with the signature of `train.distill_metrics`.
# ---------------------------------------------------------------------------------------------
def distill_metrics(student_logits, teacher_outputs, labels, *, operator, temperatures, weights,
                    student_temperature=1.0) -> dict[str, jax.Array]:  # fmt: skip
  """Batch means: `kl_q_student` KL(q ‖ p_S), `target_tail_mass`, `accuracy`, `log_loss`,
  `effective_num_teachers`; `teacher_outputs` is a `SparseTeacherOutputs`, `operator` a sparse
  operator (`get(name, tail_mode=...)`)."""
  target = operator(teacher_outputs, temperatures=temperatures, weights=weights)
  kl = sparse_kd_loss(student_logits, target, student_temperature=student_temperature,
                      temperature_sq_scaling=False)  # fmt: skip
  w = jnp.asarray(weights, jnp.float32)
  return {
    "kl_q_student": kl.mean(),
    "target_tail_mass": jnp.exp(target.tail_log_mass).mean(),
    "accuracy": (student_logits.argmax(-1) == labels).mean(),
    "log_loss": losses_lib.cross_entropy(student_logits, labels).mean(),
    "effective_num_teachers": theory.effective_num_teachers(w, axis=0).mean(),
  }
