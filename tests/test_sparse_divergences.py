"""The divergence family of `sparse.sparse_kd_loss` (forward KL, reverse KL, JSD_β) under each
tail mode, against an independent float64 dense implementation.

The reference builds, row by row in float64, the dense target the tail mode means: "drop" q on
the support U and 0 elsewhere, "uniform" the tail mass t spread over V \\ U, "bucket" the
coarse-grained distributions over U ∪ {tail} (the student's tail class is Σ_{j ∉ U} p_S(j));
it then applies the divergence's definition and differentiates by autodiff.
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import objectives, registry, sparse

MODES = sparse.TAIL_MODES
DIVS = ("forward_kl", "reverse_kl", "jsd")
COMBOS = [(d, m) for d in DIVS for m in MODES if not (d == "reverse_kl" and m == "drop")]


def _target(seed, mode, *, b=6, v=11, n=13):
  """A fresh random SparseTarget [b, n]: row 0 covers all of V (t = 0), row 1 has a tiny tail,
  the others 2..V−2 tokens; unused slots are padding (a repeated token, invalid, log q −inf)."""
  r = np.random.default_rng(seed)
  idx = np.zeros((b, n), np.int32)
  log_q = np.full((b, n), -np.inf, np.float32)
  valid = np.zeros((b, n), bool)
  tail = np.zeros(b)
  for row in range(b):
    u = v if row == 0 else int(r.integers(2, v - 1))
    tokens = r.permutation(v)[:u]
    slots = r.permutation(n)[:u]
    t = 0.0 if (mode == "drop" or u == v) else (1e-6 if row == 1 else r.uniform(0.05, 0.6))
    q = (1.0 - t) * r.dirichlet(np.full(u, 0.7))
    idx[row] = r.choice(tokens, n)  # padding: repeats of listed tokens
    idx[row, slots] = tokens
    log_q[row, slots] = np.log(q)
    valid[row, slots] = True
    tail[row] = t
  with np.errstate(divide="ignore"):
    tail_log_mass = np.log(tail).astype(np.float32)
  return sparse.SparseTarget(
    jnp.asarray(idx), jnp.asarray(log_q), jnp.asarray(valid), jnp.asarray(tail_log_mass), mode, v
  )


# ---------------------------------------------------------------------------------------------
# The float64 reference: the dense target of the tail mode and the divergence's definition.
# ---------------------------------------------------------------------------------------------
def _kl(la, lb):
  """Σ a (log a − log b) over the entries with a > 0 (la is finite there, −inf elsewhere)."""
  pos = la > -jnp.inf
  safe_la = jnp.where(pos, la, 0.0)
  return jnp.sum(jnp.where(pos, jnp.exp(safe_la) * (safe_la - jnp.where(pos, lb, 0.0)), 0.0))


def _reference_row(z, idx, log_q, valid, tail_log_mass, mode, v, div, beta, ts):
  """T_S² · D(q, p_S) of one row, float64; z [V] is differentiated."""
  u = idx[valid]
  lq_u = log_q[valid].astype(np.float64)
  tl = float(tail_log_mass)
  rest = np.setdiff1d(np.arange(v), u)
  log_p = jax.nn.log_softmax(z / ts)
  if mode == "bucket":  # the coarse partition U ∪ {V \ U}
    la = jnp.asarray(np.concatenate([lq_u, [tl]]) if rest.size else lq_u)
    lb = log_p[u]
    if rest.size:
      lb = jnp.concatenate([lb, jax.nn.logsumexp(log_p[rest])[None]])
  else:
    dense = np.full(v, -np.inf)
    dense[u] = lq_u
    if mode == "uniform" and rest.size:
      dense[rest] = tl - np.log(rest.size)
    la, lb = jnp.asarray(dense), log_p
  if div == "forward_kl":
    d = _kl(la, lb)
  elif div == "reverse_kl":
    d = _kl(lb, la)
  else:
    lm = jnp.logaddexp(np.log(beta) + la, np.log1p(-beta) + lb)
    d = beta * _kl(la, lm) + (1.0 - beta) * _kl(lb, lm)
  return ts**2 * d


def _reference(student, target, div, beta, ts):
  """(loss [B], gradient [B, V]) in float64, row by row."""
  z = np.asarray(jnp.asarray(student, jnp.float32), np.float64)
  arrays = [np.asarray(a) for a in (target.indices, target.log_probs, target.valid)]
  tails = np.asarray(target.tail_log_mass)
  losses, grads = [], []
  with jax.enable_x64(True):
    for row in range(z.shape[0]):
      fn = lambda zr, row=row: _reference_row(
        zr, *(a[row] for a in arrays), tails[row], target.tail_mode, target.vocab_size, div,
        beta, ts,
      )  # fmt: skip
      value, grad = jax.value_and_grad(fn)(jnp.asarray(z[row]))
      losses.append(float(value))
      grads.append(np.asarray(grad))
  return np.array(losses), np.stack(grads)


def _ours(student, target, div, beta, ts):
  fn = lambda z: sparse.sparse_kd_loss(z, target, student_temperature=ts, divergence=div, beta=beta)
  loss, vjp = jax.vjp(jax.jit(fn), student)
  ct = jnp.asarray(np.random.default_rng(7).uniform(0.5, 1.5, loss.shape), jnp.float32)
  (grad,) = vjp(ct)
  return np.asarray(loss, np.float64), np.asarray(grad.astype(jnp.float32), np.float64), ct


def _close(actual, expected, rtol, what, unit=1e-12):
  """|actual − expected| ≤ rtol·|expected| + rtol·max(|expected|, unit): `unit` is the
  natural size of an entry (T_S for a gradient ∂/∂z_S = T_S·∂D/∂x) where all are ~0."""
  assert np.all(np.isfinite(actual)), what
  scale = max(np.abs(expected).max(), unit)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


CASES = {
  # name: (logit scale, T_S, student dtype, value rtol, gradient rtol)
  "normal": (3.0, 1.7, jnp.float32, 2e-5, 1e-4),
  "logits_1e4_ts_1e-3": (1e4, 1e-3, jnp.float32, 1e-5, 1e-4),
  "logits_1e4_ts_1e3": (1e4, 1e3, jnp.float32, 2e-5, 1e-4),
  "bfloat16": (3.0, 0.8, jnp.bfloat16, 2e-5, 1e-2),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("div,mode", COMBOS)
def test_value_and_gradient_match_float64_dense(div, mode, case):
  scale, ts, dtype, rtol, grad_rtol = CASES[case]
  seed = zlib.crc32(f"{div}/{mode}/{case}".encode())
  target = _target(seed, mode)
  r = np.random.default_rng(seed + 1)
  student = jnp.asarray(scale * r.uniform(-1.0, 1.0, (6, 11)), jnp.float32).astype(dtype)
  beta = float(r.uniform(0.1, 0.9))
  loss, grad, ct = _ours(student, target, div, beta, ts)
  ref_loss, ref_grad = _reference(student, target, div, beta, ts)
  assert np.all(ref_loss > 0), ref_loss  # the problem is not degenerate
  _close(loss, ref_loss, rtol, f"{div}/{mode}/{case} loss")
  _close(grad, np.asarray(ct)[:, None] * ref_grad, grad_rtol, f"{div}/{mode}/{case} grad", ts)


@pytest.mark.parametrize("div,mode", COMBOS)
def test_targets_from_teachers_match_the_dense_completion(div, mode):
  """Through `sparse.linear` on real top-k outputs (repeated union tokens, padding), equal to
  the dense divergence against `sparse.to_dense` of the same target."""
  r = np.random.default_rng(3)
  z = 2.0 * r.standard_normal((3, 5, 17)).astype(np.float32)
  out = sparse.from_dense(jnp.asarray(z), 4)
  target = sparse.linear(out, temperatures=[1.0, 2.0, 0.5], weights=[0.2, 0.5, 0.3], tail_mode=mode)
  student = jnp.asarray(2.0 * r.standard_normal((5, 17)), jnp.float32)
  loss, grad, ct = _ours(student, target, div, 0.3, 1.4)
  ref_loss, ref_grad = _reference(student, target, div, 0.3, 1.4)
  _close(loss, ref_loss, 2e-5, "loss")
  _close(grad, np.asarray(ct)[:, None] * ref_grad, 1e-4, "grad")


@pytest.mark.parametrize("div,mode", COMBOS)
def test_empty_masked_and_nan_rows(div, mode):
  """An empty target row gives 0 and a zero gradient, a masked row (holding NaN) too, a NaN
  target row NaN and NaN; the other rows are untouched."""
  target = _target(5, mode, b=4)
  lq, tl = target.log_probs, target.tail_log_mass
  slot = int(np.argmax(np.asarray(target.valid[2])))  # a listed token of row 2
  lq = lq.at[1].set(-jnp.inf).at[2, slot].set(jnp.nan)
  target = target.replace(log_probs=lq, tail_log_mass=tl.at[1].set(-jnp.inf))
  student = jnp.asarray(np.random.default_rng(6).standard_normal((4, 11)), jnp.float32)
  student = student.at[3].set(jnp.nan)
  where = jnp.array([True, True, True, False])
  fn = lambda z: sparse.sparse_kd_loss(z, target, divergence=div, beta=0.6, where=where)
  loss, grad = fn(student), jax.grad(lambda z: fn(z).sum())(student)
  assert np.isfinite(loss[0]) and loss[0] > 0 and np.all(np.isfinite(grad[0]))
  assert loss[1] == 0 and np.all(grad[1] == 0)
  assert np.isnan(loss[2]) and np.all(np.isnan(grad[2]))
  assert loss[3] == 0 and np.all(grad[3] == 0)


def test_bad_divergence_and_beta_raise_value_error_naming_the_argument():
  target = _target(8, "uniform", b=2)
  z = jnp.asarray(np.random.default_rng(9).standard_normal((2, 11)), jnp.float32)
  with pytest.raises(ValueError, match="divergence"):
    sparse.sparse_kd_loss(z, target, divergence="kl")
  for beta in (0.0, 1.0, -0.2, 1.5):
    with pytest.raises(ValueError, match="beta"):
      sparse.sparse_kd_loss(z, target, divergence="jsd", beta=beta)
  with pytest.raises(ValueError, match="beta"):  # checked whatever the divergence
    sparse.sparse_kd_loss(z, target, beta=2.0)
  with pytest.raises(ValueError, match=r"reverse_kl.*drop"):
    sparse.sparse_kd_loss(z, _target(8, "drop", b=2), divergence="reverse_kl")


def test_jsd_limits_and_mode_seeking_order():
  """JSD_β / β → forward KL as β → 0 and JSD_β / (1 − β) → reverse KL as β → 1 (bucket)."""
  target = _target(10, "bucket", b=3)
  z = jnp.asarray(np.random.default_rng(11).standard_normal((3, 11)), jnp.float32)
  loss = lambda **kw: np.asarray(sparse.sparse_kd_loss(z, target, **kw), np.float64)
  fwd, rev = loss(divergence="forward_kl"), loss(divergence="reverse_kl")
  rows = [0, 2]  # not row 1: its tail mass 1e-6 needs 1 − β ≪ 1e-6 for the β → 1 limit
  np.testing.assert_allclose(loss(divergence="jsd", beta=1e-4)[rows] / 1e-4, fwd[rows], rtol=2e-3)
  np.testing.assert_allclose(
    loss(divergence="jsd", beta=1 - 1e-4)[rows] / 1e-4, rev[rows], rtol=2e-3
  )


def test_sparse_objective_takes_a_divergence_spec():
  """`objectives.sparse_mixture(..., divergence="jsd(beta=0.9)")` and the registered
  "sparse_mixture_kd" equal the loss called directly; reverse KL with "drop" is refused."""
  r = np.random.default_rng(12)
  out = sparse.from_dense(jnp.asarray(r.standard_normal((2, 4, 13)), jnp.float32), 3)
  z = jnp.asarray(r.standard_normal((4, 13)), jnp.float32)
  w = jnp.array([0.4, 0.6])
  op = sparse.get("geometric", tail_mode="bucket")
  kw = dict(temperatures=[1.0, 2.0], student_temperature=1.5)
  obj = objectives.sparse_mixture(op, divergence="jsd(beta=0.9)", **kw)
  target = op(out, temperatures=jnp.array([1.0, 2.0]), weights=w)
  direct = sparse.sparse_kd_loss(z, target, student_temperature=1.5, divergence="jsd", beta=0.9)
  np.testing.assert_allclose(obj(z, out, w), direct, rtol=1e-6)
  spec = (
    "sparse_mixture_kd(divergence='reverse_kl', sparse_operator='linear(tail_mode=\"uniform\")')"
  )
  obj = registry.get("objective", spec, **kw)
  target = sparse.linear(out, temperatures=jnp.array([1.0, 2.0]), weights=w, tail_mode="uniform")
  direct = sparse.sparse_kd_loss(z, target, student_temperature=1.5, divergence="reverse_kl")
  np.testing.assert_allclose(obj(z, out, w), direct, rtol=1e-6)
  with pytest.raises(ValueError, match=r"reverse_kl.*drop"):
    objectives.sparse_mixture(sparse.get("linear", tail_mode="drop"), divergence="reverse_kl", **kw)
