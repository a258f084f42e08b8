"""Fused temperature-softmax-mixture KD loss: XLA path, Pallas dispatch and plain-jnp references.

For K teachers with inputs z_k (logits or log-probs) [K, ..., V], temperatures T_k, weights w_k
and a student z_S [..., V] at temperature T_S, per row:

    linear:     q = Σ_k w_k softmax(z_k / T_k)
    geometric:  log q = log_softmax(Σ_k w_k z_k / T_k)   (teacher normalisers cancel)
    loss = T_S² · KL(q ‖ softmax(z_S / T_S))             (T_S² only if temperature_sq_scaling)
    ∂loss/∂z_S = T_S² · (softmax(z_S / T_S) − q) / T_S

The fused paths never build a [K, B, V] array. They run a stats pass (per row: the raw max of
each teacher and of the student, and Σ exp((x − max)/T): 2(K + 1) numbers), then recompute q
from the inputs. XLA: q as one [B, V] buffer, the KL reduce, and in the backward p_S − q fused
into the student's cotangent. Pallas: a second kernel, or the same one when a row fits one
block, that writes p_S − q; the backward multiplies it by the row cotangents. The residuals
are O(B·V). With a vocabulary sharded over a mesh axis, the row statistics are combined with
one `pmax` and one `psum` of a [K + 1, B] array; the [B, V] data never moves.

XLA:CPU note (measured here; docs/benchmarks.md): a generic `sum(axis=0)` over the teacher
axis fused behind a softmax made XLA recompute the softmax per output element (3.2 s instead of
~40 ms), so the teacher axis is always unrolled in Python here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtkd_jax import operators as operators_lib
from mtkd_jax import temperature as temperature_lib
from mtkd_jax.divergences import check_kd_divergence, generalized_jsd, kl_divergence

from . import _pallas_kd
from ._pallas_kd import BlockSizes

_OPERATORS = ("linear", "geometric")
_IMPLEMENTATIONS = ("auto", "xla", "pallas")


# ----------------------------------------------------------------------------- validation


def _check_inputs(
  student_logits,
  teacher_logits,
  temperatures,
  weights,
  operator,
  impl,
  student_temperature=1.0,
  divergence="forward_kl",
  beta=0.5,
  where=None,
):
  """Raises ValueError naming the offending argument and its shape (or value).

  Shapes always; on concrete inputs also the values, as the composed operators check them:
  weights finite, ≥ 0 and summing to 1 over K (per row for per-row weights), temperatures
  finite and > 0, teacher logits free of NaN and +inf in the rows `where` counts. Returns
  (temperatures, weights, student_temperature) as arrays (Python lists of tracers work too).
  """
  check_kd_divergence(divergence, beta)
  temperatures, weights = jnp.asarray(temperatures), jnp.asarray(weights)
  student_temperature = jnp.asarray(student_temperature)
  if operator not in _OPERATORS:
    raise ValueError(f"operator must be one of {_OPERATORS}; got {operator=}")
  if impl not in _IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {_IMPLEMENTATIONS}; got {impl=}")
  if teacher_logits.ndim < 2 or teacher_logits.shape[-1] == 0:
    raise ValueError(f"teacher_logits must be [K, ..., V] with V >= 1; got {teacher_logits.shape=}")
  k = teacher_logits.shape[0]
  if student_logits is not None and tuple(teacher_logits.shape[1:]) != student_logits.shape:
    raise ValueError(
      "teacher_logits must have shape [K, *student_logits.shape]; got "
      f"{teacher_logits.shape=} and {student_logits.shape=}"
    )
  t_shape = temperatures.shape
  if len(t_shape) > 1 or (len(t_shape) == 1 and t_shape[0] != k):
    raise ValueError(f"temperatures must be a scalar or [K={k}]; got temperatures.shape={t_shape}")
  for name, t in (("temperatures", temperatures), ("student_temperature", student_temperature)):
    if temperature_lib.is_concrete(t):
      values = np.asarray(t, np.float64)
      if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
          f"{name} must be > 0 and finite; got {name}={values.tolist()} ({name}.shape={t.shape})"
        )
  w_shape = weights.shape
  batch = tuple(teacher_logits.shape[1:-1])
  if not w_shape or w_shape[0] != k or w_shape[1:] != batch[: len(w_shape) - 1]:
    raise ValueError(
      f"weights must be [K={k}] or [K, ...] with ... a prefix of the batch shape {batch}; "
      f"got {w_shape=}"
    )
  operators_lib.check_weights(weights, teacher_logits.shape)  # values, on concrete weights
  if not isinstance(teacher_logits, jax.ShapeDtypeStruct):
    operators_lib.check_finite_teachers(teacher_logits, name="teacher_logits", where=where)
  return temperatures, weights, student_temperature


def _flatten(teacher_logits, temperatures, weights, student_temperature, student_logits=None):
  """-> teachers [K, B, V], params [K + 1] (T_k, T_S), weights [K, B], student [B, V]."""
  k, v = teacher_logits.shape[0], teacher_logits.shape[-1]
  batch = teacher_logits.shape[1:-1]
  teachers = teacher_logits.reshape(k, -1, v)  # [K, B, V]
  temps = jnp.broadcast_to(jnp.asarray(temperatures, jnp.float32), (k,))  # [K]
  ts = jnp.asarray(student_temperature, jnp.float32).reshape(1)  # [1]
  w = jnp.asarray(weights, jnp.float32)
  w = w.reshape(w.shape + (1,) * (len(batch) + 1 - w.ndim))
  w = jnp.broadcast_to(w, (k, *batch)).reshape(k, -1)  # [K, B]
  student = None if student_logits is None else student_logits.reshape(-1, v)  # [B, V]
  return teachers, jnp.concatenate([temps, ts]), w, student


def _resolve(implementation, interpret):
  platform = jax.default_backend()
  if implementation == "auto":
    implementation = "xla" if platform == "cpu" else "pallas"
  if interpret is None:
    interpret = platform == "cpu"
  return implementation, interpret


# ----------------------------------------------------------------------------- XLA path


def _row_max_sumexp(x, t, chunk_bytes=8 << 20):
  """x [..., V] f32, t > 0 broadcastable to [...] -> (max x, Σ exp((x − max x) / t)).

  One read of x: an online softmax over vocabulary chunks of ~`chunk_bytes` (a running max,
  rescaling the running sum when it rises), each chunk's max and Σ exp taken while it is in
  cache. Flat row reductions fell off a cliff on XLA:CPU once x passed ~32 MiB (the fused
  reduce wrote its exp operand to a fresh buffer): 92 ms at K=4, B=64, V=131072 against
  17.5 ms chunked, and 4.6 against 5.0 ms at V=32768. The max is taken on the raw input, and
  the shift is subtracted before dividing by t: at t = 1e-3 an ulp of x/t is ~1, and computing
  x/t − m/t in two differently fused places moved q by e^±1. Rows that are all −inf give
  (−inf, 0).
  """
  v, rows = x.shape[-1], max(x.size // x.shape[-1], 1)
  c = max(min(v, chunk_bytes // (4 * rows)), 128)
  inv_t = 1.0 / jnp.asarray(t, jnp.float32)

  def update(carry, xc):
    m, se = carry
    m_new = jnp.maximum(m, jnp.max(xc, axis=-1))
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # −inf rows: exp(−inf) = 0, not NaN
    rescale = jnp.exp((m - shift) * inv_t)  # 0 for the first chunk (m = −inf)
    return m_new, se * rescale + jnp.sum(jnp.exp((xc - shift[..., None]) * inv_t[..., None]), -1)

  batch = x.shape[:-1]
  carry = (jnp.full(batch, -jnp.inf, jnp.float32), jnp.zeros(batch, jnp.float32))
  n = v // c
  if n > 1:
    chunk = lambda j: jax.lax.dynamic_slice_in_dim(x, j * c, c, axis=x.ndim - 1)
    carry = jax.lax.fori_loop(0, n, lambda j, cr: update(cr, chunk(j)), carry)
  else:
    n = 0  # the whole row is one chunk, below
  if n * c < v:
    carry = update(carry, x[..., n * c :])  # the ragged tail (or all of x), static
  return carry


def _row_sum(x):
  """Σ over the last axis via [..., V/128, 128] partial sums (vectorised along 128 lanes)."""
  v = x.shape[-1]
  return (
    jnp.sum(jnp.sum(x.reshape(*x.shape[:-1], v // 128, 128), -2), -1)
    if v % 128 == 0
    else jnp.sum(x, -1)
  )


def _xla_stats(teachers, student, params, w, operator, axis_name, status=None):
  """Row stats of the N tempered terms (+ the student): shift, log Σ exp [N (+1), B], t, pooled,
  and `status(teacher row max)` = (w_eff [K, B], row flags) (`_row_status`; w, None without).

  Term n stands for log_softmax(x_n / t_n) = (x_n − shift_n) / t_n − log_se_n. The linear
  mixture's stats pass gives each teacher's row max for free; the geometric pool needs the
  renormalised weights before it pools, so it takes one max over V per teacher row first.
  """
  k = teachers.shape[0]
  pooled, flags = None, None
  if operator == "linear":
    t = params[:k, None]  # [K, 1]
    m, se = _row_max_sumexp(teachers, t)  # [K, B] each, no [K, B, V] temporary (f32 inputs)
    if status is not None:
      w, flags = status(m)
  else:
    if status is not None:
      w, flags = status(jnp.max(teachers, axis=-1))
    # 0 · (−inf) would be NaN: a teacher with zero weight contributes nothing.
    pooled = sum(
      jnp.where(w[i][:, None] == 0, 0.0, w[i][:, None] * (teachers[i] / params[i]))
      for i in range(k)
    )  # [B, V], unrolled over K
    t = jnp.ones((1, 1), jnp.float32)
    m, se = _row_max_sumexp(pooled[None], t)
  if student is not None:
    ms, ses = _row_max_sumexp(student, params[k])
    m, se = jnp.concatenate([m, ms[None]]), jnp.concatenate([se, ses[None]])
    t = jnp.concatenate([t, params[k:, None]])
  shift, log_se = _pallas_kd.combine_stats(m, se, t, axis_name)
  # [N (+1), B, 1] x2, [N (+1), 1], [B, V] or None, [K, B]
  return shift[..., None], log_se[..., None], t, pooled, w, flags


def _xla_q(terms, t, w, shift, log_se, pooled):
  """q [B, C] f32 from raw terms and the row stats, unrolled over K (never sum(axis=0))."""
  if pooled:
    return jnp.exp(terms[0] - shift[0] - log_se[0])
  return sum(
    w[i][:, None] * jnp.exp((terms[i] - shift[i]) * (1.0 / t[i]) - log_se[i])
    for i in range(len(terms))
  )


def _student_log_probs(student, shift, log_se, t):
  """log softmax(z_S / T_S) [B, C] from the raw student and its row stats (as in `_xla_q`)."""
  return (student.astype(jnp.float32) - shift) * (1.0 / t) - log_se


def _materialised(fn, operand):
  """fn(operand), computed by one fusion into one buffer: a fusion boundary XLA keeps.

  q has two consumers: the KL reduce, and p_S − q in the backward. Left alone, XLA:CPU fused
  q's cheap weighted sum into both and kept the K exp terms as K [B, V] buffers (33 MB and
  25 ms at K=4, B=64, V=32768). `optimization_barrier` is gone before fusion on CPU, and
  writing q chunk by chunk in a loop (`dynamic_update_slice`) ran 12× slower than the flat
  fusion (30 vs 2.5 ms: in-place fusions there were neither vectorised nor threaded). A
  conditional is a boundary that survives if XLA cannot fold its predicate: so it is computed
  from the data. Both branches are fn, so the result never depends on it; the temporary-bytes
  test fails if XLA ever learns to see through this.
  """
  data_dependent = jnp.sum(operand.reshape(-1)[:1]) > 0  # (False for an empty operand)
  return jax.lax.cond(data_dependent, fn, fn, operand)


def _xla_log_q(terms, t, w, shift, log_se, pooled):
  """log q [B, C] f32 in log space (reverse KL, JSD: log q is weighed by p_S there, and must not
  underflow to −inf where q does); the same K exps as `_xla_q`, unrolled over K."""
  ws = [None] if pooled else [w[i][:, None] for i in range(len(terms))]
  ts = [1.0] if pooled else [t[i] for i in range(len(terms))]
  return _pallas_kd.log_mixture(list(terms), ts, ws, shift, log_se)


def _xla_div(
  student, teachers, params, w, *, operator, axis_name, with_grad, divergence, beta, status=None
):
  """XLA path of the reverse KL and the JSD: (loss [B], residuals for `_xla_div_grad`).

  As `_xla_kd`, with log q (not q) materialised once, and the row sum R = Σ_v r (see
  `_pallas_kd.div_elementwise`) kept for the gradient c·(r − R·p_S).
  """
  teachers32, student32 = teachers.astype(jnp.float32), student.astype(jnp.float32)
  shift, log_se, t, pooled, w, flags = _xla_stats(
    teachers32, student32, params, w, operator, axis_name, status
  )
  terms, is_pooled = (teachers32, False) if pooled is None else (pooled[None], True)
  log_q = _materialised(lambda x: _xla_log_q(x, t, w, shift, log_se, is_pooled), terms)
  log_p = _student_log_probs(student32, shift[-1], log_se[-1], t[-1])  # [B, V]
  loss, r, _ = _pallas_kd.div_elementwise(log_q, log_p, divergence, beta)
  loss, r = _row_sum(loss), (None if divergence == "reverse_kl" else _row_sum(r))
  if axis_name is not None:
    loss, r = jax.lax.psum((loss, r), axis_name)
  r = loss if r is None else r
  return loss, ((log_q, student, shift[-1], log_se[-1], t[-1], r) if with_grad else None), flags


def _xla_div_grad(log_q, student, shift, log_se, t, r, *, divergence, beta):
  """∂loss/∂u = c·(r − R·p_S) [B, V] from `_xla_div`'s residuals (one elementwise fusion)."""
  log_p = _student_log_probs(student, shift, log_se, t)
  _, r_el, p = _pallas_kd.div_elementwise(log_q, log_p, divergence, beta)
  return _pallas_kd.grad_scale(divergence, beta) * (r_el - r[:, None] * p)


