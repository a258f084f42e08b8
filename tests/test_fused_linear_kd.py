"""Tests for kernels.fused_linear_kd: values and gradients (h, W, b) against the materialising
reference and float64, chunking, masks, teachers as logits or pairs, Pallas (interpret),
lowering, sharding, and compiled memory."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtkd_jax.kernels import (
  BlockSizes,
  _pallas_kd,
  default_token_chunk,
  fused_kd,
  fused_linear_kd_loss,
  fused_linear_kd_loss_reference,
)

DIVS = ("forward_kl", "reverse_kl", "jsd")


def _problem(seed, n=37, d=16, v=300, k=3, dtype=jnp.float32, pairs=True, scale=1.0):
  """Fresh random h [n, d], W [d, V], b [V], teachers (widths 8, 12, 16, ...), w [K, n], T."""
  ks = iter(jax.random.split(jax.random.key(seed), 2 * k + 8))
  rnd = lambda shape, s=1.0: s * jax.random.normal(next(ks), shape)
  h = (scale * rnd((n, d))).astype(dtype)
  head = rnd((d, v), 0.5).astype(dtype)
  bias = rnd((v,), 0.5).astype(dtype)
  if pairs:
    teachers = [
      ((scale * rnd((n, 8 + 4 * i))).astype(dtype), rnd((8 + 4 * i, v), 0.4).astype(dtype))
      for i in range(k)
    ]
  else:
    teachers = rnd((k, n, v), 3.0).astype(dtype)
  w = jax.nn.softmax(rnd((k, n)), axis=0)
  temps = jax.random.uniform(next(ks), (k,), minval=0.5, maxval=2.0)
  mask = jax.random.uniform(next(ks), (n,)) > 0.25
  ct = jax.random.uniform(next(ks), (n,), minval=0.5, maxval=1.5)
  return dict(h=h, head=head, bias=bias, teachers=teachers, w=w, temps=temps, mask=mask, ct=ct)


def _close(actual, expected, rtol, what=""):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert np.all(np.isfinite(actual)), what
  scale = max(np.abs(expected).max(), 1e-6)
  np.testing.assert_allclose(actual, expected, atol=rtol * scale, rtol=rtol, err_msg=what)


def _vjps(fn, pr, ct):
  out, vjp = jax.vjp(fn, pr["h"], pr["head"], pr["bias"])
  return out, vjp(ct)


def _compare(pr, *, rtol=2e-5, grad_rtol=None, uniform_ct=False, ref_x64=False, **kw):
  """Value and the gradients w.r.t. (h, W, b) of ours (jit) against the reference."""
  args = dict(temperatures=pr["temps"], weights=pr["w"], where=pr["mask"], **kw)
  ref_args = {
    k: v
    for k, v in args.items()
    if k not in ("token_chunk", "implementation", "block_sizes", "interpret")
  }
  ours = lambda h, w, b: fused_linear_kd_loss(h, w, pr["teachers"], student_bias=b, **args)
  ref = lambda h, w, b: fused_linear_kd_loss_reference(h, w, teachers, student_bias=b, **ref_args)
  ct = jnp.ones_like(pr["ct"]) * 0.7 if uniform_ct else pr["ct"]
  out, grads = _vjps(jax.jit(ours), pr, ct)
  if ref_x64:
    with jax.enable_x64(True):
      f64 = lambda x: jnp.asarray(np.asarray(x, np.float64))
      teachers = jax.tree.map(f64, pr["teachers"])
      pr64 = {k: f64(pr[k]) for k in ("h", "head", "bias")}
      ref_args = {**ref_args, "weights": f64(pr["w"]), "temperatures": f64(pr["temps"])}
      ref_out, ref_grads = _vjps(ref, pr64, f64(ct))
      ref_out, ref_grads = np.asarray(ref_out), [np.asarray(g) for g in ref_grads]
  else:
    teachers = jax.tree.map(lambda x: x.astype(jnp.float32), pr["teachers"])
    pr32 = {k: pr[k].astype(jnp.float32) for k in ("h", "head", "bias")}
    ref_out, ref_grads = _vjps(ref, pr32, ct)
  _close(out, ref_out, rtol, "loss")
  mask = np.asarray(pr["mask"])
  assert np.all(np.asarray(out)[~mask] == 0) and np.all(np.asarray(out)[mask] > 0)
  for name, g, g_ref, x in zip(
    ("h", "W", "b"), grads, ref_grads, (pr["h"], pr["head"], pr["bias"]), strict=True
  ):
    assert g.dtype == x.dtype and g.shape == x.shape, name
    _close(g, g_ref, grad_rtol or rtol, f"grad {name}")
  assert np.all(np.asarray(grads[0])[~mask] == 0)  # masked tokens: zero gradient
  return out, grads


# ----------------------------------------------------------------------------- values, gradients


@pytest.mark.parametrize("op", ["linear", "geometric"])
@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("uniform_ct", [False, True])  # second pass / scaled forward gradients
def test_matches_reference_pairs_ragged_chunks(op, div, uniform_ct):
  """N = 37 rows in chunks of 8 (five, the last overlapping the fourth by 3 rows), teachers of
  widths 8, 12, 16 against a student of width 16, padding mask, bias, per-token weights."""
  pr = _problem(0)
  kw = dict(operator=op, divergence=div, beta=0.3, student_temperature=1.5, token_chunk=8)
  _compare(pr, uniform_ct=uniform_ct, **kw)


@pytest.mark.parametrize("div", DIVS)
def test_matches_float64_reference(div):
  pr = _problem(1, n=24)
  _compare(pr, divergence=div, beta=0.7, token_chunk=16, ref_x64=True, rtol=2e-5)


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_teachers_as_logits_k1_to_8(k):
  pr = _problem(2, n=20, k=k, pairs=False)
  pr["w"] = jnp.full((k,), 1.0 / k)  # global weights
  _compare(pr, token_chunk=8, student_temperature=0.7)


@pytest.mark.parametrize("pairs", [True, False])
def test_bfloat16_hidden_and_head(pairs):
  """bf16 inputs against the f32 reference of the same (bf16-rounded) values; gradients in
  bf16 (rounded once, accumulated in f32)."""
  pr = _problem(3, n=40, dtype=jnp.bfloat16, pairs=pairs)
  _compare(pr, token_chunk=16, rtol=1e-2, divergence="jsd")


@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("t", [1e-3, 1e3])
def test_extreme_logits_and_temperatures(div, t):
  """Logits ~±1e4 through large hidden values; T_k and T_S at 1e-3 and 1e3; float64 reference."""
  pr = _problem(4, n=12, d=16, v=200, k=2, scale=1500.0)
  z = np.asarray(pr["h"] @ pr["head"])
  assert np.abs(z).max() > 5e3
  pr["temps"] = jnp.array([1e-3, 1e3])
  pr["mask"] = jnp.ones((12,), bool)
  out, _ = _compare(
    pr,
    divergence=div,
    student_temperature=t,
    token_chunk=8,
    ref_x64=True,
    rtol=1e-4,
    grad_rtol=2e-3,
  )
  assert np.all(np.asarray(out) >= 0)


def test_n_not_multiple_of_chunk_and_default_chunk():
  pr = _problem(5, n=50)
  a = fused_linear_kd_loss(
    pr["h"], pr["head"], pr["teachers"], temperatures=pr["temps"], weights=pr["w"], token_chunk=7
  )
  b = fused_linear_kd_loss(
    pr["h"], pr["head"], pr["teachers"], temperatures=pr["temps"], weights=pr["w"]
  )
  c = fused_linear_kd_loss(
    pr["h"], pr["head"], pr["teachers"], temperatures=pr["temps"], weights=pr["w"], token_chunk=50
  )
  _close(a, c, 1e-6)
  _close(b, c, 1e-6)
  assert default_token_chunk(32768, 4) == 72 and default_token_chunk(131072, 4) == 16
  assert default_token_chunk(1000, 1, n=5) == 5 and default_token_chunk(10**7, 8) == 8


def test_batch_shape_jit_and_vmap():
  """[B, S, d] inputs give [B, S] losses; vmap over a leading axis equals the loop."""
  pr = _problem(6, n=24)
  h3 = pr["h"].reshape(2, 12, 16)
  t3 = [(a.reshape(2, 12, -1), b) for a, b in pr["teachers"]]
  kw = dict(temperatures=pr["temps"], weights=[0.2, 0.3, 0.5], token_chunk=8)
  full = jax.jit(lambda h: fused_linear_kd_loss(h, pr["head"], t3, **kw))(h3)
  assert full.shape == (2, 12)
  per_row = lambda h, th: fused_linear_kd_loss(
    h, pr["head"], [(x, b) for x, (_, b) in zip(th, t3, strict=True)], **kw
  )
  loss_fn = lambda h, th: per_row(h, th).sum()
  th = [a for a, _ in t3]
  v, g = jax.jit(jax.vmap(jax.value_and_grad(loss_fn)))(h3, th)
  ref = jax.vmap(
    jax.value_and_grad(
      lambda h, th: fused_linear_kd_loss_reference(
        h,
        pr["head"],
        [(x, b) for x, (_, b) in zip(th, t3, strict=True)],
        temperatures=pr["temps"],
        weights=[0.2, 0.3, 0.5],
      ).sum()
    )
  )(h3, th)
  _close(v, full.sum(-1), 1e-5)
  _close(v, ref[0], 2e-5)
  _close(g, ref[1], 2e-5)


def test_teacher_bias_triples():
  """(hidden, head, bias) teachers equal (hidden with a ones column, head with the bias row)."""
  pr = _problem(10, n=20)
  biases = [jax.random.normal(jax.random.key(i), (300,)) for i in range(3)]
  triples = [(a, b, c) for (a, b), c in zip(pr["teachers"], biases, strict=True)]
  padded = [
    (jnp.concatenate([a, jnp.ones((20, 1))], 1), jnp.concatenate([b, c[None]], 0))
    for (a, b), c in zip(pr["teachers"], biases, strict=True)
  ]
  kw = dict(temperatures=pr["temps"], weights=pr["w"], token_chunk=8)
  f = lambda t: jax.value_and_grad(lambda h: fused_linear_kd_loss(h, pr["head"], t, **kw).sum())
  (a, ga), (b, gb) = f(triples)(pr["h"]), f(padded)(pr["h"])
  ref = fused_linear_kd_loss_reference(pr["h"], pr["head"], triples, **kw_ref(kw))
  _close(a, b, 1e-5)
  _close(ga, gb, 1e-5)
  _close(a, ref.sum(), 1e-5)
  with pytest.raises(ValueError, match=r"teachers\[1\] bias must be \[V=300\]"):
    fused_linear_kd_loss(
      pr["h"], pr["head"], [triples[0], (*pr["teachers"][1], biases[0][:5])], **kw
    )


def kw_ref(kw):
  return {k: v for k, v in kw.items() if k != "token_chunk"}


def test_where_all_masked_and_empty():
  pr = _problem(7, n=16)
  f = lambda h, w: fused_linear_kd_loss(
    h, w, pr["teachers"], temperatures=pr["temps"], weights=pr["w"], where=jnp.zeros((16,), bool)
  ).sum()
  loss, (gh, gw) = jax.value_and_grad(f, (0, 1))(pr["h"], pr["head"])
  assert float(loss) == 0 and not np.any(np.asarray(gh)) and not np.any(np.asarray(gw))
  empty = fused_linear_kd_loss(
    jnp.ones((0, 4)),
    jnp.ones((4, 9)),
    [(jnp.ones((0, 2)), jnp.ones((2, 9)))],
    temperatures=1.0,
    weights=[1.0],
  )
  assert empty.shape == (0,)


# ----------------------------------------------------------------------------- Pallas (interpret)


@pytest.mark.slow
@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("bv", [128, 512])  # two/three-pass kernels (V = 300 ragged); one block
def test_pallas_interpret_matches_reference(div, bv):
  pr = _problem(8, n=20, v=300)
  _compare(
    pr,
    divergence=div,
    token_chunk=8,
    implementation="pallas",
    interpret=True,
    block_sizes=BlockSizes(8, bv),
    operator="geometric" if bv == 512 else "linear",
  )


# ----------------------------------------------------------------------------- dispatch


@pytest.fixture
def pallas_calls(monkeypatch):
  """Records the teacher shape of every Pallas kernel call (interpreted or not)."""
  calls = []
  pallas_kd = _pallas_kd.pallas_kd

  def spy(*args, **kwargs):
    calls.append(tuple(args[1].shape))  # teachers [K, C, V]
    return pallas_kd(*args, **kwargs)

  monkeypatch.setattr(_pallas_kd, "pallas_kd", spy)
  fused_kd._pallas_compile_error.cache_clear()
  yield calls
  fused_kd._pallas_compile_error.cache_clear()


def test_implementation_is_honoured_per_chunk(pallas_calls):
  """ "xla" and "auto" on the CPU never reach the Pallas kernel; "pallas" (interpreted) runs it
  on the one chunk shape (N = 12: two chunks of 8, the second overlapping); all match the
  reference."""
  pr = _problem(21, n=12, v=200, k=2)
  kw = dict(divergence="jsd", beta=0.4, token_chunk=8, student_temperature=1.3)
  assert jax.default_backend() == "cpu"
  for impl in ("xla", "auto"):
    _compare(pr, implementation=impl, **kw)
    assert pallas_calls == [], impl
  _compare(pr, implementation="pallas", interpret=True, **kw)
  assert {c[1] for c in pallas_calls} == {8}, pallas_calls


def test_auto_falls_back_to_xla_per_chunk_when_pallas_fails(pallas_calls, monkeypatch):
  """`auto` on a (faked) GPU probes the un-interpreted kernel at the chunk shapes, as
  `fused_kd_loss` does: on the CPU it has no lowering, so one warning and the XLA result;
  "pallas" raises instead."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  pr = _problem(22, n=12, v=200, k=2)
  kw = dict(divergence="reverse_kl", token_chunk=8)
  with pytest.warns(RuntimeWarning, match=r"Pallas kernel failed.*NotImplementedError") as rec:
    out, _ = _compare(pr, implementation="auto", **kw)
  assert len(rec) == 1, [str(r.message) for r in rec]
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  _close(out, _compare(pr, implementation="xla", **kw)[0], 1e-6)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(NotImplementedError, match="platform cpu"):
    _compare(pr, implementation="pallas", **kw)


