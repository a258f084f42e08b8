"""Tests for mtkd_jax.kernels: XLA path, interpret-mode Pallas, lowering, sharding, memory."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import PartitionSpec as P

from mtkd_jax import losses, operators
from mtkd_jax.kernels import (
  BlockSizes,
  _pallas_kd,
  fused_kd,
  fused_kd_loss,
  fused_kd_loss_reference,
  fused_kd_loss_vocab_parallel,
  fused_mixture,
  fused_mixture_reference,
)

OPS = ("linear", "geometric")
SMALL = BlockSizes(block_rows=8, block_vocab=256)  # interpret mode: several ragged blocks


def _inputs(seed, k, batch, v, dtype=jnp.float32, scale=3.0, per_row=True):
  ks = jax.random.split(jax.random.key(seed), 4)
  zt = (scale * jax.random.normal(ks[0], (k, *batch, v))).astype(dtype)
  zs = (scale * jax.random.normal(ks[1], (*batch, v))).astype(dtype)
  w_shape = (k, *batch) if per_row else (k,)
  w = jax.nn.softmax(jax.random.normal(ks[2], w_shape), axis=0)
  temps = jax.random.uniform(ks[3], (k,), minval=0.5, maxval=2.0)
  return zs, zt, temps, w


def _close(actual, expected, rtol):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert np.all(np.isfinite(actual)), actual
  scale = max(np.abs(expected).max(), 1e-6)
  np.testing.assert_allclose(actual, expected, atol=rtol * scale, rtol=rtol)


def _check(zs, zt, temps, w, *, op, ts=1.5, rtol=2e-5, grad_rtol=None, **kw):
  """Forward and gradient (with a random row cotangent) against the plain-jnp reference."""
  args = dict(temperatures=temps, weights=w, student_temperature=ts, operator=op)
  ct = jax.random.uniform(jax.random.key(7), zs.shape[:-1], minval=0.5, maxval=1.5)
  ours = lambda s: fused_kd_loss(s, zt, **args, **kw)
  ref = lambda s: fused_kd_loss_reference(s, zt, **args)
  out, vjp = jax.vjp(jax.jit(ours), zs)
  ref_out, ref_vjp = jax.vjp(ref, zs)
  _close(out, ref_out, rtol)
  (g,), (g_ref,) = vjp(ct), ref_vjp(ct)
  assert g.dtype == zs.dtype and g.shape == zs.shape
  _close(g, g_ref, grad_rtol or rtol)
  return out, g


# ----------------------------------------------------------------------------- XLA path


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("v", [700, 16384])  # plain row reductions; lane-blocked (V % 128 == 0)
def test_xla_matches_reference(op, dtype, v):
  zs, zt, temps, w = _inputs(0, 3, (2, 3), v, dtype)
  bf16 = dtype == jnp.bfloat16
  _check(zs, zt, temps, w, op=op, implementation="xla", grad_rtol=1e-2 if bf16 else 2e-5)


@pytest.mark.parametrize("t", [1e-3, 1.0, 1e3])
def test_xla_row_stats_online_over_chunks(t):
  """The XLA stats pass's online max / Σ exp over vocabulary chunks (several chunks, a ragged
  tail, −inf entries and all −inf rows, logits ±1e4) against a float64 NumPy reference."""
  x = jax.random.uniform(jax.random.key(8), (3, 5, 1000), minval=-1e4, maxval=1e4)
  x = x.at[0, 1, :].set(-jnp.inf).at[1, :, 300:700].set(-jnp.inf)
  x = x.at[2, 2, 950].set(2e4)  # the row max sits in the ragged tail: the sum is rescaled
  m, se = fused_kd._row_max_sumexp(x, jnp.full((3, 1), t), chunk_bytes=4 * 15 * 128)  # C=128
  xn = np.asarray(x, np.float64)
  m_ref = xn.max(-1)
  shift = np.where(np.isfinite(m_ref), m_ref, 0.0)
  se_ref = np.exp((xn - shift[..., None]) / t).sum(-1)
  np.testing.assert_array_equal(np.asarray(m), m_ref.astype(np.float32))
  np.testing.assert_allclose(np.asarray(se), se_ref, rtol=1e-5)
  assert float(se[0, 1]) == 0.0 and np.all(np.asarray(se)[np.isfinite(m_ref)] >= 1.0)


@pytest.mark.parametrize("op", OPS)
def test_xla_chunked_stats_path_matches_reference(op):
  """Rows large enough that the stats pass loops over vocabulary chunks (V = 2·C + a tail)."""
  zs, zt, temps, w = _inputs(9, 2, (16,), 140_000)
  _check(zs, zt, temps, w, op=op, implementation="xla")


@pytest.mark.parametrize("op", OPS)
def test_xla_under_vmap_matches_reference(op):
  """vmap batches the data-dependent predicate of the XLA path's fusion boundary (a cond
  becomes a select of its two branches): values and gradients must not change."""
  zs, zt, temps, w = _inputs(5, 3, (4, 2), 384, per_row=False)
  kw = dict(temperatures=temps, weights=w, student_temperature=1.5, operator=op)
  ours = lambda s, t: fused_kd_loss(s, t, implementation="xla", **kw).sum()
  ref = lambda s, t: fused_kd_loss_reference(s, t, **kw).sum()
  batched = lambda f: jax.jit(jax.vmap(jax.value_and_grad(f), in_axes=(0, 1)))
  (out, g), (ref_out, ref_g) = batched(ours)(zs, zt), batched(ref)(zs, zt)
  _close(out, ref_out, 2e-5)
  _close(g, ref_g, 2e-5)


def test_xla_empty_batch():
  zs, zt = jnp.zeros((0, 10)), jnp.zeros((2, 0, 10))
  f = lambda s: fused_kd_loss(s, zt, temperatures=[1.0, 2.0], weights=[0.5, 0.5]).sum()
  loss, g = jax.value_and_grad(f)(zs)
  assert float(loss) == 0.0 and g.shape == (0, 10)


@pytest.mark.parametrize("op", OPS)
def test_xla_global_weights_k1_and_no_scaling(op):
  zs, zt, temps, w = _inputs(1, 1, (4,), 300, per_row=False)
  _check(zs, zt, temps, w, op=op, implementation="xla")
  kw = dict(temperatures=temps, weights=w, operator=op, student_temperature=2.0)
  a = fused_kd_loss(zs, zt, temperature_sq_scaling=False, implementation="xla", **kw)
  b = fused_kd_loss(zs, zt, implementation="xla", **kw)
  np.testing.assert_allclose(4.0 * a, b, rtol=1e-6)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("op", OPS)
def test_extreme_logits_and_temperatures(impl, op):
  """Logits ±1e4, temperatures 1e-3 and 1e3, masked (−inf) teacher tokens: finite, exact."""
  ks = jax.random.split(jax.random.key(2), 3)
  zt = jax.random.uniform(ks[0], (2, 4, 300), minval=-1e4, maxval=1e4)
  zt = zt.at[:, :, :7].set(-jnp.inf).at[0, 1, 10:20].set(-jnp.inf)  # masked tokens
  zs = jax.random.uniform(ks[1], (4, 300), minval=-1e4, maxval=1e4)
  w = jnp.array([0.3, 0.7])
  kw = dict(implementation=impl, block_sizes=SMALL if impl == "pallas" else None)
  for ts in (1e-3, 1e3):
    out, _ = _check(zs, zt, jnp.array([1e-3, 1e3]), w, op=op, ts=ts, rtol=1e-4, **kw)
    assert np.all(np.asarray(out) >= 0)


def test_matches_core_operators_and_mixture_kd():
  zs, zt, temps, w = _inputs(3, 3, (5,), 200)
  for op, fn in (("linear", operators.linear), ("geometric", operators.geometric)):
    log_q = fn(zt, temperatures=temps, weights=w)
    ref_q = fused_mixture_reference(zt, temperatures=temps, weights=w, operator=op)
    _close(ref_q, log_q, 1e-5)
    _close(fused_mixture(zt, temperatures=temps, weights=w, operator=op), log_q, 1e-5)
    expected = losses.mixture_kd(zs, log_q, student_temperature=1.7)
    kw = dict(temperatures=temps, weights=w, operator=op, student_temperature=1.7)
    _close(fused_kd_loss_reference(zs, zt, **kw), expected, 1e-5)
    _close(fused_kd_loss(zs, zt, implementation="xla", **kw), expected, 1e-5)


def test_where_mask_zeroes_loss_and_gradient():
  zs, zt, temps, w = _inputs(4, 2, (4,), 128)
  mask = jnp.array([True, False, True, False])
  f = lambda s: fused_kd_loss(s, zt, temperatures=temps, weights=w, where=mask).sum()
  loss, g = jax.value_and_grad(f)(zs)
  assert float(loss) > 0
  assert np.all(np.asarray(g)[~np.asarray(mask)] == 0) and np.any(np.asarray(g)[0] != 0)


# ----------------------------------------------------------------------------- Pallas (interpret)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_interpret_two_pass(op, dtype):
  """V = 700 over 256-wide blocks (ragged), B = 10 rows over 8-row blocks (ragged)."""
  zs, zt, temps, w = _inputs(5, 3, (10,), 700, dtype)
  bf16 = dtype == jnp.bfloat16
  kw = dict(implementation="pallas", block_sizes=SMALL, interpret=True)
  _check(zs, zt, temps, w, op=op, grad_rtol=1e-2 if bf16 else 2e-5, **kw)


@pytest.mark.parametrize("op", OPS)
def test_pallas_interpret_one_pass_k1_global_weights(op):
  zs, zt, temps, w = _inputs(6, 1, (2, 3), 200, per_row=False)  # V <= block: fused kernel
  _check(zs, zt, temps, w, op=op, implementation="pallas", block_sizes=SMALL, interpret=True)


@pytest.mark.parametrize("op", OPS)
def test_pallas_mixture_interpret(op):
  _, zt, temps, w = _inputs(7, 3, (5,), 300)
  ref = fused_mixture_reference(zt, temperatures=temps, weights=w, operator=op)
  out = fused_mixture(
    zt, temperatures=temps, weights=w, operator=op, implementation="pallas", block_sizes=SMALL
  )
  _close(out, ref, 1e-5)


@pytest.mark.parametrize("op", OPS)
def test_gpu_row_kernel_interpret(op):
  """The Triton row kernel's math, run through the Pallas interpreter."""
  zs, zt, temps, w = _inputs(8, 3, (4,), 700)
  params = jnp.concatenate([temps, jnp.array([2.0, 1.0])])  # T_k, T_S, gscale
  kl, d = _pallas_kd._gpu_kd(
    params,
    zt,
    zs,
    w,
    op=op,
    bs=BlockSizes(1, 256),
    with_grad=True,
    combine=_pallas_kd._combiner(None),
    interpret=True,
  )
  kw = dict(temperatures=temps, weights=w, student_temperature=2.0, operator=op)
  ref = lambda s: fused_kd_loss_reference(s, zt, temperature_sq_scaling=False, **kw)
  _close(kl, ref(zs), 1e-5)
  _close(d / 2.0, jax.grad(lambda s: ref(s).sum())(zs), 1e-5)  # ∂KL/∂z_S = (p − q)/T_S