def _xla_kd(student, teachers, params, w, *, operator, axis_name, with_grad, status=None):
  """XLA path: (KL(q ‖ p_S) [B], residuals for `_xla_p_minus_q` or None).

  Four flat fusions: the row stats (K + 1 exps per element), q (K exps, one [B, V] buffer),
  the KL reduce (one log), and in the backward T_S·g·(p_S − q) (one exp) straight into the
  student's cotangent: 2K + 3 transcendentals and one [B, V] temporary. The residuals are q,
  the student itself and its row stats; nothing of size K·B·V.
  """
  # Known limitation, bf16 inputs: XLA:CPU's reductions do not fuse a bf16 -> f32 convert, so
  # XLA made f32 copies of the inputs anyway, twice (for the stats and for q; a chunked
  # online-softmax stats loop did not help: the converts were hoisted out of the loop). One
  # explicit upcast is the cheapest of those: (K + 1)·B·V·4 bytes. The Pallas kernels convert
  # per tile and have no such copy.
  teachers32, student32 = teachers.astype(jnp.float32), student.astype(jnp.float32)
  shift, log_se, t, pooled, w, flags = _xla_stats(
    teachers32, student32, params, w, operator, axis_name, status
  )
  # Geometric: the pooled [B, V] term was materialised once by the stats pass and is re-read,
  # so the rest costs what a single-teacher KL costs.
  terms, is_pooled = (teachers32, False) if pooled is None else (pooled[None], True)
  q = _materialised(lambda x: _xla_q(x, t, w, shift, log_se, is_pooled), terms)  # [B, V]
  log_p = _student_log_probs(student32, shift[-1], log_se[-1], t[-1])  # [B, V]
  kl = _row_sum(jnp.where(q > 0, q * (jnp.log(jnp.where(q > 0, q, 1.0)) - log_p), 0.0))
  if axis_name is not None:
    kl = jax.lax.psum(kl, axis_name)
  # The student in its own dtype: the backward's fusion upcasts it again for free.
  return kl, ((q, student, shift[-1], log_se[-1], t[-1]) if with_grad else None), flags