def test_auto_keeps_pallas_per_chunk_when_it_compiles(pallas_calls, monkeypatch):
  """When the probe compiles (here: the kernel forced into interpret mode), `auto` on a GPU
  runs every chunk on Pallas, probing the chunk shape once."""
  spy = _pallas_kd.pallas_kd
  monkeypatch.setattr(
    _pallas_kd, "pallas_kd", lambda *a, **kw: spy(*a, **{**kw, "interpret": True})
  )
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  pr = _problem(23, n=12, v=200, k=2, pairs=False)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _compare(pr, implementation="auto", token_chunk=8, operator="geometric")
  assert fused_kd._pallas_compile_error.cache_info().currsize == 1  # chunks of 8
  assert {c[1] for c in pallas_calls} == {8}, pallas_calls


# ----------------------------------------------------------------------------- lowering


def _pallas_value_and_grad(div):
  def f(h, head, th, tw):
    loss = lambda h, w: fused_linear_kd_loss(
      h,
      w,
      list(zip(th, tw, strict=True)),
      temperatures=[1.0, 2.0],
      weights=[0.5, 0.5],
      divergence=div,
      implementation="pallas",
      interpret=False,
      token_chunk=16,
    ).sum()
    return jax.value_and_grad(loss, (0, 1))(h, head)

  return jax.jit(f)


