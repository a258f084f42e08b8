"""Pallas kernels for the fused KD loss: a TPU-style grid kernel and a GPU (Triton) row kernel.

Both compute, per row, the (max, sum-exp) statistics of the N tempered terms (N = K teachers
for the linear mixture, N = 1 pooled term for the geometric one) and of the student, then
KL(q ‖ p_S) and the gradient factor p_S − q, without any [K, B, V] buffer. Scalars arrive as
params = [T_1..T_K, T_S, gscale] (SMEM on TPU); each term is exp((x − max)/T − log Σ).

- Grid kernel (TPU via Mosaic, and interpret mode on CPU): grid (row blocks, vocab blocks),
  vocab "arbitrary" (sequential); running max/sum-exp per term live in VMEM scratch,
  initialised under `pl.when(j == 0)`. Two passes over V (stats, then loss and gradient)
  when a row spans several vocab blocks; one kernel and one pass when it fits one block.
- Row kernel (GPU via Triton): one program per row, a `fori_loop` over vocab blocks with
  masked loads; lane-wise running max/sum-exp reduced once at the end of the loop.

`lax.platform_dependent` picks the kernel at lowering time, so exporting for TPU or CUDA from
a CPU host lowers the right kernel. Vocab-parallel use calls the stats kernel, combines the
[N + 1, B] statistics with pmax/psum in XLA, then calls the loss kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

_NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the Pallas kernels.

  Attributes:
    block_rows: rows per program (grid kernel; TPU: a multiple of 8). Unused on GPU (1 row).
    block_vocab: vocabulary tile (TPU: a multiple of 128; GPU: a power of two). A row with
      V <= block_vocab is processed in one block and one pass.
  """

  block_rows: int = 8
  block_vocab: int = 2048

  def __post_init__(self):
    if self.block_rows <= 0 or self.block_vocab <= 0:
      raise ValueError(f"block sizes must be positive; got {self}")

  def validate(self, backend: str) -> BlockSizes:
    pow2 = lambda n: n & (n - 1) == 0
    if backend == "tpu" and (self.block_rows % 8 or self.block_vocab % 128):
      raise ValueError(f"TPU needs block_rows % 8 == 0 and block_vocab % 128 == 0: {self}")
    if backend == "gpu" and not (pow2(self.block_rows) and pow2(self.block_vocab)):
      raise ValueError(f"GPU (Triton) block sizes must be powers of two: {self}")
    return self

  @classmethod
  def get_default(cls, backend: str) -> BlockSizes:
    # TPU: 8 × 2048 f32 tiles, ≤ (K + 1)·64 KiB double-buffered per step: fits VMEM for
    # K ≤ 16. GPU: 4096-wide row chunks as in Triton softmax/Liger kernels. CPU
    # (interpret mode, correctness only): small tiles so tests exercise several blocks.
    return {"tpu": cls(8, 2048), "gpu": cls(1, 4096)}.get(backend, cls(8, 512))


def _sds(shape, dtype, like):
  """Output spec varying over the same manual mesh axes as `like` (shard_map, check_vma)."""
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).mat)


# ----------------------------------------------------------------------------- grid kernel


def _grid_terms(p_ref, t_ref, w_ref, k, operator):
  """Raw terms of one (rows, vocab) tile, their temperatures and weights ([bm, 1] or None).

  Each term n stands for log_softmax(x_n / t_n): the linear mixture has the K raw teacher
  tiles; the geometric pool has one pooled tile Σ_k w_k z_k / T_k with t = 1.
  """
  xs = [t_ref[i].astype(jnp.float32) for i in range(k)]  # K × [bm, bv]
  if operator == "linear":
    return xs, [p_ref[i] for i in range(k)], [w_ref[:, i : i + 1] for i in range(k)]
  pooled = 0.0
  for i in range(k):
    wi = w_ref[:, i : i + 1]  # [bm, 1]; 0·(−inf) would be NaN
    pooled = pooled + jnp.where(wi == 0, 0.0, wi * (xs[i] / p_ref[i]))
  return [pooled], [1.0], [None]