def _xla_p_minus_q(q, student, shift, log_se, t):
  """p_S − q [B, V] from the XLA path's residuals (fuses into the backward's multiply)."""
  return jnp.exp(_student_log_probs(student, shift, log_se, t)) - q


def _xla_mixture(teachers, params, w, *, operator, axis_name):
  teachers = teachers.astype(jnp.float32)  # see _xla_kd (bf16 on XLA:CPU)
  shift, log_se, t, pooled, _, _ = _xla_stats(teachers, None, params, w, operator, axis_name)
  if pooled is not None:
    return pooled - shift[0] - log_se[0]
  return jnp.log(_xla_q(teachers, t, w, shift, log_se, False))  # [B, V]


# ----------------------------------------------------------------------------- custom_vjp


@dataclasses.dataclass(frozen=True)
class _Config:
  operator: str
  implementation: str
  block_sizes: BlockSizes | None
  interpret: bool
  axis_name: str | Sequence[str] | None
  mesh: jax.sharding.Mesh | None = None  # set: V sharded over mesh axis axis_name
  divergence: str = "forward_kl"
  beta: float = 0.5


def _row_status(m, w, mask, axis_name):
  """From each teacher's raw row max m [K, B]: (w_eff [K, B], (live [B], bad [B])).

  The non-finite policy (docs/design.md): a teacher row that is entirely −inf is absent and the
  weights are renormalised over the present teachers (w itself where all are present); `bad`
  rows (counted by `mask`) hold NaN or +inf in some teacher; `live` rows are counted, not bad,
  and have a present teacher of positive weight. The maxima of a sharded vocabulary are
  combined with one pmax (NaN carried as +inf through it).
  """
  m = m.astype(jnp.float32)
  m = jnp.where(jnp.isnan(m), jnp.inf, m)
  if axis_name is not None:
    m = jax.lax.pmax(m, axis_name)
  w_eff, bad, empty = operators_lib.row_status(m[..., None], w[..., None])
  bad = bad & mask
  return w_eff[..., 0], (mask & ~bad & ~empty, bad)