# ----------------------------------------------------------------------------- lowering


def _avals(k=3, b=16, v=4096 + 256, dtype=jnp.bfloat16):
  return (
    jax.ShapeDtypeStruct((b, v), dtype),
    jax.ShapeDtypeStruct((k, b, v), dtype),
    jax.ShapeDtypeStruct((k,), jnp.float32),
    jax.ShapeDtypeStruct((k, b), jnp.float32),
  )


def _value_and_grad(op):
  def f(zs, zt, temps, w):
    loss = lambda s: fused_kd_loss(
      s, zt, temperatures=temps, weights=w, operator=op, implementation="pallas", interpret=False
    ).sum()
    return jax.value_and_grad(loss)(zs)

  return jax.jit(f)


@pytest.mark.parametrize("op", OPS)
def test_tpu_export_contains_mosaic_kernels(op):
  module = export.export(_value_and_grad(op), platforms=["tpu"])(*_avals()).mlir_module()
  assert module.count("tpu_custom_call") == 2  # stats pass + loss/gradient pass
  one_block = _avals(v=1000)  # V <= block_vocab: one fused kernel, one pass
  module = export.export(_value_and_grad(op), platforms=["tpu"])(*one_block).mlir_module()
  assert module.count("tpu_custom_call") == 1


@pytest.mark.parametrize("op", OPS)
def test_cuda_lowering_of_triton_kernels(op):
  text = _value_and_grad(op).trace(*_avals()).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 2
  assert "tpu_custom_call" not in text