def _mask(xs, j, bv, v):
  if v % bv == 0:
    return xs
  col = j * bv + jax.lax.broadcasted_iota(jnp.int32, xs[0].shape, 1)
  return [jnp.where(col < v, x, _NEG_INF) for x in xs]


def _log_p(x, t, shift, log_se):
  # (x − max)/t, not x/t − max/t: at t = 1e-3 an ulp of x/t is ~1 and would shift q by e^±1.
  return (x - shift) / t - log_se


def log_mixture(xs, ts, ws, shift, log_se):
  """log q in log space (per tile or XLA array): max_n (log w_n + log p_n), then one log Σ exp.

  The same K exps as q = Σ_n w_n p_n, but log q stays finite where q underflows: needed by
  the reverse KL and the JSD, which weigh log q by p_S.
  """
  a = [
    _log_p(x, t, shift[n], log_se[n]) + (0.0 if wn is None else jnp.log(wn))
    for n, (x, t, wn) in enumerate(zip(xs, ts, ws, strict=True))
  ]
  if len(a) == 1:
    return a[0]
  m = functools.reduce(jnp.maximum, a)
  m = jnp.where(m == _NEG_INF, 0.0, m)
  return m + jnp.log(sum(jnp.exp(an - m) for an in a))


def div_elementwise(log_q, log_p, divergence, beta):
  """Per-element loss and r terms of a KD divergence D(q, p_S), given log q and log p_S.

  reverse_kl: loss = r = p (log p − log q); jsd: r = p (log p − log m),
  loss = β q (log q − log m) + (1 − β) r, m = β q + (1 − β) p. The row sum R = Σ r gives the
  gradient w.r.t. u = z_S / T_S: c·(r − R·p), c = 1 (reverse) or 1 − β (jsd). 0 · log 0 = 0.
  """
  p = jnp.exp(log_p)
  if divergence == "reverse_kl":
    r = jnp.where(p > 0, p * (log_p - log_q), 0.0)
    return r, r, p
  log_m = jnp.logaddexp(math.log(beta) + log_q, math.log1p(-beta) + log_p)
  q = jnp.exp(log_q)
  r = jnp.where(p > 0, p * (log_p - log_m), 0.0)
  loss = beta * jnp.where(q > 0, q * (log_q - log_m), 0.0) + (1.0 - beta) * r
  return loss, r, p


def grad_scale(divergence, beta):
  """c in ∂D/∂u = c·(r − R·p) (see `div_elementwise`)."""
  return 1.0 if divergence == "reverse_kl" else 1.0 - beta


def _kl_and_grad(xs, ts, ws, x_s, t_s, shift, log_se, valid, div="forward_kl", beta=0.5):
  """Per-element loss terms of a tile and, given per-row stats [N + 1] × [bm, 1]:

  forward_kl: (q (log q − log p_S), p_S − q, None, None), the gradient complete;
  reverse_kl / jsd: (loss, c·r, r, p_S): the gradient is c·r − c·R·p_S once the row sum
  R = Σ r is known (see `div_elementwise`).
  """
  if div != "forward_kl":
    log_q = log_mixture(xs, ts, ws, shift, log_se)
    log_p = _log_p(x_s, t_s, shift[-1], log_se[-1])
    loss, r, p = div_elementwise(log_q, log_p, div, beta)
    if valid is not None:
      loss, r, p = (jnp.where(valid, x, 0.0) for x in (loss, r, p))
    return loss, grad_scale(div, beta) * r, r, p
  q = 0.0
  for n, (x, t, wn) in enumerate(zip(xs, ts, ws, strict=True)):
    e = jnp.exp(_log_p(x, t, shift[n], log_se[n]))
    q = q + (e if wn is None else wn * e)
  log_p = _log_p(x_s, t_s, shift[-1], log_se[-1])
  kl = jnp.where(q > 0, q * (jnp.log(jnp.where(q > 0, q, 1.0)) - log_p), 0.0)
  if valid is not None:
    kl = jnp.where(valid, kl, 0.0)
  return kl, jnp.exp(log_p) - q, None, None