def _teacher_row_status(teachers, w, mask, axis_name):
  """`_row_status` with one max over V per teacher row (NaN propagates through it)."""
  w, (live, bad) = _row_status(jnp.max(teachers, axis=-1), w, mask, axis_name)
  return w, live, bad


def _kd_rows(cfg, student, teachers, params, w, mask, with_grad):
  """`_kd` under the non-finite policy: (loss [B], residuals or None), per row NaN where a
  counted teacher row holds NaN or +inf, 0 where the row is masked or has no present teacher;
  `_dlogits` then gives NaN and 0 gradients in those rows, computed by selects (never 0·NaN)."""
  if cfg.mesh is not None:
    # shard_map sits inside the custom_vjp, so it is never differentiated: the backward
    # is one elementwise pass on the (sharded) global arrays.
    xla = cfg.implementation == "xla"
    sv, tv = P(None, cfg.axis_name), P(None, None, cfg.axis_name)
    local = functools.partial(_kd_rows, dataclasses.replace(cfg, mesh=None), with_grad=with_grad)
    res_specs = (sv, sv, P(), P(), P()) if xla else sv  # row stats are global after psum
    if xla and cfg.divergence != "forward_kl":
      res_specs = (*res_specs, P())  # R, global after psum
    res_specs = (res_specs, P(), P())  # the row flags, global after pmax
    # jax 0.10.2's Pallas interpreter slices varying blocks with invariant grid indices,
    # which the varying-manual-axes check rejects: Pallas runs with check_vma=False.
    return jax.shard_map(
      local,
      mesh=cfg.mesh,
      in_specs=(sv, tv, P(), P(), P()),
      out_specs=(P(), res_specs if with_grad else None),
      check_vma=xla,
    )(student, teachers, params, w, mask)
  status = functools.partial(_row_status, w=w, mask=mask, axis_name=cfg.axis_name)
  d, res, (live, bad) = _kd(cfg, student, teachers, params, w, with_grad, status)
  d = jnp.where(live, d, jnp.where(bad, jnp.nan, 0.0))
  return d, ((res, live, bad) if with_grad else None)