def test_block_sizes_validation():
  with pytest.raises(ValueError, match="block_rows % 8"):
    BlockSizes(12, 256).validate("tpu")
  with pytest.raises(ValueError, match="powers of two"):
    BlockSizes(1, 300).validate("gpu")
  with pytest.raises(ValueError, match="positive"):
    BlockSizes(0, 128)
  assert BlockSizes.get_default("tpu").validate("tpu").block_vocab % 128 == 0


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("op", OPS)
def test_xla_value_and_grad_has_no_kbv_temporary(op):
  k, b, v = 4, 64, 32768
  temps, w = jnp.array([1.0, 2.0, 0.5, 1.5]), jnp.full((k, b), 1.0 / k)
  f = lambda s, t: fused_kd_loss(s, t, temperatures=temps, weights=w, operator=op).mean()
  zs, zt = jax.ShapeDtypeStruct((b, v), jnp.float32), jax.ShapeDtypeStruct((k, b, v), jnp.float32)
  temp = jax.jit(jax.value_and_grad(f)).lower(zs, zt).compile().memory_analysis()
  assert temp.temp_size_in_bytes <= 3 * b * v * 4 + (1 << 20), temp.temp_size_in_bytes
  # The naive formulation does hold K·B·V buffers: the check can fail.
  naive = lambda s, t: losses.mixture_kd(s, operators.linear(t, temperatures=temps, weights=w))
  naive_temp = jax.jit(jax.value_and_grad(lambda s, t: naive(s, t).mean())).lower(zs, zt)
  assert naive_temp.compile().memory_analysis().temp_size_in_bytes > k * b * v * 4