def _stats_kernel(p_ref, t_ref, s_ref, w_ref, m_out, l_out, m_scr, l_scr, *, k, op, v, bv):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, _NEG_INF, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)

  xs, ts, _ = _grid_terms(p_ref, t_ref, w_ref, k, op)
  if s_ref is not None:
    xs, ts = [*xs, s_ref[...].astype(jnp.float32)], [*ts, p_ref[k]]
  for n, (x, t) in enumerate(zip(_mask(xs, j, bv, v), ts, strict=True)):
    m_old = m_scr[n]  # [bm, 1], running max of the raw term
    m_new = jnp.maximum(m_old, jnp.max(x, axis=1, keepdims=True))
    m_safe = jnp.where(m_new == _NEG_INF, 0.0, m_new)
    l_scr[n] = l_scr[n] * jnp.exp((m_old - m_safe) / t) + jnp.sum(
      jnp.exp((x - m_safe) / t), axis=1, keepdims=True
    )
    m_scr[n] = m_new

  @pl.when(j == pl.num_programs(1) - 1)
  def _store():
    m_out[...] = m_scr[...]
    l_out[...] = l_scr[...]


def _no_student(kernel, p_ref, t_ref, w_ref, *refs):
  return kernel(p_ref, t_ref, None, w_ref, *refs)


def _loss_kernel(p_ref, t_ref, s_ref, w_ref, st_ref, *refs, k, op, v, bv, div, beta, mode):
  """Second pass over V. mode "kl": outputs (kl, [g]) (forward KL: g = p − q complete);
  "r": outputs (kl, R) (reverse KL / JSD: the row sums the gradient needs); "g": takes R,
  outputs g = c·r − c·R·p (a third pass)."""
  j = pl.program_id(1)
  r_in = refs[0] if mode == "g" else None
  outs = refs[1:] if mode == "g" else refs
  xs, ts, ws = _grid_terms(p_ref, t_ref, w_ref, k, op)
  x_s = s_ref[...].astype(jnp.float32)
  valid = None
  if v % bv:
    valid = j * bv + jax.lax.broadcasted_iota(jnp.int32, x_s.shape, 1) < v
  st = st_ref[...]  # [2, N + 1, bm, 1]: shift, log Σ exp
  kl, diff, r, p = _kl_and_grad(xs, ts, ws, x_s, p_ref[k], st[0], st[1], valid, div, beta)
  if mode == "g":
    diff = diff - grad_scale(div, beta) * r_in[...] * p
    outs[0][...] = (diff * p_ref[k + 1]).astype(outs[0].dtype)
    return

  @pl.when(j == 0)
  def _init():
    for o in outs[: 2 if mode == "r" else 1]:
      o[...] = jnp.zeros(o.shape, jnp.float32)

  outs[0][...] += jnp.sum(kl, axis=1, keepdims=True)
  if mode == "r":
    outs[1][...] += jnp.sum(r, axis=1, keepdims=True)
  elif len(outs) > 1:
    outs[1][...] = (diff * p_ref[k + 1]).astype(outs[1].dtype)


def _fused_kernel(p_ref, t_ref, s_ref, w_ref, kl_out, *g_out, k, op, div, beta):
  """Whole row in one block: stats and loss in one pass over the loaded tile."""
  xs, ts, ws = _grid_terms(p_ref, t_ref, w_ref, k, op)
  x_s = s_ref[...].astype(jnp.float32)
  shift, log_se = [], []
  for x, t in zip([*xs, x_s], [*ts, p_ref[k]], strict=True):
    m = jnp.max(x, axis=1, keepdims=True)
    m = jnp.where(m == _NEG_INF, 0.0, m)
    se = jnp.sum(jnp.exp((x - m) / t), axis=1, keepdims=True)
    shift.append(m)
    log_se.append(jnp.where(se > 0, jnp.log(se), 0.0))
  kl, diff, r, p = _kl_and_grad(xs, ts, ws, x_s, p_ref[k], shift, log_se, None, div, beta)
  kl_out[...] = jnp.sum(kl, axis=1, keepdims=True)
  if g_out:
    if r is not None:
      diff = diff - grad_scale(div, beta) * jnp.sum(r, axis=1, keepdims=True) * p
    g_out[0][...] = (diff * p_ref[k + 1]).astype(g_out[0].dtype)