def _kd(cfg, student, teachers, params, w, with_grad, status):
  """(D(q, p_S) [B] f32, gradient residuals or None, row flags), D = cfg.divergence, unscaled
  by T_S²; the weights are `status(teacher row max)`'s (`_row_status`), which gives the flags.

  The residuals give ∂D/∂u [B, V] (u = z_S / T_S; p_S − q for the forward KL) through
  `_dlogits`: Pallas returns it directly (f32 or the student's dtype), the XLA path returns
  q (or log q) and the student's row stats, and recomputes it in the backward's one
  elementwise fusion.
  """
  xla = cfg.implementation == "xla"
  kw = dict(operator=cfg.operator, axis_name=cfg.axis_name, with_grad=with_grad)
  div = dict(divergence=cfg.divergence, beta=cfg.beta)
  if xla and cfg.divergence == "forward_kl":
    return _xla_kd(student, teachers, params, w, **kw, status=status)
  if xla:
    return _xla_div(student, teachers, params, w, **kw, **div, status=status)
  w, flags = status(jnp.max(teachers, axis=-1))  # one max over V per teacher row, in XLA
  d, res = _pallas_kd.pallas_kd(
    student,
    teachers,
    params,
    w,
    block_sizes=cfg.block_sizes,
    interpret=cfg.interpret,
    **kw,
    **div,
  )
  return d, res, flags


def _dlogits(cfg, res):
  """∂D/∂u [B, V] (u = z_S / T_S) from `_kd_rows`'s residuals: NaN on bad rows, 0 on masked
  rows and rows without a present teacher (selects, fused into the same elementwise pass)."""
  res, live, bad = res
  if cfg.implementation != "xla":
    d = res
  elif cfg.divergence == "forward_kl":
    d = _xla_p_minus_q(*res)
  else:
    d = _xla_div_grad(*res, divergence=cfg.divergence, beta=cfg.beta)
  fill = jnp.where(bad, jnp.nan, 0.0).astype(d.dtype)[:, None]
  return jnp.where(live[:, None], d, fill)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _kd_loss(cfg, student, teachers, params, w, mask):
  return _kd_rows(cfg, student, teachers, params, w, mask, with_grad=False)[0]


def _kd_loss_fwd(cfg, student, teachers, params, w, mask):
  kl, res = _kd_rows(cfg, student, teachers, params, w, mask, with_grad=True)
  # Residuals: what gives p_S − q (see `_kd`), T_S, and an empty array carrying the student's
  # dtype; nothing of size K·B·V.
  return kl, (res, params[teachers.shape[0]], jnp.zeros((0,), student.dtype))