# ----------------------------------------------------------------------------- vocab-parallel


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("op", OPS)
def test_vocab_parallel_equals_unsharded(impl, op):
  mesh = jax.make_mesh((8,), ("vocab",))
  zs, zt, temps, w = _inputs(9, 3, (4,), 8 * 160)
  zt = zt.at[:, :, 5].set(-jnp.inf)
  kw = dict(temperatures=temps, weights=w, student_temperature=1.5, operator=op)
  block = BlockSizes(8, 128) if impl == "pallas" else None
  sharded = lambda s: fused_kd_loss_vocab_parallel(
    s, zt, mesh=mesh, axis_name="vocab", implementation=impl, block_sizes=block, **kw
  )
  ct = jnp.arange(1.0, 5.0)
  out, vjp = jax.vjp(jax.jit(sharded), zs)
  ref_out, ref_vjp = jax.vjp(lambda s: fused_kd_loss(s, zt, implementation="xla", **kw), zs)
  _close(out, ref_out, 2e-5)
  (g,), (g_ref,) = vjp(ct), ref_vjp(ct)
  _close(g, g_ref, 2e-5)


def test_axis_name_inside_user_shard_map():
  mesh = jax.make_mesh((8,), ("v",), axis_types=(jax.sharding.AxisType.Explicit,))
  zs, zt, temps, w = _inputs(10, 2, (3,), 8 * 64)
  kw = dict(temperatures=temps, weights=w, implementation="xla")

  @functools.partial(
    jax.shard_map, mesh=mesh, in_specs=(P(None, "v"), P(None, None, "v")), out_specs=P()
  )
  def local(s, t):
    return fused_kd_loss(s, t, axis_name="v", **kw)

  put = lambda x, spec: jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, spec))
  zs_s, zt_s = put(zs, P(None, "v")), put(zt, P(None, None, "v"))
  loss, g = jax.jit(jax.value_and_grad(lambda s: local(s, zt_s).sum()))(zs_s)
  ref, g_ref = jax.value_and_grad(lambda s: fused_kd_loss(s, zt, **kw).sum())(zs)
  _close(loss, ref, 2e-5)
  _close(g, g_ref, 2e-5)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(teacher_logits=jnp.ones((2, 4, 9))), r"teacher_logits.*shape"),
    (dict(teacher_logits=jnp.ones((4,))), r"teacher_logits.*shape"),
    (dict(student_logits=jnp.ones((4, 0)), teacher_logits=jnp.ones((2, 4, 0))), r"V >= 1.*4, 0"),
    (dict(temperatures=jnp.ones((3,))), r"temperatures.*\(3,\)"),
    (dict(weights=jnp.ones((2, 5))), r"weights.*\(2, 5\)"),
    (dict(operator="power"), "operator"),
    (dict(implementation="cuda"), "implementation"),
    (dict(where=jnp.ones((3,), bool)), r"where.*\(3,\)"),
    (dict(temperatures=jnp.array([1.0, 0.0])), r"temperatures must be > 0"),
    (dict(student_temperature=-1.0), r"student_temperature must be > 0"),
  ],
)
def test_bad_inputs_raise_value_error(kwargs, match):
  args = dict(
    student_logits=jnp.ones((4, 8)),
    teacher_logits=jnp.ones((2, 4, 8)),
    temperatures=jnp.ones((2,)),
    weights=jnp.full((2,), 0.5),
  )
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    fused_kd_loss(args.pop("student_logits"), args.pop("teacher_logits"), **args)