def _grid_calls(
  params,
  teachers,
  student,
  w_t,
  *,
  op,
  bs,
  with_grad,
  interpret,
  fused,
  stats,
  div="forward_kl",
  beta=0.5,
  mode="kl",
  r=None,
):
  """Runs one grid kernel; returns its outputs. w_t is [B, K]; r [B, 1] for mode "g"."""
  k, b, v = teachers.shape
  bm = b if b <= bs.block_rows else bs.block_rows  # a full dim is always a legal block
  bv = v if v <= bs.block_vocab else bs.block_vocab
  nb, nv = pl.cdiv(b, bm), pl.cdiv(v, bv)
  n = 1 if op == "geometric" else k
  grid = (nb, 1) if fused else (nb, nv)
  smem = pl.BlockSpec(memory_space=pltpu.SMEM)
  specs = [
    smem,
    pl.BlockSpec((k, bm, bv), lambda i, j: (0, i, j)),
    pl.BlockSpec((bm, bv), lambda i, j: (i, j)),
    pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
  ]
  args = [params, teachers, student, w_t]
  if student is None:  # mixture only: no student input, no student statistics
    del specs[2], args[2]
  row_out = pl.BlockSpec((bm, 1), lambda i, j: (i, 0))
  kl_shape = _sds((b, 1), jnp.float32, teachers)
  g_shape = [_sds((b, v), student.dtype, teachers)] if with_grad else []
  g_spec = [pl.BlockSpec((bm, bv), lambda i, j: (i, j))] if with_grad else []
  scratch = []
  if fused:
    kernel = functools.partial(_fused_kernel, k=k, op=op, div=div, beta=beta)
    out_shape, out_specs = [kl_shape, *g_shape], [row_out, *g_spec]
  elif stats is None:  # stats pass
    kernel = functools.partial(_stats_kernel, k=k, op=op, v=v, bv=bv)
    if student is None:
      kernel = functools.partial(_no_student, kernel)
    ns = n + (student is not None)
    st = _sds((ns, b, 1), jnp.float32, teachers)
    out_shape = [st, st]
    out_specs = [pl.BlockSpec((ns, bm, 1), lambda i, j: (0, i, 0))] * 2
    scratch = [pltpu.VMEM((ns, bm, 1), jnp.float32)] * 2
  else:  # loss pass
    kernel = functools.partial(_loss_kernel, k=k, op=op, v=v, bv=bv, div=div, beta=beta, mode=mode)
    specs.append(pl.BlockSpec((2, n + 1, bm, 1), lambda i, j: (0, 0, i, 0)))
    args.append(stats)
    if mode == "g":  # R in, gradient out
      specs.append(row_out)
      args.append(r)
      out_shape, out_specs = g_shape, g_spec
    elif mode == "r":  # loss and R out
      out_shape, out_specs = [kl_shape, kl_shape], [row_out, row_out]
    else:
      out_shape, out_specs = [kl_shape, *g_shape], [row_out, *g_spec]
  return pl.pallas_call(
    kernel,
    out_shape=out_shape,
    grid=grid,
    in_specs=specs,
    out_specs=out_specs,
    scratch_shapes=scratch,
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
    interpret=interpret,
    name=f"fused_kd_{op}",
  )(*args)


def _grid_kd(
  params,
  teachers,
  student,
  w,
  *,
  op,
  bs,
  with_grad,
  interpret,
  combine,
  sharded,
  div="forward_kl",
  beta=0.5,
  row_psum=lambda x: x,
):
  w_t = w.T  # [B, K]: rows on the sublane axis
  kw = dict(op=op, bs=bs, with_grad=with_grad, interpret=interpret, div=div, beta=beta)
  if teachers.shape[-1] <= bs.block_vocab and not sharded:
    outs = _grid_calls(params, teachers, student, w_t, fused=True, stats=None, **kw)
    return outs[0][:, 0], (outs[1] if with_grad else None)
  m, se = _grid_calls(params, teachers, student, w_t, fused=False, stats=None, **kw)
  n = m.shape[0] - 1
  t = params[:n] if op == "linear" else jnp.ones((1,), jnp.float32)
  t = jnp.concatenate([t, params[-2:-1]])[:, None]  # [N + 1, 1]: term temperatures
  stats = jnp.stack(combine(m[..., 0], se[..., 0], t))[..., None]  # [2, N + 1, B, 1]
  if div == "forward_kl":
    outs = _grid_calls(params, teachers, student, w_t, fused=False, stats=stats, **kw)
    return outs[0][:, 0], (outs[1] if with_grad else None)
  # Reverse KL / JSD: the gradient needs the row sum R first, so a third pass writes it.
  kl, r = _grid_calls(params, teachers, student, w_t, fused=False, stats=stats, mode="r", **kw)
  if not with_grad:
    return kl[:, 0], None
  g = _grid_calls(
    params, teachers, student, w_t, fused=False, stats=stats, mode="g", r=row_psum(r), **kw
  )
  return kl[:, 0], g[0]


