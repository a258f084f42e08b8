"""Sparse aggregation operators on the union of the teachers' supports (paper §II-B, §III).

Aggregating K sparse teachers works on the union U = ∪_k S_k of their supports. A token of U
that teacher k did not list gets teacher k's unlisted value: its uniform share under
"uniform"/"bucket" (so bucket and uniform give the same q on U and the same tail mass; they
differ only in the loss), 0 under "drop". `linear` pools q = Σ_k w_k p̃_{k,T}. `geometric`
pools q ∝ Π_k p̃_{k,T}^{w_k} with a *tail floor*: in every mode a token teacher k did not list
gets the uniform share of teacher k's missing mass (tempered, normalised), floored at e^-80, so
that one teacher's silence is not a veto (without a floor the log-linear pool of drop-tailed
teachers lives on the intersection of supports, which may be empty). The pooled tail over
V \\ U is then represented per tail mode (spread, one bucket, or dropped and renormalised).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mtkd_jax import operators as operators_lib
from mtkd_jax import registry
from mtkd_jax.sparse.outputs import (
  _NEG_INF,
  SparseTarget,
  SparseTeacherOutputs,
  _check_tail_mode,
  retemper,
)

LOG_FLOOR = -80.0  # geometric tail floor: e^-80 ≈ 2e-35, as operators.barycenter


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
  """Checks, then (w_eff [K, ..., 1], bad [...], empty [...]) under the non-finite policy
  (`operators.row_status`): NaN or +inf in the stored log-probs (or NaN in the stored missing
  mass) is a ValueError on concrete outputs and a NaN target row under `jit`; a teacher whose
  listed log-probs are all −inf is absent there (its top-1 would have mass otherwise)."""
  if not isinstance(outputs, SparseTeacherOutputs):
    raise ValueError(f"outputs must be a SparseTeacherOutputs, got {type(outputs).__name__}")
  _check_tail_mode(tail_mode)
  w = operators_lib.check_weights(weights, outputs.log_probs.shape)  # [K, ..., 1]
  operators_lib.check_finite_teachers(outputs.log_probs, name="outputs.log_probs")
  missing = outputs.missing_log_mass
  if missing is not None:
    operators_lib.check_finite_teachers(missing[..., None], name="outputs.missing_log_mass")
  w, bad, empty = operators_lib.row_status(outputs.log_probs.astype(jnp.float32), w)
  if missing is not None:
    missing_bad = jnp.any(jnp.isnan(missing) | (missing == jnp.inf), axis=0)
    bad, empty = bad | missing_bad, empty & ~missing_bad
  return w, bad, empty


def _finish(target: SparseTarget, bad, empty) -> SparseTarget:
  """A NaN target where `bad`, an empty one (no mass anywhere: loss 0) where `empty`."""
  fill = jnp.where(bad, jnp.nan, _NEG_INF)
  ok = ~(bad | empty)
  return target.replace(
    log_probs=jnp.where(ok[..., None] | ~target.valid, target.log_probs, fill[..., None]),
    tail_log_mass=jnp.where(ok, target.tail_log_mass, fill),
  )


def _log_sum_over_support(x: jax.Array, valid: jax.Array) -> jax.Array:
  return jax.nn.logsumexp(jnp.where(valid, x, _NEG_INF), axis=-1)


def _membership(indices: jax.Array, vocab_size: int) -> jax.Array:
  """[B, n] int -> [B, V] bool, True at every listed token (a scatter, no [B, n, V] compare)."""
  return jax.vmap(lambda i: jnp.zeros((vocab_size,), bool).at[i].set(True))(indices)


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

  >>> from mtkd_jax.sparse import sparse_outputs
  >>> out = sparse_outputs(jnp.array([[0], [1]]), jnp.log(jnp.array([[0.5], [0.5]])),
  ...                      vocab_size=3)
  >>> q = linear(out, temperatures=1.0, weights=jnp.array([0.5, 0.5]))
  >>> [round(float(p), 3) for p in jnp.exp(q.log_probs)], round(float(jnp.exp(q.tail_log_mass)), 3)
  ([0.375, 0.375], 0.25)
  """
  w, bad, empty = _prepare(outputs, temperatures, weights, tail_mode)
  support, token, _ = retemper(outputs, temperatures, tail_mode=tail_mode)
  u, first, listed, value = _union(outputs.indices, support)
  log_w = operators_lib.safe_log(w)  # [K, ..., 1]
  num_teachers = outputs.num_teachers
  terms = [  # unrolled over K, as operators.logsumexp_over_teachers
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
  target = SparseTarget(
    u, jnp.where(first, log_q, _NEG_INF), first, tail, tail_mode, outputs.vocab_size
  )
  return _finish(target, bad, empty)


def geometric(outputs: SparseTeacherOutputs, *, temperatures, weights, tail_mode="uniform"):
  """Sparse log-linear pool q ∝ Π_k p̃_{k,T}^{w_k} on the union of supports, with a tail floor.

  Every teacher is completed uniformly (`retemper(..., tail_mode="uniform")`) and a token it did
  not list gets max(its uniform share, e^-80): the *tail floor*, in every tail mode. The pooled
  distribution is then restricted to U and renormalised ("drop"), or keeps its tail over
  V \\ U spread ("uniform") or as one class ("bucket"). With "uniform" it equals
  `operators.geometric` applied to the floored dense completions.

  Args and returns as `linear`.
  """
  w, bad, empty = _prepare(outputs, temperatures, weights, tail_mode)
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
  return _finish(SparseTarget(u, log_q, first, tail, tail_mode, outputs.vocab_size), bad, empty)


OPERATORS = {"linear": linear, "geometric": geometric}


def _bound(name: str):
  return lambda *, tail_mode="uniform": _with_tail_mode(name, tail_mode)


for _name in OPERATORS:
  registry.register("sparse_operator", _name, factory=True)(_bound(_name))


def get(spec: str, **kwargs):
  """The sparse operator `spec` ("linear", "geometric(tail_mode='bucket')") with its tail mode
  bound: `op(outputs, *, temperatures, weights)`, for `objectives.sparse_mixture`.

  >>> get("linear", tail_mode="bucket").__name__
  'sparse_linear(bucket)'
  """
  return registry.get("sparse_operator", spec, **kwargs)


def _with_tail_mode(name: str, tail_mode: str):
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
