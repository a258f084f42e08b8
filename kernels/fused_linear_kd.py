"""Fused output projection + multi-teacher KD loss: logits exist only one token chunk at a time.

For student hidden states h [N, d], head W [d, V] (bias b [V]) and K teachers given either as
logits z_k [K, N, V] or as (hidden h_k [N, d_k], head W_k [d_k, V]) pairs, per token n:

    z_S = h W + b,   z_k = h_k W_k,   q = G(softmax(z_k / T_k), w)   (G: linear or geometric)
    loss_n = T_S² · D(q, softmax(z_S / T_S))   (D: forward KL, reverse KL or JSD_β)
    ∂loss/∂z_S = T_S · ∂D/∂u  (u = z_S / T_S; see `fused_kd_loss`)
    ∂/∂h = (∂loss/∂z_S) Wᵀ,  ∂/∂W = Σ_n h_nᵀ (∂loss_n/∂z_S),  ∂/∂b = Σ_n ∂loss_n/∂z_S

The tokens are processed in chunks of C rows (a `fori_loop` reading the inputs with dynamic
slices: no padded copy of h or of the teachers; where C does not divide N the last chunk ends
at row N and overlaps the one before, its repeated rows masked, so every chunk has one shape).
Per chunk: the student's and the teachers' projections as matmuls into f32 [C, V] / [K, C, V]
logits, the loss and ∂loss/∂z_S through the fused KD kernel, chosen as `fused_kd_loss` chooses
(`implementation`: Pallas on TPU/GPU, the XLA path on CPU, "auto" falling back to XLA where
Pallas does not compile), then ∂/∂h of the chunk and the running ∂/∂W, ∂/∂b. The largest live
arrays are O((K + 3)·C·V); nothing of size N·V exists (memory flat in N, as Liger's and
tokamax's fused linear cross-entropy, here for K teachers and any of the divergences).

The gradients are computed in the forward pass (the custom_vjp's fwd rule), as those kernels
do, so value-and-gradient costs one pass over the chunks: K + 3 matmuls of N·d·V. The per-token
loss can get any cotangent g, though: ∂/∂h scales row by row (g_n · ∂/∂h_n), but ∂/∂W and ∂/∂b
are sums over tokens. When g is the same for every unmasked token (`loss.sum()`, `loss.mean()`,
a masked mean) they scale by that number; otherwise (a `lax.cond` on the data) a second pass
recomputes each chunk's logits and ∂loss/∂z_S and accumulates Σ_n g_n h_nᵀ ∂loss_n/∂z_S. Under
`vmap` the cond becomes a select and both run (correct, slower).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import operators as operators_lib
from mtkd_jax.divergences import generalized_jsd, kl_divergence

from . import fused_kd
from ._pallas_kd import BlockSizes

# The default chunk keeps (K + 3) f32 [C, V] arrays (the teachers' and the student's logits,
# the mixture and the gradient) within this many bytes: 64 MiB is C = 72 rows at K = 4,
# V = 32768, and C = 16 at V = 131072. Other budgets were not timed (the shared CPU was too
# loaded for it); on an accelerator the budget should fit its memory beside the model.
DEFAULT_CHUNK_BYTES = 64 << 20
_MIN_CHUNK, _MAX_CHUNK = 8, 4096


def default_token_chunk(v, k, n=None, budget_bytes=DEFAULT_CHUNK_BYTES):
  """Rows per chunk: budget_bytes / ((K + 3)·V·4), a multiple of 8 in [8, 4096], at most N."""
  c = budget_bytes // ((k + 3) * v * 4)
  c = int(np.clip(c - c % 8, _MIN_CHUNK, _MAX_CHUNK))
  return c if n is None else max(min(c, n), 1)


@dataclasses.dataclass(frozen=True)
class _Config:
  kd: fused_kd._Config  # the per-chunk fused KD loss
  chunk: int  # rows per chunk
  pairs: bool  # teachers as (hidden, head) pairs, else logits [K, N, V]


# ----------------------------------------------------------------------------- one chunk


def _slice(x, start, size, axis=0):
  if isinstance(start, int):
    return jax.lax.slice_in_dim(x, start, start + size, axis=axis)
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _chunk_dlogits(cfg, start, size, fresh, h, head, bias, teachers, params, w, mask, with_grad):
  """Loss [C] and ∂loss/∂z_S [C, V] f32 (zero on masked rows and where `fresh` [C] is False)
  of rows [start, start + C)."""
  f32 = jnp.float32
  h_c = _slice(h, start, size)  # [C, d]
  z = jnp.dot(h_c, head, preferred_element_type=f32)  # [C, V]
  if bias is not None:
    z = z + bias.astype(f32)
  if cfg.pairs:
    zt = jnp.stack([_teacher_logits(_slice(t[0], start, size), *t[1:]) for t in teachers])
    # [K, C, V], one teacher at a time
  elif teachers.dtype == jnp.float32:
    zt = _slice(teachers, start, size, axis=1)  # [K, C, V]
  else:
    # Sliced as raw bits: XLA:CPU otherwise converted all of the [K, N, V] low-precision
    # logits to f32 once, before the loop (measured: 512 MiB of temporaries at K = 4,
    # N = 1024, V = 32768 in bf16, more than the naive formulation's).
    bits = jax.lax.bitcast_convert_type(teachers, _uint(teachers.dtype))
    zt = jax.lax.bitcast_convert_type(_slice(bits, start, size, axis=1), teachers.dtype)
  w_c, m_c = _slice(w, start, size, axis=1), _slice(mask, start, size)  # [K, C], [C]
  m_c = m_c if fresh is None else m_c & fresh
  ts = params[-1]
  d, res = fused_kd._kd_rows(cfg.kd, z, zt, params, w_c, m_c, with_grad=with_grad)  # [C]
  loss = jnp.where(m_c, ts**2 * d, 0.0)
  if not with_grad:
    return loss, None
  # ∂(T_S² D)/∂z_S = T_S · ∂D/∂u; masked rows get exactly zero.
  dz = jnp.where(m_c[:, None], ts * fused_kd._dlogits(cfg.kd, res).astype(f32), 0.0)
  return loss, dz


def _uint(dtype):
  return {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[jnp.dtype(dtype).itemsize]


def _teacher_logits(h, head, bias=None):
  z = jnp.dot(h, head, preferred_element_type=jnp.float32)  # [C, V]
  return z if bias is None else z + bias.astype(jnp.float32)


def _head_grad(h_c, dz, head_dtype):
  """h_cᵀ dz [d, V] f32 without a transposed copy of h_c."""
  dims = (((0,), (0,)), ((), ()))
  return jax.lax.dot_general(h_c, dz.astype(head_dtype), dims, preferred_element_type=jnp.float32)


def _over_chunks(cfg, n, body, carry):
  """carry = body(start, C, fresh, carry) over ceil(N / C) chunks of C rows (a fori_loop).

  Where C does not divide N the last chunk starts at N − C and overlaps the one before; `fresh`
  [C] marks its rows not done yet (None: every row is), so all chunks share one shape and one
  set of buffers (a ragged tail of its own shape would add its own [tail, V] arrays).
  """
  c = min(cfg.chunk, n)
  num = -(-n // c)
  if num == 1:
    return body(0, c, None, carry)

  def one(i, carry):
    start = jnp.minimum(i * c, n - c)
    fresh = start + jnp.arange(c) >= i * c if n % c else None
    return body(start, c, fresh, carry)

  return jax.lax.fori_loop(0, num, one, carry)


def _axes(*trees):
  """The manual mesh axes (inside `shard_map`) any leaf of trees varies over."""
  axes = set()
  for x in jax.tree.leaves(trees):
    mat = getattr(jax.typeof(x), "mat", None)
    axes |= set(mat.varying) if mat is not None else set()
  return tuple(sorted(axes))


def _varying(tree, axes):
  """Zero-initialised loop carries typed like what the body makes of them (shard_map)."""
  return jax.tree.map(lambda x: jax.lax.pcast(x, axes, to="varying"), tree) if axes else tree


def _put(buf, x, start, fresh):
  """buf with rows [start, start + C) set to x where `fresh` (all of them when None)."""
  x = x.astype(buf.dtype)
  if fresh is not None:  # rows an earlier chunk wrote keep their values
    old = _slice(buf, start, x.shape[0])
    x = jnp.where(fresh.reshape(-1, *(1,) * (x.ndim - 1)), x, old)
  return jax.lax.dynamic_update_slice_in_dim(buf, x, start, axis=0)


# ----------------------------------------------------------------------------- custom_vjp


def _forward(cfg, h, head, bias, teachers, params, w, mask, with_grad):
  """Loss [N]; with_grad: also ∂/∂h [N, d] f32, ∂/∂W [d, V] f32, ∂/∂b [V] f32 (cotangent 1)."""
  n, d = h.shape
  v = head.shape[1]
  args = (h, head, bias, teachers, params, w, mask)

  def body(start, size, fresh, carry):
    loss, dz = _chunk_dlogits(cfg, start, size, fresh, *args, with_grad)
    if not with_grad:
      return _put(carry, loss, start, fresh)
    loss_buf, dh_buf, dw, db = carry
    dh = jnp.dot(dz.astype(head.dtype), head.T, preferred_element_type=jnp.float32)  # [C, d]
    dw = dw + _head_grad(_slice(h, start, size), dz, head.dtype)
    loss_buf, dh_buf = _put(loss_buf, loss, start, fresh), _put(dh_buf, dh, start, fresh)
    return loss_buf, dh_buf, dw, db + jnp.sum(dz, 0)

  f32 = jnp.float32
  axes = _axes(args)
  loss = jnp.zeros((n,), f32)
  if not with_grad:
    return _over_chunks(cfg, n, body, _varying(loss, axes))
  carry = (loss, jnp.zeros((n, d), f32), jnp.zeros((d, v), f32), jnp.zeros((v,), f32))
  return _over_chunks(cfg, n, body, _varying(carry, axes))


def _weighted_head_grads(cfg, g, h, head, bias, teachers, params, w, mask):
  """Second pass for a non-uniform cotangent: Σ_n g_n h_nᵀ ∂loss_n/∂z_S, Σ_n g_n ∂loss_n/∂z_S."""
  args = (h, head, bias, teachers, params, w, mask)

  def body(start, size, fresh, carry):
    _, dz = _chunk_dlogits(cfg, start, size, fresh, *args, True)
    dz = _slice(g, start, size)[:, None] * dz  # [C, V]
    dw, db = carry
    return dw + _head_grad(_slice(h, start, size), dz, head.dtype), db + jnp.sum(dz, 0)

  d, v = head.shape
  init = _varying((jnp.zeros((d, v)), jnp.zeros((v,))), _axes(g, args))
  return _over_chunks(cfg, h.shape[0], body, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _linear_kd(cfg, h, head, bias, teachers, params, w, mask):
  return _forward(cfg, h, head, bias, teachers, params, w, mask, with_grad=False)


def _linear_kd_fwd(cfg, h, head, bias, teachers, params, w, mask):
  loss, dh, dw, db = _forward(cfg, h, head, bias, teachers, params, w, mask, with_grad=True)
  return loss, (dh, dw, db, h, head, bias, teachers, params, w, mask)


def _linear_kd_bwd(cfg, res, g):
  dh, dw, db, h, head, bias, teachers, params, w, mask = res
  g = jnp.where(mask, g.astype(jnp.float32), 0.0)  # [N]
  dh = (g[:, None] * dh).astype(h.dtype)
  # One cotangent shared by all unmasked tokens (sum, mean): scale the forward's sums.
  g0 = g[jnp.argmax(mask)]
  uniform = jnp.all(jnp.where(mask, g == g0, True))
  dw, db = jax.lax.cond(
    uniform,
    lambda: (g0 * dw, g0 * db),
    lambda: _weighted_head_grads(cfg, g, h, head, bias, teachers, params, w, mask),
  )
  # Inside shard_map with tokens sharded and the head replicated: the head's cotangent is the
  # sum over the token shards (the transpose of using one head on every shard).
  extra = tuple(a for a in _axes(dw) if a not in _axes(head))
  dw = jax.lax.psum(dw, extra) if extra else dw
  db = None if bias is None else jax.lax.psum(db, extra) if extra else db
  db = None if bias is None else db.astype(bias.dtype)
  return dh, dw.astype(head.dtype), db, None, None, None, None


_linear_kd.defvjp(_linear_kd_fwd, _linear_kd_bwd)


# ----------------------------------------------------------------------------- validation


def _is_pairs(teachers):
  return isinstance(teachers, (list, tuple)) and all(isinstance(t, (list, tuple)) for t in teachers)


def _check(student_hidden, student_head, teachers, student_bias, where, token_chunk):
  """Shapes of everything but temperatures/weights; raises ValueError naming the argument."""
  if student_hidden.ndim < 1 or student_hidden.shape[-1] == 0:
    raise ValueError(f"student_hidden must be [..., d] with d >= 1; got {student_hidden.shape=}")
  d, batch = student_hidden.shape[-1], student_hidden.shape[:-1]
  if student_head.ndim != 2 or student_head.shape[0] != d or student_head.shape[1] == 0:
    raise ValueError(
      f"student_head must be [d={d}, V] with V >= 1; got {student_head.shape=} "
      f"(with {student_hidden.shape=})"
    )
  v = student_head.shape[1]
  if student_bias is not None and np.shape(student_bias) != (v,):
    raise ValueError(f"student_bias must be [V={v}]; got {np.shape(student_bias)=}")
  if where is not None and np.shape(where) != batch:
    raise ValueError(
      f"where must have shape {batch} (= student_hidden.shape[:-1]); got {np.shape(where)=}"
    )
  if token_chunk is not None and (not isinstance(token_chunk, int) or token_chunk < 1):
    raise ValueError(f"token_chunk must be a positive int or None; got {token_chunk=}")
  if _is_pairs(teachers):
    if not teachers:
      raise ValueError("teachers must hold at least one (hidden, head) pair; got 0")
    for i, pair in enumerate(teachers):
      if len(pair) not in (2, 3):
        raise ValueError(
          f"teachers[{i}] must be a (hidden, head) pair or (hidden, head, bias); got "
          f"{len(pair)} items"
        )
      hk, wk = np.shape(pair[0]), np.shape(pair[1])
      if hk[:-1] != batch or not hk or hk[-1] == 0:
        raise ValueError(
          f"teachers[{i}] hidden must be [..., d_k] with ... = {batch} "
          f"(student_hidden.shape[:-1]); got shape {hk}"
        )
      if len(wk) != 2 or wk[0] != hk[-1]:
        raise ValueError(f"teachers[{i}] head must be [d_k={hk[-1]}, V]; got shape {wk}")
      if wk[1] != v:
        raise ValueError(
          f"teachers[{i}] head must have V={v} columns (= student_head.shape[1]); got shape {wk}"
        )
      if len(pair) == 3 and np.shape(pair[2]) != (v,):
        raise ValueError(f"teachers[{i}] bias must be [V={v}]; got shape {np.shape(pair[2])}")
    return len(teachers), v
  shape = np.shape(teachers)
  if len(shape) < 2 or tuple(shape[1:]) != (*batch, v):
    raise ValueError(
      f"teachers must be logits [K, *student_hidden.shape[:-1], V={v}] = [K, {batch}, {v}] "
      f"or a sequence of (hidden, head) pairs; got teachers.shape={shape}"
    )
  return shape[0], v


# ----------------------------------------------------------------------------- public API


def fused_linear_kd_loss(
  student_hidden,
  student_head,
  teachers,
  *,
  temperatures,
  weights,
  student_temperature=1.0,
  operator="linear",
  divergence="forward_kl",
  beta=0.5,
  student_bias=None,
  where=None,
  token_chunk=None,
  implementation="auto",
  block_sizes=None,
  interpret=None,
):
  """Per-token T_S² · D(q, softmax((h W + b) / T_S)), fused with the output projections.

  q is the tempered teacher mixture (operator "linear": Σ_k w_k softmax(z_k / T_k);
  "geometric": softmax(Σ_k w_k z_k / T_k)); D is "forward_kl" KL(q ‖ p_S) (mass-covering),
  "reverse_kl" KL(p_S ‖ q) (mode-seeking) or "jsd" β·KL(q ‖ m) + (1 − β)·KL(p_S ‖ m) with
  m = β·q + (1 − β)·p_S (GKD). Neither the student's nor the teachers' [N, V] logits are ever
  materialised: tokens are processed `token_chunk` rows at a time (see the module docstring).
  Differentiable in `student_hidden`, `student_head` and `student_bias` (analytic custom_vjp;
  ∂/∂W and ∂/∂b accumulated over chunks); the teachers are frozen.

  Args:
    student_hidden: [..., d] student hidden states h (f32 or bf16).
    student_head: [d, V] output projection W (f32 or bf16; logits accumulate in f32).
    teachers: teacher logits [K, ..., V], or a sequence of K (hidden [..., d_k],
      head [d_k, V]) pairs, or (hidden, head, bias [V]) triples, whose logits are computed
      chunk by chunk (widths d_k may differ).
    temperatures: [K] or scalar, T_k > 0.
    weights: [K] or [K, ...] (a leading prefix of the token shape), summing to 1 over K.
    student_temperature: T_S > 0.
    operator: "linear" or "geometric".
    divergence: "forward_kl", "reverse_kl" or "jsd".
    beta: β ∈ (0, 1) of the JSD.
    student_bias: optional [V] bias b.
    where: optional boolean [...] mask: False gives loss 0 and exactly 0 gradient (padding),
      whatever the row holds. Non-finite teacher logits follow `fused_kd_loss` (NaN or +inf:
      a ValueError on concrete logits, a NaN loss and gradient under `jit`; a row entirely −inf
      is an absent teacher; docs/design.md, "Non-finite inputs").
    token_chunk: rows per chunk; None: `default_token_chunk(V, K, N)`, i.e. (K + 3) f32
      [C, V] chunk arrays within `DEFAULT_CHUNK_BYTES` (64 MiB), C a multiple of 8 in
      [8, 4096].
    implementation: "auto" (Pallas on TPU/GPU, XLA on CPU), "xla" or "pallas" for the
      per-chunk KD loss, chosen as `fused_kd_loss` chooses: if the Pallas kernel fails to
      compile at the chunk shapes, "auto" warns once and runs the XLA path, "pallas" raises.
      The projections are XLA matmuls.
    block_sizes: `BlockSizes` of the Pallas kernel (None: per-backend defaults).
    interpret: run Pallas in interpret mode (None: only on CPU).

  Returns:
    [...] float32 per-token loss (student_hidden.shape[:-1]).

  >>> h = jax.random.normal(jax.random.key(0), (2, 5, 16))  # [batch, seq, d]
  >>> head = jax.random.normal(jax.random.key(1), (16, 100)) / 4  # [d, V]
  >>> pairs = [(h, head * 2), (h[..., :8], head[:8])]  # teachers of widths 16 and 8
  >>> fused_linear_kd_loss(h, head, pairs, temperatures=[1.0, 2.0], weights=[0.5, 0.5]).shape
  (2, 5)
  """
  student_hidden, student_head = jnp.asarray(student_hidden), jnp.asarray(student_head)
  pairs = _is_pairs(teachers)
  if not pairs:
    teachers = jnp.asarray(teachers)
  k, v = _check(student_hidden, student_head, teachers, student_bias, where, token_chunk)
  batch = student_hidden.shape[:-1]
  # Temperatures, weights, operator, implementation, divergence: checked as the fused loss does;
  # teacher logits (not pairs, whose logits exist only chunk by chunk) for NaN and +inf too.
  temperatures, weights, student_temperature = fused_kd._check_inputs(
    None,
    jax.ShapeDtypeStruct((k, *batch, v), jnp.float32),
    temperatures,
    weights,
    operator,
    implementation,
    student_temperature,
    divergence,
    beta,
  )
  if not pairs:
    operators_lib.check_finite_teachers(teachers, name="teachers", where=where)
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be a BlockSizes; got {type(block_sizes)=}")
  impl, interp = fused_kd._resolve(implementation, interpret)

  n = int(np.prod(batch, dtype=np.int64))
  d = student_hidden.shape[-1]
  h = student_hidden.reshape(n, d)  # [N, d]
  stop = jax.lax.stop_gradient
  if pairs:
    t_in = tuple(
      (
        stop(jnp.asarray(t[0])).reshape(n, np.shape(t[0])[-1]),
        *(stop(jnp.asarray(x)) for x in t[1:]),
      )
      for t in teachers
    )  # K × (hidden [N, d_k], head [d_k, V] (, bias [V]))
  else:
    t_in = stop(teachers.reshape(k, n, v))  # [K, N, V]
  temps = jnp.broadcast_to(jnp.asarray(temperatures, jnp.float32), (k,))  # [K]
  ts = jnp.asarray(student_temperature, jnp.float32).reshape(1)
  params = jnp.concatenate([temps, ts])  # [K + 1]: T_k, T_S
  w = jnp.asarray(weights, jnp.float32)
  w = w.reshape(w.shape + (1,) * (len(batch) + 1 - w.ndim))
  w = jnp.broadcast_to(w, (k, *batch)).reshape(k, n)  # [K, N]
  mask = jnp.ones((n,), bool) if where is None else jnp.asarray(where, bool).reshape(n)
  bias = None if student_bias is None else jnp.asarray(student_bias)
  chunk = default_token_chunk(v, k, n) if token_chunk is None else min(token_chunk, max(n, 1))
  kd_cfg = fused_kd._Config(
    operator, impl, block_sizes, bool(interp), None, None, divergence, float(beta)
  )
  if n == 0:
    return jnp.zeros(batch, jnp.float32)
  # Each chunk's loss goes through the public kernel choice (`fused_kd._dispatch`): "auto"
  # keeps Pallas only if it compiles at the chunk shape (every chunk has it), and otherwise
  # runs every chunk on the XLA path, as `fused_kd_loss` would.
  rows = min(chunk, n)
  kd_cfg = fused_kd._dispatch(
    kd_cfg,
    implementation,
    jax.ShapeDtypeStruct((rows, v), jnp.float32),
    jax.ShapeDtypeStruct((k, rows, v), jnp.float32 if pairs else teachers.dtype),
    jax.ShapeDtypeStruct((k + 1,), jnp.float32),
    jax.ShapeDtypeStruct((k, rows), jnp.float32),
  )
  cfg = _Config(kd_cfg, chunk, pairs)
  loss = _linear_kd(cfg, h, student_head, bias, t_in, stop(params), stop(w), mask)
  return loss.reshape(batch)


# ----------------------------------------------------------------------------- reference


def fused_linear_kd_loss_reference(
  student_hidden,
  student_head,
  teachers,
  *,
  temperatures,
  weights,
  student_temperature=1.0,
  operator="linear",
  divergence="forward_kl",
  beta=0.5,
  student_bias=None,
  where=None,
):
  """Plain jnp: all [N, V] and [K, N, V] logits materialised, then `fused_kd_loss_reference`.

  Autodiff gives the gradients. Computes in the inputs' precision (f32 for bf16 inputs; pass
  float64 arrays under `jax.enable_x64` for a float64 reference).
  """
  h, head = jnp.asarray(student_hidden), jnp.asarray(student_head)
  ct = jnp.promote_types(jnp.result_type(h, head), jnp.float32)
  z = jnp.dot(h.astype(ct), head.astype(ct))  # [..., V]
  if student_bias is not None:
    z = z + jnp.asarray(student_bias).astype(ct)
  if _is_pairs(teachers):
    cast = lambda x: jnp.asarray(x).astype(ct)
    zt = jnp.stack(
      [cast(t[0]) @ cast(t[1]) + (cast(t[2]) if len(t) == 3 else 0.0) for t in teachers]
    )  # [K, ..., V]
  else:
    zt = jnp.asarray(teachers).astype(ct)  # [K, ..., V]
  loss = _reference_loss(
    z,
    jax.lax.stop_gradient(zt),
    temperatures,
    weights,
    student_temperature,
    operator,
    divergence,
    beta,
  )
  return loss if where is None else jnp.where(where, loss, 0.0)


def _reference_loss(z, zt, temperatures, weights, ts, operator, divergence, beta):
  """T_S² · D per row in z's precision (fused_kd_loss_reference, without its f32 casts)."""
  k = zt.shape[0]
  t = jnp.broadcast_to(jnp.asarray(temperatures, z.dtype), (k,)).reshape((k,) + (1,) * (z.ndim))
  log_p = jax.nn.log_softmax(zt / t, axis=-1)  # [K, ..., V]
  wt = jnp.asarray(weights, z.dtype)
  wt = wt.reshape(wt.shape + (1,) * (zt.ndim - wt.ndim))
  if operator == "linear":
    log_q = jax.nn.logsumexp(log_p, axis=0, b=jnp.broadcast_to(wt, log_p.shape))
  else:
    log_q = jax.nn.log_softmax(jnp.sum(jnp.where(wt == 0, 0.0, wt * log_p), axis=0), axis=-1)
  ts = jnp.asarray(ts, z.dtype)
  log_ps = jax.nn.log_softmax(z / ts, axis=-1)
  if divergence == "forward_kl":
    dv = kl_divergence(log_q, log_ps)
  elif divergence == "reverse_kl":
    dv = kl_divergence(log_ps, log_q)
  else:
    dv = generalized_jsd(log_q, log_ps, beta)
  return ts**2 * dv