# ----------------------------------------------------------------------------- GPU row kernel


def _row_terms(p_ref, t_ref, w_ref, k, op, cols, mask):
  """Row-kernel version of `_grid_terms` for one vocabulary chunk [bv] (masked loads)."""
  load = lambda i: plgpu.load(t_ref.at[i, cols], mask=mask, other=_NEG_INF)
  xs = [load(i).astype(jnp.float32) for i in range(k)]  # K × [bv]
  if op == "linear":
    return xs, [p_ref[i] for i in range(k)], [w_ref[i] for i in range(k)]
  pooled = 0.0
  for i in range(k):
    pooled = pooled + jnp.where(w_ref[i] == 0, 0.0, w_ref[i] * (xs[i] / p_ref[i]))
  return [jnp.where(mask, pooled, _NEG_INF)], [1.0], [None]


def _gpu_stats_kernel(p_ref, t_ref, s_ref, w_ref, m_out, l_out, *, k, op, v, bv):
  n = 1 if op == "geometric" else k

  def body(jb, carry):
    cols = jb * bv + jnp.arange(bv)
    mask = cols < v
    xs, ts, _ = _row_terms(p_ref, t_ref, w_ref, k, op, cols, mask)
    xs.append(plgpu.load(s_ref.at[cols], mask=mask, other=_NEG_INF).astype(jnp.float32))
    new = []
    for x, t, (m, se) in zip(xs, [*ts, p_ref[k]], carry, strict=True):  # lane-wise online
      m_new = jnp.maximum(m, x)
      m_safe = jnp.where(m_new == _NEG_INF, 0.0, m_new)
      new.append((m_new, se * jnp.exp((m - m_safe) / t) + jnp.exp((x - m_safe) / t)))
    return tuple(new)

  init = tuple((jnp.full((bv,), _NEG_INF), jnp.zeros((bv,))) for _ in range(n + 1))
  carry = jax.lax.fori_loop(0, pl.cdiv(v, bv), body, init)
  ts = [p_ref[i] for i in range(n)] if op == "linear" else [1.0]
  for i, ((m, se), t) in enumerate(zip(carry, [*ts, p_ref[k]], strict=True)):
    m_row = jnp.max(m)
    m_safe = jnp.where(m_row == _NEG_INF, 0.0, m_row)
    m_out[i] = m_row
    l_out[i] = jnp.sum(se * jnp.exp((m - m_safe) / t))


def _gpu_loss_kernel(p_ref, t_ref, s_ref, w_ref, st_ref, *refs, k, op, v, bv, div, beta, mode):
  """Row-kernel version of `_loss_kernel` (same modes "kl", "r" and "g")."""
  n = 1 if op == "geometric" else k
  r_in = refs[0] if mode == "g" else None
  outs = refs[1:] if mode == "g" else refs
  write_g = mode == "g" or (mode == "kl" and len(outs) > 1)
  g_out = outs[-1] if write_g else None

  def body(jb, acc):
    cols = jb * bv + jnp.arange(bv)
    mask = cols < v
    xs, ts, ws = _row_terms(p_ref, t_ref, w_ref, k, op, cols, mask)
    x_s = plgpu.load(s_ref.at[cols], mask=mask, other=0.0).astype(jnp.float32)
    shift = [st_ref[0, i] for i in range(n + 1)]
    log_se = [st_ref[1, i] for i in range(n + 1)]
    kl, diff, r, p = _kl_and_grad(xs, ts, ws, x_s, p_ref[k], shift, log_se, mask, div, beta)
    if mode == "g":
      diff = diff - grad_scale(div, beta) * r_in[0] * p
    if write_g:
      plgpu.store(g_out.at[cols], (diff * p_ref[k + 1]).astype(g_out.dtype), mask=mask)
    return acc[0] + jnp.sum(kl), acc[1] + (0.0 if r is None else jnp.sum(r))

  zero = jnp.zeros((), jnp.float32)
  acc = jax.lax.fori_loop(0, pl.cdiv(v, bv), body, (zero, zero))
  if mode != "g":
    outs[0][0] = acc[0]
  if mode == "r":
    outs[1][0] = acc[1]