def _kd_loss_bwd(cfg, res, g):
  res, ts, like = res
  # ∂D/∂z_S = (∂D/∂u)/T_S (forward KL: (p_S − q)/T_S). Teachers, temperatures, weights and
  # the mask are frozen: None cotangents.
  d = _dlogits(cfg, res).astype(jnp.float32)
  student_ct = ((g / ts)[:, None] * d).astype(like.dtype)
  return student_ct, None, None, None, None


_kd_loss.defvjp(_kd_loss_fwd, _kd_loss_bwd)


# ----------------------------------------------------------------------------- auto fallback


@functools.lru_cache(maxsize=256)
def _pallas_compile_error(cfg, avals):
  """None if the Pallas loss compiles (value and gradient) for avals, else the error's summary.

  A Triton or Mosaic failure (shared memory or VMEM, layouts, an API that moved) shows only when
  the kernel compiles on the device, inside the caller's jit, where it cannot be caught. So
  "auto" compiles the kernel alone once per (config, shapes) first; one extra compile of two
  small kernels, cached. Any exception counts: whatever the cause, the XLA path is the safe one.
  """
  structs = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in avals]
  loss = lambda s, *rest: _kd_loss(cfg, s, *rest).sum()
  try:
    jax.jit(jax.value_and_grad(loss)).lower(*structs).compile()
  except Exception as e:
    lines = str(e).strip().splitlines()
    error = f"{type(e).__name__}: {lines[0] if lines else ''}"
    warnings.warn(
      f"fused_kd_loss: the Pallas kernel failed to compile on {jax.default_backend()} "
      f"({error}); implementation='auto' falls back to the XLA path "
      "(implementation='pallas' raises instead)",
      RuntimeWarning,
      stacklevel=4,
    )
    return error
  return None