# ----------------------------------------------------------------------------- auto fallback


@pytest.fixture
def fake_gpu(monkeypatch):
  """`auto` sees a GPU (Pallas, not interpreted) while the code runs on the CPU devices."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  fused_kd._pallas_compile_error.cache_clear()
  yield
  fused_kd._pallas_compile_error.cache_clear()


def _fallback_case(**kw):
  zs, zt, temps, w = _inputs(11, 2, (4,), 300)
  args = dict(temperatures=temps, weights=w, student_temperature=1.5, **kw)
  expected = fused_kd_loss(zs, zt, implementation="xla", **args)
  return (lambda impl: fused_kd_loss(zs, zt, implementation=impl, **args)), expected


def test_auto_falls_back_to_xla_when_pallas_fails_to_lower(fake_gpu):
  """On the CPU the un-interpreted kernel has no lowering (a real failure, not a mock): one
  warning naming it, the XLA result, and no second warning for the same shapes."""
  loss, expected = _fallback_case()
  with pytest.warns(RuntimeWarning, match=r"Pallas kernel failed.*NotImplementedError") as rec:
    out = loss("auto")
    out_jit = jax.jit(lambda: loss("auto"))()
  assert len(rec) == 1, [str(r.message) for r in rec]
  _close(out, expected, 1e-6)
  _close(out_jit, expected, 1e-6)
  with pytest.raises(NotImplementedError, match="platform cpu"):
    loss("pallas")


def test_auto_fallback_names_a_forced_compile_error(fake_gpu, monkeypatch):
  def fail(*args, **kwargs):
    raise RuntimeError("Triton: out of shared memory (forced)\nsecond line")

  monkeypatch.setattr(_pallas_kd, "pallas_kd", fail)
  loss, expected = _fallback_case(operator="geometric")
  match = r"RuntimeError: Triton: out of shared memory \(forced\)\)"  # first line only
  with pytest.warns(RuntimeWarning, match=match):
    out = loss("auto")
  _close(out, expected, 1e-6)
  with pytest.raises(RuntimeError, match="out of shared memory"):
    loss("pallas")


def test_auto_keeps_pallas_when_it_compiles_vocab_parallel(fake_gpu, monkeypatch):
  """The probe compiles the kernel at the local vocabulary size, outside the mesh; when it
  succeeds (here: the kernel interpreted), auto runs Pallas, with no warning."""
  calls = []
  pallas_kd = _pallas_kd.pallas_kd

  def interpreted(*args, **kwargs):
    calls.append(args[1].shape)  # teachers [K, B, V_local]
    return pallas_kd(*args, **{**kwargs, "interpret": True})

  monkeypatch.setattr(_pallas_kd, "pallas_kd", interpreted)
  mesh = jax.make_mesh((8,), ("vocab",))
  zs, zt, temps, w = _inputs(12, 2, (4,), 8 * 128)
  kw = dict(temperatures=temps, weights=w, student_temperature=1.5)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = fused_kd_loss_vocab_parallel(zs, zt, mesh=mesh, axis_name="vocab", **kw)
  assert calls and all(shape == (2, 4, 128) for shape in calls), calls
  assert fused_kd._pallas_compile_error.cache_info().currsize == 1
  _close(out, fused_kd_loss(zs, zt, implementation="xla", **kw), 2e-5)


# ----------------------------------------------------------------------------- divergences

DIVS = ("forward_kl", "reverse_kl", "jsd")


def _np_kd(zs, zt, temps, w, ts, op, div, beta):
  """Independent float64 NumPy: per-row T_S²·D(q, p_S) and ∂/∂z_S from the analytic formulas
  (forward: T_S (p − q); reverse: T_S p (log p − log q − KL(p ‖ q)); JSD:
  (1 − β) T_S p (log p − log m − KL(p ‖ m)))."""
  zs, zt = np.asarray(zs, np.float64), np.asarray(zt, np.float64)
  temps, w = np.asarray(temps, np.float64), np.asarray(w, np.float64)

  def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

  log_pk = log_softmax(zt / temps[:, None, None])  # [K, B, V]
  wk = w.reshape(w.shape + (1,) * (3 - w.ndim))
  if op == "linear":
    log_q = np.log(np.sum(wk * np.exp(log_pk), 0))
  else:
    log_q = log_softmax(np.sum(wk * log_pk, 0))
  q, log_p = np.exp(log_q), log_softmax(zs / ts)
  p = np.exp(log_p)
  if div == "forward_kl":
    val, g = np.sum(q * (log_q - log_p), -1), p - q
  elif div == "reverse_kl":
    val = np.sum(p * (log_p - log_q), -1)
    g = p * (log_p - log_q - val[:, None])
  else:
    log_m = np.log(beta * q + (1 - beta) * p)
    kl_pm = np.sum(p * (log_p - log_m), -1)
    val = beta * np.sum(q * (log_q - log_m), -1) + (1 - beta) * kl_pm
    g = (1 - beta) * p * (log_p - log_m - kl_pm[:, None])
  return ts**2 * val, ts * g


@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
  "impl, block", [("xla", None), ("pallas", SMALL), ("pallas", BlockSizes(8, 1024))]
)
def test_divergences_match_float64_numpy(div, op, impl, block):
  """Every divergence, operator and path (XLA; Pallas two/three-pass with ragged blocks;
  Pallas one block per row) against the float64 NumPy values and analytic gradients."""
  zs, zt, temps, w = _inputs(11, 3, (6,), 700)
  kw = dict(temperatures=temps, weights=w, student_temperature=1.7, operator=op)
  f = lambda s: fused_kd_loss(
    s, zt, divergence=div, beta=0.3, implementation=impl, block_sizes=block, **kw
  )
  out, g = jax.jit(jax.value_and_grad(lambda s: f(s).sum()))(zs)
  val, g_ref = _np_kd(zs, zt, temps, w, 1.7, op, div, 0.3)
  _close(out, val.sum(), 1e-5)
  _close(f(zs), val, 2e-5)
  _close(g, g_ref, 2e-5)


@pytest.mark.parametrize("div", ["reverse_kl", "jsd"])
def test_gpu_row_kernel_divergences_interpret(div):
  zs, zt, temps, w = _inputs(12, 2, (4,), 700)
  params = jnp.concatenate([temps, jnp.array([2.0, 1.0])])  # T_k, T_S, gscale
  kl, d = _pallas_kd._gpu_kd(
    params,
    zt,
    zs,
    w,
    op="linear",
    bs=BlockSizes(1, 256),
    with_grad=True,
    combine=_pallas_kd._combiner(None),
    interpret=True,
    div=div,
    beta=0.6,
  )
  val, g_ref = _np_kd(zs, zt, temps, w, 2.0, "linear", div, 0.6)
  _close(kl * 4.0, val, 1e-5)  # the kernels return D unscaled and ∂D/∂u
  _close(d * 2.0, g_ref, 1e-5)


@pytest.mark.parametrize("div", ["reverse_kl", "jsd"])
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_divergences_extreme_logits_and_temperatures(div, impl):
  """Logits ±1e4, T 1e-3 and 1e3: log q is computed in log space, so the reverse KL stays
  finite where q underflows in float32; matches float64."""
  ks = jax.random.split(jax.random.key(13), 2)
  zt = jax.random.uniform(ks[0], (2, 4, 300), minval=-1e4, maxval=1e4)
  zs = jax.random.uniform(ks[1], (4, 300), minval=-1e4, maxval=1e4)
  temps, w = jnp.array([1e-3, 1e3]), jnp.array([0.3, 0.7])
  for ts in (1e-3, 1e3):
    kw = dict(temperatures=temps, weights=w, student_temperature=ts, divergence=div)
    f = lambda s, kw=kw: fused_kd_loss(
      s, zt, implementation=impl, block_sizes=SMALL if impl == "pallas" else None, **kw
    )
    g = jax.grad(lambda s, f=f: f(s).sum())(zs)
    val, g_ref = _np_kd(zs, zt, temps, w, ts, "linear", div, 0.5)
    _close(f(zs), val, 1e-4)
    _close(g, g_ref, 1e-3)


@pytest.mark.parametrize("div", ["reverse_kl", "jsd"])
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_vocab_parallel_divergences_equal_unsharded(div, impl):
  mesh = jax.make_mesh((8,), ("vocab",))
  zs, zt, temps, w = _inputs(14, 3, (4,), 8 * 160)
  kw = dict(temperatures=temps, weights=w, student_temperature=1.5, divergence=div)
  block = BlockSizes(8, 128) if impl == "pallas" else None
  sharded = lambda s: fused_kd_loss_vocab_parallel(
    s, zt, mesh=mesh, axis_name="vocab", implementation=impl, block_sizes=block, **kw
  )
  ct = jnp.arange(1.0, 5.0)
  out, vjp = jax.vjp(jax.jit(sharded), zs)
  ref_out, ref_vjp = jax.vjp(lambda s: fused_kd_loss(s, zt, implementation="xla", **kw), zs)
  _close(out, ref_out, 2e-5)
  _close(vjp(ct)[0], ref_vjp(ct)[0], 2e-5)


def _div_value_and_grad(div):
  def f(zs, zt, temps, w):
    loss = lambda s: fused_kd_loss(
      s,
      zt,
      temperatures=temps,
      weights=w,
      divergence=div,
      implementation="pallas",
      interpret=False,
    ).sum()
    return jax.value_and_grad(loss)(zs)

  return jax.jit(f)


@pytest.mark.parametrize("div", ["reverse_kl", "jsd"])
def test_divergence_kernels_lower_for_tpu_and_cuda(div):
  """Reverse KL / JSD: stats, loss-and-R, gradient passes (three kernels) on both targets."""
  module = export.export(_div_value_and_grad(div), platforms=["tpu"])(*_avals()).mlir_module()
  assert module.count("tpu_custom_call") == 3
  one_block = export.export(_div_value_and_grad(div), platforms=["tpu"])(*_avals(v=1000))
  assert one_block.mlir_module().count("tpu_custom_call") == 1
  text = _div_value_and_grad(div).trace(*_avals()).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 3


@pytest.mark.parametrize("div", ["reverse_kl", "jsd"])
def test_xla_divergences_have_no_kbv_temporary(div):
  """Compiled temporaries of value and gradient do not grow with K: a few [B, V] row buffers
  (reverse KL 2, JSD 4 with the non-finite policy's selects), never a [K, B, V] one."""
  b, v = 64, 32768

  def temp_bytes(k):
    temps, w = jnp.linspace(0.5, 2.0, k), jnp.full((k, b), 1.0 / k)
    f = lambda s, t: fused_kd_loss(s, t, temperatures=temps, weights=w, divergence=div).mean()
    zs, zt = jax.ShapeDtypeStruct((b, v), jnp.float32), jax.ShapeDtypeStruct((k, b, v), jnp.float32)
    compiled = jax.jit(jax.value_and_grad(f)).lower(zs, zt).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(2), temp_bytes(8)
  assert large - small < (1 << 20), (small, large)  # 6 more teachers: < 1 MiB more
  assert large <= 4 * b * v * 4 + (1 << 20), large


def test_divergence_bad_inputs():
  zs, zt = jnp.ones((4, 8)), jnp.ones((2, 4, 8))
  kw = dict(temperatures=[1.0, 1.0], weights=[0.5, 0.5])
  with pytest.raises(ValueError, match="divergence must be one of"):
    fused_kd_loss(zs, zt, divergence="js", **kw)
  for beta in (0.0, 1.0, -0.5, 2.0):
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\)"):
      fused_kd_loss(zs, zt, divergence="jsd", beta=beta, **kw)