def _gpu_kd(
  params,
  teachers,
  student,
  w,
  *,
  op,
  bs,
  with_grad,
  combine,
  interpret=False,
  div="forward_kl",
  beta=0.5,
  row_psum=lambda x: x,
):
  """Triton row kernels (stats, then loss and gradient; reverse KL / JSD: stats, loss and R,
  then gradient); interpret=True only for tests."""
  k, b, v = teachers.shape
  n = 1 if op == "geometric" else k
  bv = min(bs.block_vocab, pl.next_power_of_2(v))
  sq = pl.squeezed
  specs = [
    pl.BlockSpec((k + 2,), lambda i: (0,)),
    pl.BlockSpec((k, sq, v), lambda i: (0, i, 0)),
    pl.BlockSpec((sq, v), lambda i: (i, 0)),
    pl.BlockSpec((sq, k), lambda i: (i, 0)),
  ]
  w_t = w.T  # [B, K]
  cp = plgpu.CompilerParams(num_warps=min(max(bv // 256, 1), 8), num_stages=1)
  st = _sds((b, n + 1), jnp.float32, teachers)
  st_spec = pl.BlockSpec((sq, n + 1), lambda i: (i, 0))
  m, se = pl.pallas_call(
    functools.partial(_gpu_stats_kernel, k=k, op=op, v=v, bv=bv),
    out_shape=[st, st],
    grid=(b,),
    in_specs=specs,
    out_specs=[st_spec, st_spec],
    compiler_params=cp,
    interpret=interpret,
    name=f"fused_kd_stats_{op}",
  )(params, teachers, student, w_t)
  t = params[:n] if op == "linear" else jnp.ones((1,), jnp.float32)
  t = jnp.concatenate([t, params[k : k + 1]])[:, None]  # [N + 1, 1]: term temperatures
  stats = jnp.stack(combine(m.T, se.T, t)).transpose(2, 0, 1)  # [B, 2, N + 1]
  g_shape = [_sds((b, v), student.dtype, teachers)] if with_grad else []
  g_spec = [pl.BlockSpec((sq, v), lambda i: (i, 0))] if with_grad else []
  row = _sds((b, 1), jnp.float32, teachers)
  row_spec = pl.BlockSpec((sq, 1), lambda i: (i, 0))
  in_specs = [*specs, pl.BlockSpec((sq, 2, n + 1), lambda i: (i, 0, 0))]

  def call(mode, out_shape, out_specs, *extra):
    return pl.pallas_call(
      functools.partial(_gpu_loss_kernel, k=k, op=op, v=v, bv=bv, div=div, beta=beta, mode=mode),
      out_shape=out_shape,
      grid=(b,),
      in_specs=in_specs + [row_spec] * len(extra),
      out_specs=out_specs,
      compiler_params=cp,
      interpret=interpret,
      name=f"fused_kd_loss_{op}",
    )(params, teachers, student, w_t, stats, *extra)

  if div == "forward_kl":
    outs = call("kl", [row, *g_shape], [row_spec, *g_spec])
    return outs[0][:, 0], (outs[1] if with_grad else None)
  kl, r = call("r", [row, row], [row_spec, row_spec])
  if not with_grad:
    return kl[:, 0], None
  return kl[:, 0], call("g", g_shape, g_spec, row_psum(r))[0]


# ----------------------------------------------------------------------------- dispatch


def combine_stats(m, se, t, axis_name):
  """Per-shard raw row max m and Σ exp((x − m)/t) [N, B] -> (shift, log Σ exp) [N, B].

  With a sharded vocabulary: one pmax of m and one psum of the rescaled sums. Rows that are
  all −inf give (0, 0), so their terms exp(−inf) stay 0 instead of NaN.
  """
  if axis_name is not None:
    m_all = jax.lax.pmax(m, axis_name)
    m_safe = jnp.where(jnp.isfinite(m_all), m_all, 0.0)
    se = jax.lax.psum(se * jnp.exp((m - m_safe) / t), axis_name)
    m = m_all
  return jnp.where(jnp.isfinite(m), m, 0.0), jnp.where(se > 0, jnp.log(se), 0.0)


def _combiner(axis_name):
  return functools.partial(combine_stats, axis_name=axis_name)


def pallas_kd(
  student,
  teachers,
  params,
  w,
  *,
  operator,
  axis_name,
  with_grad,
  block_sizes,
  interpret,
  divergence="forward_kl",
  beta=0.5,
):
  """(loss [B], ∂loss/∂u [B, V] or None, u = z_S / T_S) with a Pallas kernel for the platform.

  params is [T_1..T_K, T_S]; w is [K, B]; teachers [K, B, V]; student [B, V]. The loss is
  KL(q ‖ p_S), KL(p_S ‖ q) or JSD_β (`divergence`), unscaled by T_S².
  """
  params = jnp.concatenate([params, jnp.ones((1,), jnp.float32)])  # [K + 2]: gscale = 1
  combine = _combiner(axis_name)
  row_psum = lambda x: x if axis_name is None else jax.lax.psum(x, axis_name)
  div = dict(div=divergence, beta=beta, row_psum=row_psum)

  def grid(bs, interp):
    return lambda *a: _grid_kd(
      *a,
      op=operator,
      bs=bs,
      with_grad=with_grad,
      interpret=interp,
      combine=combine,
      sharded=axis_name is not None,
      **div,
    )

  def gpu(*a):
    bs = (block_sizes or BlockSizes.get_default("gpu")).validate("gpu")
    return _gpu_kd(*a, op=operator, bs=bs, with_grad=with_grad, combine=combine, **div)

  args = (params, teachers, student, w)
  if interpret:
    out = grid(block_sizes or BlockSizes.get_default("cpu"), True)(*args)
  else:
    tpu_bs = (block_sizes or BlockSizes.get_default("tpu")).validate("tpu")
    out = jax.lax.platform_dependent(*args, tpu=grid(tpu_bs, False), cuda=gpu, rocm=gpu)
  if axis_name is not None:
    out = (jax.lax.psum(out[0], axis_name), out[1])
  return out


def pallas_mixture(teachers, params, w, *, operator, axis_name, block_sizes, interpret):
  """log q [B, V]: Pallas stats pass (grid kernel: TPU or interpret mode; no Triton version),
  then one fused XLA elementwise pass."""
  k = teachers.shape[0]
  bs = block_sizes or BlockSizes.get_default("cpu" if interpret else "tpu")
  params = jnp.concatenate([params, jnp.ones((1,), jnp.float32)])
  kw = dict(op=operator, bs=bs, with_grad=False, interpret=interpret, fused=False, stats=None)
  m, se = _grid_calls(params, teachers, None, w.T, **kw)
  t = params[:k, None] if operator == "linear" else jnp.ones((1, 1), jnp.float32)
  shift, log_se = combine_stats(m[..., 0], se[..., 0], t, axis_name)  # [N, B] each
  temps = params[:k]
  if operator == "geometric":
    pooled = sum(
      jnp.where(w[i][:, None] == 0, 0.0, w[i][:, None] * (teachers[i] / temps[i])) for i in range(k)
    )
    return pooled - shift[0][:, None] - log_se[0][:, None]
  q = sum(
    w[i][:, None]
    * jnp.exp(
      _log_p(teachers[i].astype(jnp.float32), temps[i], shift[i][:, None], log_se[i][:, None])
    )
    for i in range(k)
  )
  return jnp.log(q)