def _linear_avals(n=40, d=128, v=4096 + 256, dt=jnp.bfloat16):
  sds = jax.ShapeDtypeStruct
  return (
    sds((n, d), dt),
    sds((d, v), dt),
    [sds((n, 64), dt), sds((n, 128), dt)],
    [sds((64, v), dt), sds((128, v), dt)],
  )


@pytest.mark.slow
@pytest.mark.parametrize("div", ["forward_kl", "jsd"])
def test_tpu_export_contains_mosaic_chunk_kernels(div):
  module = export.export(_pallas_value_and_grad(div), platforms=["tpu"])(*_linear_avals())
  text = module.mlir_module()
  # The chunk body (one shape: N = 40 in chunks of 16, the last overlapping), in the forward and
  # in the second pass of the backward, holds the stats and loss kernels (+ one gradient pass
  # for the JSD).
  per_call = 2 if div == "forward_kl" else 3
  assert text.count("tpu_custom_call") == 2 * per_call, text.count("tpu_custom_call")


@pytest.mark.slow
@pytest.mark.parametrize("div", ["forward_kl", "reverse_kl"])
def test_cuda_lowering_of_chunk_kernels(div):
  lowered = _pallas_value_and_grad(div).trace(*_linear_avals()).lower(lowering_platforms=("cuda",))
  text = lowered.as_text()
  per_call = 2 if div == "forward_kl" else 3
  assert text.count("__gpu$xla.gpu.triton") == 2 * per_call
  assert "tpu_custom_call" not in text