def _auto_implementation(cfg, student, teachers, params, w):
  """cfg, or cfg with the XLA path if the Pallas kernel fails to compile at these shapes.

  The kernel is compiled as it runs on one device: without the mesh axes, at the local
  vocabulary size of a sharded call.
  """
  shards = 1
  if cfg.mesh is not None:
    names = (cfg.axis_name,) if isinstance(cfg.axis_name, str) else cfg.axis_name
    shards = math.prod(cfg.mesh.shape[name] for name in names)
  local = lambda x: ((*x.shape[:-1], x.shape[-1] // shards), jnp.dtype(x.dtype).name)
  avals = (
    local(student),
    local(teachers),
    (params.shape, "float32"),
    (w.shape, "float32"),
    ((student.shape[0],), "bool"),
  )
  single = dataclasses.replace(cfg, axis_name=None, mesh=None)
  if _pallas_compile_error(single, avals) is None:
    return cfg
  return dataclasses.replace(cfg, implementation="xla")


def _dispatch(cfg, implementation, student, teachers, params, w):
  """The public kernel choice for one call's (already validated) flattened inputs: cfg as
  `_resolve` made it ("auto": Pallas on TPU/GPU, XLA on CPU), with "auto"'s fallback to the
  XLA path when the un-interpreted Pallas kernel fails to compile at these shapes.

  `fused_kd_loss` calls it once per call and `fused_linear_kd_loss` once per chunk shape;
  only `.shape` and `.dtype` of the arrays are read (`jax.ShapeDtypeStruct` will do).
  """
  if implementation == "auto" and cfg.implementation == "pallas" and not cfg.interpret:
    return _auto_implementation(cfg, student, teachers, params, w)
  return cfg


# ----------------------------------------------------------------------------- public API


def fused_kd_loss(
  student_logits,
  teacher_logits,
  *,
  temperatures,
  weights,
  student_temperature=1.0,
  operator="linear",
  temperature_sq_scaling=True,
  implementation="auto",
  block_sizes=None,
  interpret=None,
  axis_name=None,
  where=None,
  divergence="forward_kl",
  beta=0.5,
  _mesh=None,
):
  """Per-row T_S² · D(q, softmax(z_S / T_S)) with q the tempered teacher mixture, fused.

  q is Σ_k w_k softmax(z_k / T_k) ("linear") or softmax(Σ_k w_k z_k / T_k) ("geometric").
  D is KL(q ‖ p_S) ("forward_kl", mass-covering), KL(p_S ‖ q) ("reverse_kl", mode-seeking)
  or JSD_β = β·KL(q ‖ m) + (1 − β)·KL(p_S ‖ m), m = β·q + (1 − β)·p_S ("jsd", GKD).
  Differentiable in `student_logits` (analytic custom_vjp; with u = z_S / T_S,
  ∂D/∂u = p_S − q (forward), p_S ⊙ (log p_S − log q − KL(p_S ‖ q)) (reverse),
  (1 − β)·p_S ⊙ (log p_S − log m − KL(p_S ‖ m)) (jsd), and ∂/∂z_S = T_S·∂D/∂u with the T_S²
  scaling, ∂D/∂u / T_S without); teachers, temperatures and weights get no gradient.

  Args:
    student_logits: [..., V], f32 or bf16 (accumulated in f32; gradient in this dtype).
    teacher_logits: [K, ..., V] logits or log-probs; −inf entries are masked tokens, a teacher
      row entirely −inf is absent (its weight is renormalised over the present teachers), NaN
      and +inf are a ValueError on concrete inputs and a NaN loss and gradient for that row
      under `jit`; a row with no present teacher has loss 0 and gradient 0 (docs/design.md,
      "Non-finite inputs").
    temperatures: [K] or scalar, T_k > 0.
    weights: [K] or [K, ...] (a leading prefix of the batch shape), summing to 1 over K.
    student_temperature: T_S > 0.
    operator: "linear" or "geometric".
    temperature_sq_scaling: multiply the loss by T_S² (as `losses.mixture_kd`).
    implementation: "auto" (Pallas on TPU/GPU, XLA on CPU), "xla" or "pallas". If the Pallas
      kernel fails to lower or compile on the platform, "auto" warns once per shape (naming
      the error) and uses the XLA path; "pallas" raises.
    block_sizes: `BlockSizes` for the Pallas kernel (None: per-backend defaults).
    interpret: run Pallas in interpret mode (None: only on CPU).
    axis_name: mesh axis over which V is sharded, when called inside `shard_map`; the row
      statistics are combined with pmax/psum and the returned loss is the global one.
    where: optional boolean mask [...]: False gives loss 0 and exactly 0 gradient whatever the
      row holds (NaN included), as in losses.
    divergence: "forward_kl", "reverse_kl" or "jsd". The reverse KL is +inf where q = 0 and
      p_S > 0 (e.g. a token every teacher masks with −inf).
    beta: β ∈ (0, 1) of the JSD.

  Returns:
    [...] float32 per-row loss.

  >>> z_t = jax.random.normal(jax.random.key(0), (2, 3, 10))
  >>> loss = fused_kd_loss(z_t[0], z_t, temperatures=[1.0, 2.0], weights=[0.5, 0.5])
  >>> loss.shape
  (3,)
  """
  student_logits, teacher_logits = jnp.asarray(student_logits), jnp.asarray(teacher_logits)
  batch = student_logits.shape[:-1]
  if where is not None and np.shape(where) != batch:
    raise ValueError(
      f"where must have shape {batch} (= student_logits.shape[:-1]); got {np.shape(where)=}"
    )
  temperatures, weights, student_temperature = _check_inputs(
    student_logits,
    teacher_logits,
    temperatures,
    weights,
    operator,
    implementation,
    student_temperature,
    divergence,
    beta,
    where,
  )
  impl, interp = _resolve(implementation, interpret)
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be a BlockSizes; got {type(block_sizes)=}")
  teachers, params, w, student = _flatten(
    teacher_logits, temperatures, weights, student_temperature, student_logits
  )
  scale = jnp.asarray(student_temperature, jnp.float32) ** 2 if temperature_sq_scaling else 1.0
  cfg = _Config(
    operator, impl, block_sizes, bool(interp), axis_name, _mesh, divergence, float(beta)
  )
  cfg = _dispatch(cfg, implementation, student, teachers, params, w)
  stop = jax.lax.stop_gradient
  mask = jnp.ones(student.shape[:1], bool) if where is None else jnp.asarray(where, bool)
  kl = _kd_loss(cfg, student, stop(teachers), stop(params), stop(w), stop(mask.reshape(-1)))
  loss = (scale * kl).reshape(batch)
  return loss if where is None else jnp.where(where, loss, 0.0)


def fused_mixture(
  teacher_logits,
  *,
  temperatures,
  weights,
  operator="linear",
  implementation="auto",
  block_sizes=None,
  interpret=None,
  axis_name=None,
):
  """log q [..., V] of the tempered mixture, without any [K, B, V] temporary.

  Same arguments as `fused_kd_loss` without the student. Returns float32 log q. The Pallas
  path (TPU, or interpret mode) runs the stats kernel and one XLA elementwise pass; on GPU
  "auto" uses the XLA path.

  >>> z_t = jax.random.normal(jax.random.key(0), (2, 3, 10))
  >>> fused_mixture(z_t, temperatures=[1.0, 2.0], weights=[0.5, 0.5]).shape
  (3, 10)
  """
  teacher_logits = jnp.asarray(teacher_logits)
  temperatures, weights, _ = _check_inputs(
    None, teacher_logits, temperatures, weights, operator, implementation
  )
  impl, interp = _resolve(implementation, interpret)
  if impl == "pallas" and not interp and jax.default_backend() not in ("tpu", "cpu"):
    if implementation == "pallas":  # the row kernel of the loss has no mixture-only variant
      raise NotImplementedError("fused_mixture has no GPU Pallas kernel: use 'xla' or 'auto'")
    impl = "xla"
  teachers, params, w, _ = _flatten(teacher_logits, temperatures, weights, 1.0)
  mask = jnp.ones(teachers.shape[1:2], bool)
  w, live, bad = _teacher_row_status(teachers, w, mask, axis_name)
  if impl == "xla":
    log_q = _xla_mixture(teachers, params, w, operator=operator, axis_name=axis_name)
  else:
    log_q = _pallas_kd.pallas_mixture(
      teachers,
      params,
      w,
      operator=operator,
      axis_name=axis_name,
      block_sizes=block_sizes,
      interpret=bool(interp),
    )
  log_q = jnp.where(live[:, None], log_q, jnp.where(bad, jnp.nan, -jnp.inf)[:, None])
  return log_q.reshape(teacher_logits.shape[1:])


def fused_kd_loss_vocab_parallel(student_logits, teacher_logits, *, mesh, axis_name, **kwargs):
  """`fused_kd_loss` with the vocabulary axis sharded over `mesh` axis `axis_name`.

  Each device computes its shard's row statistics; one pmax and one psum of a [K + 1, B]
  array combine them, and the [B, V] data never moves. V must be divisible by the axis
  size. Returns the [...] loss (replicated); the gradient is sharded like the vocabulary.
  Inside your own `shard_map`, call `fused_kd_loss(..., axis_name=axis_name)` instead.
  """
  nd = student_logits.ndim
  specs = (P(*([None] * (nd - 1)), axis_name), P(*([None] * nd), axis_name))
  # Explicit mesh axes (the `jax.make_mesh` default) need inputs already laid out as specs.
  explicit = jax.sharding.AxisType.Explicit in tuple(mesh.axis_types)
  put = jax.sharding.reshard if explicit else jax.lax.with_sharding_constraint
  s, t = (
    put(a, NamedSharding(mesh, sp))
    for a, sp in zip((student_logits, teacher_logits), specs, strict=True)
  )
  return fused_kd_loss(s, t, axis_name=axis_name, _mesh=mesh, **kwargs)


# ----------------------------------------------------------------------------- references


def fused_mixture_reference(teacher_logits, *, temperatures, weights, operator="linear"):
  """Plain-jnp log q [..., V]: log_softmax(z_k / T_k) per teacher, then pooled over K."""
  k = teacher_logits.shape[0]
  z = teacher_logits.astype(jnp.float32)
  t = jnp.broadcast_to(jnp.asarray(temperatures, jnp.float32), (k,))
  t = t.reshape((k,) + (1,) * (z.ndim - 1))
  log_p = jax.nn.log_softmax(z / t, axis=-1)  # [K, ..., V]
  w = jnp.asarray(weights, jnp.float32)
  w = w.reshape(w.shape + (1,) * (z.ndim - w.ndim))  # [K, ..., 1]
  if operator == "linear":
    return jax.nn.logsumexp(log_p, axis=0, b=jnp.broadcast_to(w, log_p.shape))
  if operator == "geometric":
    return jax.nn.log_softmax(jnp.sum(jnp.where(w == 0, 0.0, w * log_p), axis=0), axis=-1)
  raise ValueError(f"operator must be one of {_OPERATORS}; got {operator=}")


def fused_kd_loss_reference(
  student_logits,
  teacher_logits,
  *,
  temperatures,
  weights,
  student_temperature=1.0,
  operator="linear",
  temperature_sq_scaling=True,
  divergence="forward_kl",
  beta=0.5,
):
  """Plain-jnp T_S² · D(q, softmax(z_S / T_S)) per row [...]; autodiff gives the gradient."""
  log_q = fused_mixture_reference(
    teacher_logits, temperatures=temperatures, weights=weights, operator=operator
  )
  ts = jnp.asarray(student_temperature, jnp.float32)
  log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / ts, axis=-1)
  if divergence == "forward_kl":
    q = jnp.exp(log_q)
    kl = jnp.sum(jnp.where(q > 0, q * (jnp.where(q > 0, log_q, 0.0) - log_p), 0.0), axis=-1)
  elif divergence == "reverse_kl":
    kl = kl_divergence(log_p, log_q)
  else:
    kl = generalized_jsd(log_q, log_p, beta)
  return kl * ts**2 if temperature_sq_scaling else kl
