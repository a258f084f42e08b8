"""The non-finite policy (docs/design.md, "Non-finite inputs"): fault × loss path.

Faults: a NaN teacher logit, a +inf teacher logit, −inf tokens, one teacher row all −inf (absent),
every teacher −inf in a row (none present), a masked row holding NaN. Paths: the composed
operators (linear, geometric), the fused kernel (XLA, Pallas in interpret mode with one and with
two vocabulary blocks), `fused_linear_kd_loss` with teacher logits, `sum_of_kls` and the sparse
targets (top-V, so that they equal the dense ones). Under `jit` every path gives the documented
value and gradient, the same on every path; on concrete inputs NaN and +inf are a ValueError
naming the teacher and the position.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import losses, objectives, operators, sparse, store
from mtkd_jax.kernels import BlockSizes, fused_kd_loss, fused_linear_kd_loss, fused_mixture

B, V, K = 4, 160, 3  # V = 160: two Pallas vocabulary blocks of 128, or one of 256
BAD_ROW = 2


def _inputs(seed):
  ks = jax.random.split(jax.random.key(seed), 4)
  s = 1.5 * jax.random.normal(ks[0], (B, V))
  t = 2.0 * jax.random.normal(ks[1], (K, B, V))
  w = jax.random.dirichlet(ks[2], jnp.ones(K))
  temps = jax.random.uniform(ks[3], (K,), minval=0.5, maxval=2.0)
  return s, t, np.asarray(w, np.float64).round(6), np.asarray(temps)


def _normalised(w):
  w = np.asarray(w, np.float32)
  return w / w.sum()


# ----------------------------------------------------------------------------- the paths
# Each path: f(s, t, w, temps, where) -> per-row loss [B]. `masks` says whether the path itself
# takes the mask before it sees the teachers (the operators see no mask).


def _composed(op, s, t, w, temps, where):
  if where is None:
    obj = objectives.mixture(getattr(operators, op), temperatures=temps, implementation="composed")
    return obj(s, t, w)
  log_q = getattr(operators, op)(t, temperatures=temps, weights=w)
  return losses.mixture_kd(s, log_q, where=where)


def _fused(op, s, t, w, temps, where, *, impl, block):
  kw = dict(implementation=impl, interpret=True, block_sizes=block) if impl == "pallas" else {}
  return fused_kd_loss(s, t, temperatures=temps, weights=w, operator=op, where=where, **kw)


def _linear_kd(op, s, t, w, temps, where):
  # head = I: the student's logits are s exactly, so the loss equals the fused loss's.
  return fused_linear_kd_loss(
    s, jnp.eye(V), t, temperatures=temps, weights=w, operator=op, where=where, token_chunk=3
  )


def _sparse(op, s, t, w, temps, where, *, tail_mode):
  target = getattr(sparse, op)(
    sparse.from_dense(t, V), temperatures=temps, weights=w, tail_mode=tail_mode
  )
  return sparse.sparse_kd_loss(s, target, where=where)


def _sum_of_kls(s, t, w, temps, where):
  if where is None:
    return objectives.sum_of_kls(temperatures=temps)(s, t, w)
  return losses.sum_of_kls(s, t, temperatures=temps, weights=w, where=where)


PATHS = {
  "composed": (_composed, False),
  "fused-xla": (functools.partial(_fused, impl="xla", block=None), True),
  "fused-pallas-1-block": (
    functools.partial(_fused, impl="pallas", block=BlockSizes(8, 256)),
    True,
  ),
  "fused-pallas-2-blocks": (
    functools.partial(_fused, impl="pallas", block=BlockSizes(8, 128)),
    True,
  ),
  "fused-linear-kd": (_linear_kd, True),
  "sparse-uniform": (functools.partial(_sparse, tail_mode="uniform"), False),
  "sparse-bucket": (functools.partial(_sparse, tail_mode="bucket"), False),
}


def _path(name, op):
  fn, masks = PATHS[name]
  return functools.partial(fn, op), masks


def _value_and_grad(f, s, t, w, temps, where, jit=True):
  """Per-row loss [B] and d(Σ loss)/ds [B, V]; t and where are traced (arguments) under jit."""
  vg = jax.value_and_grad(
    lambda s, t, wh: (lambda v: (v.sum(), v))(f(s, t, w, temps, wh)), has_aux=True
  )
  if jit:
    vg = jax.jit(vg)
  (_, v), g = vg(s, t, where)
  return np.asarray(v), np.asarray(g)


# ----------------------------------------------------------------------------- the faults


def _nan(t):
  return t.at[1, BAD_ROW, 5].set(jnp.nan), None


def _pos_inf(t):
  return t.at[1, BAD_ROW, 5].set(jnp.inf), None


def _neg_inf_tokens(t):
  return t.at[2, BAD_ROW, 3:9].set(-jnp.inf).at[0, 1, 100:].set(-jnp.inf), None


def _absent(t):
  return t.at[1, BAD_ROW, :].set(-jnp.inf), None


def _none_present(t):
  return t.at[:, BAD_ROW, :].set(-jnp.inf), None


def _masked_nan(t):
  where = jnp.arange(B) != BAD_ROW
  return t.at[1, BAD_ROW, 5].set(jnp.nan).at[0, BAD_ROW, 7].set(jnp.inf), where


FAULTS = {
  "nan": _nan,
  "+inf": _pos_inf,
  "-inf-tokens": _neg_inf_tokens,
  "teacher-absent": _absent,
  "none-present": _none_present,
  "masked-nan": _masked_nan,
}


def _expected_bad_row(fault, op, s, t, w, temps):
  """(loss, grad) the policy prescribes for row BAD_ROW, or None if only cross-path."""
  if fault in ("nan", "+inf"):
    return np.nan, np.full(V, np.nan)
  if fault in ("none-present", "masked-nan"):
    return 0.0, np.zeros(V)
  if fault == "teacher-absent":  # teacher 1 dropped, weights renormalised over teachers 0, 2
    keep = np.array([0, 2])
    w2 = _normalised(np.asarray(w)[keep])
    f = lambda z: _composed(op, z, t[keep][:, BAD_ROW : BAD_ROW + 1], w2, temps[keep], None)[0]
    loss, g = jax.value_and_grad(f)(s[BAD_ROW : BAD_ROW + 1])
    return float(loss), np.asarray(g)[0]
  return None


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("op", ["linear", "geometric"])
def test_fault_matrix_under_jit(fault, op):
  s, t_clean, w, temps = _inputs(list(FAULTS).index(fault) + (10 if op == "linear" else 20))
  t, where = FAULTS[fault](t_clean)
  clean_ref = _value_and_grad(_path("composed", op)[0], s, t_clean, w, temps, None)
  expected = _expected_bad_row(fault, op, s, t, w, temps)
  results = {}
  for name in PATHS:
    f, _ = _path(name, op)
    v, g = _value_and_grad(f, s, t, w, temps, where)
    results[name] = (v, g)
    others = np.arange(B) != BAD_ROW
    if fault != "-inf-tokens":  # the other rows are untouched by the fault
      np.testing.assert_allclose(v[others], clean_ref[0][others], rtol=2e-5, err_msg=name)
      np.testing.assert_allclose(g[others], clean_ref[1][others], atol=2e-6, err_msg=name)
    assert np.all(np.isfinite(v[others])) and np.all(np.isfinite(g[others])), name
    if expected is not None:
      loss, grad = expected
      if np.isnan(loss):
        assert np.isnan(v[BAD_ROW]) and np.all(np.isnan(g[BAD_ROW])), (name, v, g[BAD_ROW])
      elif loss == 0.0:  # exactly 0, value and gradient
        assert v[BAD_ROW] == 0.0 and np.all(g[BAD_ROW] == 0.0), (name, v, g[BAD_ROW])
      else:
        np.testing.assert_allclose(v[BAD_ROW], loss, rtol=2e-5, err_msg=name)
        np.testing.assert_allclose(g[BAD_ROW], grad, atol=2e-6, err_msg=name)
    else:
      assert np.all(np.isfinite(v)) and np.all(np.isfinite(g)), name
  ref_v, ref_g = results["composed"]
  for name, (v, g) in results.items():  # identical across paths
    np.testing.assert_allclose(v, ref_v, rtol=2e-5, equal_nan=True, err_msg=name)
    np.testing.assert_allclose(g, ref_g, atol=2e-6, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_sum_of_kls_follows_the_policy(fault):
  """L_multi has its own value, but its gradient equals the linear mixture's (λ = w) on every
  fault, and its bad, absent and empty rows follow the policy."""
  s, t_clean, w, temps = _inputs(7)
  t, where = FAULTS[fault](t_clean)
  v, g = _value_and_grad(_sum_of_kls, s, t, w, temps, where)
  _, g_mix = _value_and_grad(_path("composed", "linear")[0], s, t, w, temps, where)
  np.testing.assert_allclose(g, g_mix, atol=2e-6, equal_nan=True)
  if fault in ("nan", "+inf"):
    assert np.isnan(v[BAD_ROW]) and np.all(np.isnan(g[BAD_ROW]))
  elif fault in ("none-present", "masked-nan"):
    assert v[BAD_ROW] == 0.0 and np.all(g[BAD_ROW] == 0.0)
  elif fault == "teacher-absent":
    keep = np.array([0, 2])
    row = slice(BAD_ROW, BAD_ROW + 1)
    ref = losses.sum_of_kls(
      s[row], t[keep][:, row], temperatures=temps[keep], weights=_normalised(w[keep])
    )
    np.testing.assert_allclose(v[BAD_ROW], ref[0], rtol=2e-5)
  assert np.all(np.isfinite(np.delete(v, BAD_ROW))) and np.all(
    np.isfinite(np.delete(g, BAD_ROW, 0))
  )


@pytest.mark.parametrize("fault", ["nan", "+inf"])
@pytest.mark.parametrize("name", [*PATHS, "sum-of-kls"])
def test_concrete_nan_or_pos_inf_is_a_value_error_naming_teacher_and_position(fault, name):
  s, t, w, temps = _inputs(3)
  t, _ = FAULTS[fault](t)
  f = _sum_of_kls if name == "sum-of-kls" else _path(name, "linear")[0]
  with pytest.raises(ValueError, match=rf"teacher 1 has (nan|inf) at position \({BAD_ROW}, 5\)"):
    f(s, t, w, temps, None)


# Eager Pallas (interpret mode, op by op) and the eager chunk loop of the fused linear loss are
# slow; the checks they run are the fused loss's own.
_EAGER = [
  pytest.param(n, marks=pytest.mark.slow) if n.startswith("fused-") and n != "fused-xla" else n
  for n in [*PATHS, "sum-of-kls"]
]


@pytest.mark.parametrize("fault", ["-inf-tokens", "teacher-absent", "none-present", "masked-nan"])
@pytest.mark.parametrize("name", _EAGER)
def test_concrete_inputs_give_what_jit_gives(fault, name):
  """−inf faults (and, on the paths that take the mask, a masked NaN row) are accepted on
  concrete inputs, with the value and gradient of the jitted call."""
  s, t, w, temps = _inputs(5)
  t, where = FAULTS[fault](t)
  f, masks = (_sum_of_kls, True) if name == "sum-of-kls" else _path(name, "geometric")
  if fault == "masked-nan" and not masks:  # the operators see no mask: they check every row
    with pytest.raises(ValueError, match=r"teacher 0 has inf at position \(2, 7\)"):
      f(s, t, w, temps, where)
    return
  eager = _value_and_grad(f, s, t, w, temps, where, jit=False)
  traced = _value_and_grad(f, s, t, w, temps, where)
  np.testing.assert_allclose(eager[0], traced[0], rtol=1e-6)
  np.testing.assert_allclose(eager[1], traced[1], atol=1e-7)


def test_fused_mixture_follows_the_policy():
  _, t, w, temps = _inputs(11)
  t = t.at[1, 0, 5].set(jnp.nan).at[1, 1, :].set(-jnp.inf).at[:, 2, :].set(-jnp.inf)
  for impl in ("xla", "pallas"):
    mix = functools.partial(fused_mixture, temperatures=temps, weights=w, implementation=impl)
    log_q = jax.jit(mix)(t)
    ref = jax.jit(lambda t: operators.linear(t, temperatures=temps, weights=w))(t)
    np.testing.assert_allclose(log_q, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert np.all(np.isnan(log_q[0])) and np.all(log_q[2] == -np.inf)


# ----------------------------------------------------------------------------- masked rows


@pytest.mark.parametrize("op", ["linear", "geometric"])
@pytest.mark.parametrize("tail_mode", ["uniform", "bucket", "drop"])
def test_sparse_top_k_masked_row_holding_nan_has_exactly_zero_gradient(op, tail_mode):
  """Top-k < V targets: a masked row whose target and student logits hold NaN."""
  s, t, w, temps = _inputs(13)
  target = getattr(sparse, op)(
    sparse.from_dense(t, 8), temperatures=temps, weights=w, tail_mode=tail_mode
  )
  target = target.replace(
    log_probs=target.log_probs.at[BAD_ROW, 0].set(jnp.nan),
    tail_log_mass=target.tail_log_mass.at[BAD_ROW].set(jnp.nan),
  )
  s = s.at[BAD_ROW, 3].set(jnp.nan)
  where = jnp.arange(B) != BAD_ROW
  f = lambda s, target: sparse.sparse_kd_loss(s, target, where=where)
  v, g = jax.jit(jax.value_and_grad(lambda s, q: f(s, q).sum()))(s, target)
  assert np.isfinite(float(v)) and np.all(np.asarray(g)[BAD_ROW] == 0.0)
  assert np.all(np.isfinite(np.asarray(g)))
  # Unmasked, the same row is visible: NaN loss and NaN gradient.
  v, g = jax.jit(jax.value_and_grad(lambda s, q: sparse.sparse_kd_loss(s, q)[BAD_ROW]))(s, target)
  assert np.isnan(float(v)) and np.all(np.isnan(np.asarray(g)[BAD_ROW]))


@pytest.mark.parametrize(
  "name", ["fused-xla", "fused-pallas-2-blocks", "fused-linear-kd", "composed"]
)
def test_masked_row_with_nan_student_logits_has_exactly_zero_gradient(name):
  s, t, w, temps = _inputs(17)
  s = s.at[BAD_ROW, 4].set(jnp.nan)
  where = jnp.arange(B) != BAD_ROW
  v, g = _value_and_grad(_path(name, "linear")[0], s, t, w, temps, where)
  assert v[BAD_ROW] == 0.0 and np.all(g[BAD_ROW] == 0.0) and np.all(np.isfinite(g))


# ----------------------------------------------------------------------------- fused value checks


def _fused_args():
  s, t, _, _ = _inputs(19)
  return s, t


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(weights=[1.0, 0.5, 0.5]), r"weights must sum to 1.*\[2, 2\]"),
    (dict(weights=[1.5, -0.25, -0.25]), r"weights must be finite and non-negative"),
    (dict(weights=[np.nan, 0.5, 0.5]), r"weights must be finite and non-negative.*1 non-finite"),
    (dict(weights=np.full((K, B), 0.5)), r"weights must sum to 1.*shape=\(3, 4\)"),
    (dict(temperatures=[1.0, np.nan, 1.0]), r"temperatures must be > 0 and finite.*nan"),
    (dict(temperatures=[1.0, np.inf, 1.0]), r"temperatures must be > 0 and finite.*inf"),
    (dict(temperatures=[1.0, 0.0, 1.0]), r"temperatures must be > 0 and finite"),
    (dict(student_temperature=np.nan), r"student_temperature must be > 0 and finite.*nan"),
    (dict(student_temperature=np.inf), r"student_temperature must be > 0 and finite.*inf"),
  ],
)
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_fused_kd_loss_checks_values_on_concrete_inputs(kwargs, match, impl):
  s, t = _fused_args()
  args = {**dict(temperatures=[1.0, 2.0, 0.5], weights=[0.2, 0.3, 0.5]), **kwargs}
  with pytest.raises(ValueError, match=match):
    fused_kd_loss(s, t, implementation=impl, interpret=True, **args)
  with pytest.raises(ValueError, match=match):  # and fused_linear_kd_loss, which shares them
    fused_linear_kd_loss(s, jnp.eye(V), t, implementation=impl, interpret=True, **args)


def test_fused_kd_loss_accepts_python_lists_under_jit():
  """Lists of Python floats (closure) and of traced scalars both work, as on the other paths."""
  s, t = _fused_args()
  ref = fused_kd_loss(
    s, t, temperatures=jnp.array([1.0, 2.0, 0.5]), weights=jnp.array([0.2, 0.3, 0.5])
  )
  closure = jax.jit(
    lambda s: fused_kd_loss(s, t, temperatures=[1.0, 2.0, 0.5], weights=[0.2, 0.3, 0.5])
  )
  np.testing.assert_allclose(closure(s), ref, rtol=1e-6)
  traced = jax.jit(
    lambda s, a, b, c: fused_kd_loss(s, t, temperatures=[a, b, c], weights=[0.2, 0.3, 0.5])
  )
  np.testing.assert_allclose(traced(s, 1.0, 2.0, 0.5), ref, rtol=1e-6)
  per_row = jax.jit(
    lambda s, w0: fused_kd_loss(s, t, temperatures=[1.0, 2.0, 0.5], weights=[w0, w0, 1 - 2 * w0])
  )
  np.testing.assert_allclose(
    per_row(s, 0.25),
    fused_kd_loss(s, t, temperatures=[1.0, 2.0, 0.5], weights=[0.25, 0.25, 0.5]),
    rtol=1e-6,
  )


def test_fused_xla_and_pallas_agree_on_extreme_inputs_the_checks_let_through():
  s, t = _fused_args()
  w = np.stack([np.full(B, 1.0), np.zeros(B), np.zeros(B)])  # per-row one-hot weights
  for temps, ts in (([1e-3, 1e3, 1.0], 1e-2), ([1e4, 1e4, 1e4], 1e3)):
    kw = dict(temperatures=temps, weights=w, student_temperature=ts)
    f = lambda s, t, impl, kw=kw: fused_kd_loss(s, t, implementation=impl, interpret=True, **kw)
    xla = jax.jit(jax.value_and_grad(lambda s, t, f=f: f(s, t, "xla").sum()))(s, t)
    pallas = jax.jit(jax.value_and_grad(lambda s, t, f=f: f(s, t, "pallas").sum()))(s, t)
    np.testing.assert_allclose(xla[0], pallas[0], rtol=1e-5)
    np.testing.assert_allclose(xla[1], pallas[1], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the store


def test_store_refuses_nan_teacher_output_naming_teacher_and_position(tmp_path):
  tokens = np.random.default_rng(0).integers(0, 16, (6, 5))

  def logits_fn(x):
    z = jax.random.normal(jax.random.key(int(x.sum())), (2, *x.shape, 16))
    return z.at[1, 1, 2, 3].set(jnp.nan) if x.shape[0] > 1 else z

  source = store.TeacherSource(("alpha", "beta"), tokens, logits_fn, 16)
  with pytest.raises(ValueError, match=r"teacher 'beta' \(teacher 1\).*row 1, position \(2,\)"):
    store.write_store(str(tmp_path / "s"), source, k=4, generation_temperatures=1.0, batch_size=3)
  from mtkd_jax import teachers

  with pytest.raises(ValueError, match=r"teacher 'beta' \(teacher 1\).*row 1, position \(2,\)"):
    teachers.write_store_v1(
      str(tmp_path / "v1"), source, k=4, generation_temperatures=1.0, batch_size=3
    )


def test_store_keeps_an_absent_teacher_row_as_minus_inf(tmp_path):
  tokens = np.random.default_rng(1).integers(0, 16, (3, 5))

  def logits_fn(x):
    z = jax.random.normal(jax.random.key(0), (2, *x.shape, 16))
    return z.at[0, 0, 1].set(-jnp.inf)

  source = store.TeacherSource(("alpha", "beta"), tokens, logits_fn, 16)
  store.write_store(str(tmp_path / "s"), source, k=4, generation_temperatures=1.0, batch_size=3)
  st = store.open_store(str(tmp_path / "s"), verify=True)
  lp, tail = np.asarray(st.log_probs[0][0]), np.asarray(st.tail_log_mass[0][0])
  assert np.all(lp[1] == -np.inf) and tail[1] == -np.inf and np.all(np.isfinite(lp[2]))