# ----------------------------------------------------------------------------- sharding


@pytest.mark.slow
def test_tokens_sharded_over_data_axis_equal_unsharded():
  """Tokens sharded over 8 fake devices: (a) jit with sharded inputs, (b) inside shard_map
  (local chunks, head gradient summed over devices), both equal to one device."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  pr = _problem(9, n=64, v=256)
  kw = dict(temperatures=pr["temps"], weights=[0.5, 0.3, 0.2], divergence="jsd", token_chunk=4)

  def loss(h, w, b, th):
    t = [(x, tw) for x, (_, tw) in zip(th, pr["teachers"], strict=True)]
    return fused_linear_kd_loss(h, w, t, student_bias=b, **kw)

  th = [a for a, _ in pr["teachers"]]
  args = (pr["h"], pr["head"], pr["bias"])
  total = lambda h, w, b, th: (loss(h, w, b, th) * pr["ct"][: h.shape[0]]).sum()
  ref_v, ref_g = jax.value_and_grad(lambda h, w, b: total(h, w, b, th), (0, 1, 2))(*args)

  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  hs, ths = put(pr["h"], P("data")), [put(a, P("data")) for a in th]
  ws, bs = put(pr["head"], P()), put(pr["bias"], P())
  ct_s = put(pr["ct"], P("data"))
  sharded = lambda h, w, b, th: (loss(h, w, b, th) * ct_s).sum()
  v, g = jax.jit(jax.value_and_grad(sharded, (0, 1, 2)))(hs, ws, bs, ths)
  _close(v, ref_v, 1e-5)
  for a, b in zip(g, ref_g, strict=True):
    _close(a, b, 1e-5)

  @functools.partial(
    jax.shard_map, mesh=mesh, in_specs=(P("data"), P(), P(), P("data"), P("data")), out_specs=P()
  )
  def local(h, w, b, th, ct):
    return jax.lax.psum((loss(h, w, b, th) * ct).sum(), "data")

  v2, g2 = jax.jit(jax.value_and_grad(lambda *a: local(*a, ths, ct_s), (0, 1, 2)))(hs, ws, bs)
  _close(v2, ref_v, 1e-5)
  for a, b in zip(g2, ref_g, strict=True):
    _close(a, b, 1e-5)


# ----------------------------------------------------------------------------- memory


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["pairs", "logits"])
def test_compiled_value_and_grad_has_no_nv_temporary(dtype, kind, request):
  """Compile only (nothing runs): at N = 16384, V = 32768, K = 4 every temporary together is
  smaller than one [N, V] array of the inputs' dtype. Growing N from 1024 to 16384 (neither a
  multiple of the default chunk) leaves f32 temporaries within 1.1× (flat in N); with bf16
  inputs it adds at most (K + 4)·ΔN·d f32 bytes (XLA:CPU converts the K + 1 hidden states to
  f32 before the loop), nothing of size N·V. The naive formulation's temporaries exceed
  K·N·V: the check can fail."""
  if kind == "logits" and dtype == jnp.bfloat16:
    request.applymarker(
      pytest.mark.xfail(
        strict=True,
        reason=(
          "known: XLA:CPU copies all [K, N, V] low-precision teacher logits before the chunk "
          "loop (a bf16 copy of 4.3 GB here); teachers as pairs, or f32 logits, have no copy"
        ),
      )
    )
  k, d, v = 4, 256, 32768
  sds = jax.ShapeDtypeStruct

  def avals(n):
    if kind == "pairs":
      t = [(sds((n, d), dtype), sds((d, v), dtype)) for _ in range(k)]
    else:
      t = sds((k, n, v), dtype)
    return sds((n, d), dtype), sds((d, v), dtype), t

  kw = dict(temperatures=jnp.linspace(0.5, 2, k), weights=jnp.full((k,), 0.25))
  ours = lambda h, w, t: fused_linear_kd_loss(h, w, t, **kw).mean()
  temp = lambda f, n: (
    (
      jax.jit(jax.value_and_grad(f, (0, 1))).lower(*avals(n)).compile().memory_analysis()
    ).temp_size_in_bytes
  )
  big, small = temp(ours, 16384), temp(ours, 1024)
  itemsize = jnp.dtype(dtype).itemsize
  assert big < 16384 * v * itemsize, big
  assert big - small <= (k + 4) * (16384 - 1024) * d * 4, (big, small)
  if dtype == jnp.float32:
    assert big <= 1.1 * small, (big, small)

  def naive(h, w, t):
    z = jnp.dot(h, w, preferred_element_type=jnp.float32)
    zt = jnp.stack([a @ b for a, b in t]) if kind == "pairs" else t
    log_q = jax.nn.logsumexp(jax.nn.log_softmax(zt.astype(jnp.float32), -1), 0) - jnp.log(k)
    log_p = jax.nn.log_softmax(z, -1)
    return jnp.sum(jnp.exp(log_q) * (log_q - log_p), -1).mean()

  assert temp(naive, 1024) > k * 1024 * v * itemsize


# ----------------------------------------------------------------------------- validation


def _bad(**over):
  h, head = jnp.ones((2, 3, 4)), jnp.ones((4, 9))
  args = dict(
    student_hidden=h,
    student_head=head,
    teachers=[(jnp.ones((2, 3, 5)), jnp.ones((5, 9)))],
    temperatures=[1.0],
    weights=[1.0],
  )
  args.update(over)
  return fused_linear_kd_loss(
    args.pop("student_hidden"), args.pop("student_head"), args.pop("teachers"), **args
  )


@pytest.mark.parametrize(
  "over, match",
  [
    (dict(student_head=jnp.ones((5, 9))), r"student_head.*\(5, 9\)"),
    (dict(student_head=jnp.ones((4, 0))), r"student_head.*\(4, 0\)"),
    (dict(teachers=[(jnp.ones((2, 4, 5)), jnp.ones((5, 9)))]), r"teachers\[0\] hidden.*2, 4, 5"),
    (dict(teachers=[(jnp.ones((2, 3, 5)), jnp.ones((6, 9)))]), r"teachers\[0\] head.*d_k=5.*6, 9"),
    (dict(teachers=[(jnp.ones((2, 3, 5)), jnp.ones((5, 8)))]), r"teachers\[0\] head.*V=9.*5, 8"),
    (dict(teachers=jnp.ones((1, 2, 3, 8))), r"teachers must be logits.*\(1, 2, 3, 8\)"),
    (dict(student_bias=jnp.ones((8,))), r"student_bias.*\(8,\)"),
    (dict(where=jnp.ones((3,), bool)), r"where.*\(3,\)"),
    (dict(beta=1.0), r"beta must be in \(0, 1\)"),
    (dict(beta=0.0, divergence="jsd"), r"beta must be in \(0, 1\)"),
    (dict(temperatures=[0.0]), r"temperatures must be > 0"),
    (dict(student_temperature=-2.0), r"student_temperature must be > 0"),
    (dict(divergence="kl"), r"divergence must be one of"),
    (dict(operator="power"), r"operator must be one of"),
    (dict(weights=[0.5, 0.5]), r"weights.*\(2,\)"),
    (dict(token_chunk=0), r"token_chunk"),
  ],
)
def test_bad_inputs_raise_value_error(over, match):
  with pytest.raises(ValueError, match=match):
    _bad(**over)
