"""Tests for mtkd_jax.sparse: re-tempering, tail modes, union aggregation, the sparse KD loss.

The reference for every sparse computation is the dense one built from the same truncated
distributions: each teacher's top-k completed to a dense [V] vector per tail mode, pooled with
`operators.linear` / `operators.geometric`, and compared with the student by `losses.mixture_kd`
(or, for "bucket", a dense KL on the coarse partition), differentiated by autodiff.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import losses, operators, sparse
from mtkd_jax import temperature as temperature_lib

MODES = sparse.TAIL_MODES


# ---------------------------------------------------------------------------------------------
# The dense reference, written independently of sparse.py's union/loss code.
# ---------------------------------------------------------------------------------------------
def _dense_completion(out: sparse.SparseTeacherOutputs, mode: str) -> np.ndarray:
  """[K, ..., V] log-probs at T_g: listed values, the uniform share of m elsewhere (or −inf)."""
  idx = np.asarray(out.indices)
  lp = np.asarray(out.log_probs.astype(jnp.float32), np.float64)
  v, k = out.vocab_size, idx.shape[-1]
  m = np.maximum(1.0 - np.exp(lp).sum(-1, keepdims=True), 0.0)  # [K, ..., 1]
  with np.errstate(divide="ignore"):
    fill = np.log(m / (v - k)) if (mode != "drop" and v > k) else np.full(m.shape, -np.inf)
  dense = np.broadcast_to(fill, (*idx.shape[:-1], v)).copy()
  np.put_along_axis(dense, idx, lp, axis=-1)
  return dense.astype(np.float32)


def _union_mask(out) -> np.ndarray:
  idx = np.asarray(out.indices)  # [K, ..., k]
  mask = np.zeros((*idx.shape[1:-1], out.vocab_size), bool)
  for j in range(idx.shape[0]):
    np.put_along_axis(mask, idx[j], True, axis=-1)
  return mask


def _dense_target(out, temperatures, weights, mode, op, dense, listed, in_u):
  """log q [..., V] of the dense pool of the completed teachers (before the tail mode's view)."""
  t = jnp.broadcast_to(jnp.asarray(temperatures, jnp.float32), (out.num_teachers,))
  rel_t = t / out.generation_temperatures  # log_softmax(dense · T_g / T)
  if op == "linear":
    return operators.linear(dense, temperatures=rel_t, weights=weights)
  tempered = temperature_lib.scale(dense, rel_t)
  floored = jnp.where(listed, tempered, jnp.maximum(tempered, sparse.LOG_FLOOR))
  log_q = operators.geometric(floored, temperatures=jnp.ones_like(rel_t), weights=weights)
  if mode == "drop":  # the pooled tail is dropped: restrict to U and renormalise
    log_q = jax.nn.log_softmax(jnp.where(in_u, log_q, -jnp.inf), axis=-1)
  return log_q


def _dense_loss(student_logits, log_q, in_u, mode, t_s):
  """The dense KL(q ‖ p_S) · T_S² of a tail mode (bucket: on the coarse partition)."""
  if mode != "bucket":
    return losses.mixture_kd(student_logits, log_q, student_temperature=t_s)
  log_ps = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t_s, axis=-1)

  def lump(x):
    tail = jax.nn.logsumexp(jnp.where(in_u, -jnp.inf, x), axis=-1, keepdims=True)
    return jnp.concatenate([jnp.where(in_u, x, -jnp.inf), tail], axis=-1)

  return t_s**2 * losses.kl_divergence(lump(log_q), lump(log_ps))


def _problem(seed, *, k_teachers=3, batch=(4,), v=23, k=5, scale=2.0, dtype=jnp.float32):
  r = np.random.default_rng(seed)
  z = scale * r.standard_normal((k_teachers, *batch, v)).astype(np.float32)
  t_g = r.uniform(0.5, 2.0, k_teachers).astype(np.float32)
  out = sparse.from_dense(jnp.asarray(z), k, generation_temperatures=t_g)
  out = out.replace(log_probs=out.log_probs.astype(dtype))
  temperatures = r.uniform(0.5, 3.0, k_teachers).astype(np.float32)
  weights = r.dirichlet(np.ones(k_teachers)).astype(np.float32)
  student = jnp.asarray(scale * r.standard_normal((*batch, v)), dtype)
  t_s = float(r.uniform(0.7, 2.5))
  return out, temperatures, weights, student, t_s


def _both(out, temperatures, weights, student, t_s, combos):
  """{(op, mode): ((loss, grad) sparse, (loss, grad) dense)}, in one jitted function."""
  completions = {m: jnp.asarray(_dense_completion(out, m)) for m in ("drop", "uniform")}
  completions["bucket"] = completions["uniform"]  # same completion; the loss lumps its tail
  listed = np.zeros(completions["drop"].shape, bool)
  np.put_along_axis(listed, np.asarray(out.indices), True, axis=-1)
  in_u = jnp.asarray(_union_mask(out))

  @jax.jit
  def run(out, student):
    results = {}
    for op, mode in combos:
      sparse_op = sparse.get(op, tail_mode=mode)

      def sparse_loss(s, sparse_op=sparse_op):
        target = sparse_op(out, temperatures=temperatures, weights=weights)
        return sparse.sparse_kd_loss(s, target, student_temperature=t_s)

      dense = completions["uniform" if op == "geometric" else mode]
      log_q = _dense_target(out, temperatures, weights, mode, op, dense, listed, in_u)
      dense_loss = lambda s, log_q=log_q, mode=mode: _dense_loss(s, log_q, in_u, mode, t_s)
      results[op, mode] = tuple(
        (fn(student), jax.grad(lambda s, fn=fn: fn(s).sum())(student))
        for fn in (sparse_loss, dense_loss)
      )
    return results

  return run(out, student)


ALL = [(op, mode) for op in ("linear", "geometric") for mode in MODES]


# ---------------------------------------------------------------------------------------------
# Sparse == dense reference, every tail mode, forward and gradient.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "seed,k_teachers,batch,v,k",
  [
    (0, 3, (4,), 23, 5),
    (1, 1, (3,), 11, 4),
    (2, 2, (2, 3), 40, 1),
    (3, 3, (5,), 12, 8),
  ],
)
def test_sparse_loss_matches_dense_reference(seed, k_teachers, batch, v, k):
  out, temps, w, student, t_s = _problem(seed, k_teachers=k_teachers, batch=batch, v=v, k=k)
  for (op, mode), ((loss, grad), (ref_loss, ref_grad)) in _both(
    out, temps, w, student, t_s, ALL
  ).items():
    assert loss.shape == batch
    assert np.all(np.asarray(ref_loss) > 1e-3), (op, mode)  # a real, non-trivial target
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=2e-6, err_msg=f"{op} {mode}")
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=5e-6, err_msg=f"{op} {mode}")


def test_per_position_weights_match_dense():
  out, temps, _, student, t_s = _problem(7, batch=(3, 2), v=17, k=3)
  w = np.random.default_rng(7).dirichlet(np.ones(3), size=(3,)).T.astype(np.float32)  # [K, B]
  combos = [("linear", m) for m in MODES]
  for key, ((loss, grad), (ref_loss, ref_grad)) in _both(
    out, temps, w, student, t_s, combos
  ).items():
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=2e-6, err_msg=str(key))
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=2e-6, err_msg=str(key))


def test_target_is_the_dense_pool():
  """The sparse target itself (not just the loss) equals the dense pool, tail included."""
  out, temps, w, _, _ = _problem(11, v=19, k=4)
  listed = np.zeros((*out.indices.shape[:-1], 19), bool)
  np.put_along_axis(listed, np.asarray(out.indices), True, axis=-1)
  in_u = _union_mask(out)
  for op in ("linear", "geometric"):
    for mode in ("drop", "uniform"):
      target = jax.jit(sparse.get(op, tail_mode=mode))(out, temperatures=temps, weights=w)
      dense = jnp.asarray(_dense_completion(out, "uniform" if op == "geometric" else mode))
      want = _dense_target(out, temps, w, mode, op, dense, listed, in_u)
      np.testing.assert_allclose(
        jnp.exp(sparse.to_dense(target)), jnp.exp(want), rtol=1e-5, atol=1e-7
      )
      total = jnp.exp(target.log_probs).sum(-1) + jnp.exp(target.tail_log_mass)
      np.testing.assert_allclose(total, 1.0, rtol=1e-5)


def test_uniform_and_bucket_share_q_and_differ_in_loss():
  out, temps, w, student, t_s = _problem(12, v=30, k=3)

  @jax.jit
  def both(out, student):
    targets = [
      sparse.linear(out, temperatures=temps, weights=w, tail_mode=m) for m in ("uniform", "bucket")
    ]
    return targets, [sparse.sparse_kd_loss(student, t, student_temperature=t_s) for t in targets]

  (tu, tb), (lu, lb) = both(out, student)
  np.testing.assert_allclose(tu.log_probs, tb.log_probs)
  np.testing.assert_allclose(tu.tail_log_mass, tb.tail_log_mass)
  assert np.all(np.asarray(lb) < np.asarray(lu))  # coarse-graining lowers KL (data processing)


# ---------------------------------------------------------------------------------------------
# Re-tempering and the dense limit k = V.
# ---------------------------------------------------------------------------------------------
def test_retemper_exact_at_generation_temperature_and_for_k_equal_v():
  r = np.random.default_rng(3)
  z = jnp.asarray(2 * r.standard_normal((2, 5, 13)), jnp.float32)
  t_g = jnp.array([0.7, 1.6])
  out = sparse.from_dense(z, 4, generation_temperatures=t_g)
  support, _token, tail = sparse.retemper(out, t_g, tail_mode="uniform")  # β = 1: identity
  np.testing.assert_allclose(support, out.log_probs, atol=1e-6)
  np.testing.assert_allclose(jnp.exp(tail), 1 - jnp.exp(out.log_probs).sum(-1), atol=1e-6)
  full = sparse.from_dense(z, 13, generation_temperatures=t_g)  # k = V: exact at any T
  t = jnp.array([2.5, 0.4])
  support, _, tail = sparse.retemper(full, t, tail_mode="uniform")
  want = jnp.take_along_axis(temperature_lib.scale(z, t), full.indices, axis=-1)
  np.testing.assert_allclose(support, want, atol=1e-5)
  assert np.all(np.isneginf(np.asarray(tail)))


def test_retemper_uniform_completion_bias_has_the_documented_sign():
  """For T > T_g the uniform completion overestimates the tempered tail mass, for T < T_g it
  underestimates it (concavity / convexity of x^β)."""
  z = jnp.asarray(3 * np.random.default_rng(4).standard_normal((1, 50, 40)), jnp.float32)
  out = sparse.from_dense(z, 5)
  for t, sign in ((3.0, 1), (0.5, -1)):
    _, _, tail = sparse.retemper(out, t, tail_mode="uniform")
    true_tail = 1 - jnp.exp(jnp.take_along_axis(temperature_lib.scale(z, t), out.indices, -1)).sum(
      -1
    )
    assert np.all(sign * (np.exp(np.asarray(tail)) - np.asarray(true_tail)) > -1e-6)
    assert np.mean(sign * (np.exp(np.asarray(tail)) - np.asarray(true_tail)) > 1e-4) > 0.9


@pytest.mark.parametrize("mode", MODES)
def test_dense_limit_k_equals_v_is_the_dense_mixture_loss(mode):
  r = np.random.default_rng(5)
  k_teachers, v = 3, 16
  z = jnp.asarray(2 * r.standard_normal((k_teachers, 6, v)), jnp.float32)
  t_g, temps = jnp.array([1.0, 0.5, 2.0]), jnp.array([2.0, 1.0, 1.5])
  w = jnp.asarray(r.dirichlet(np.ones(k_teachers)), jnp.float32)
  student = jnp.asarray(r.standard_normal((6, v)), jnp.float32)
  out = sparse.from_dense(z, v, generation_temperatures=t_g)

  def sparse_loss(s):
    target = sparse.linear(out, temperatures=temps, weights=w, tail_mode=mode)
    return sparse.sparse_kd_loss(s, target, student_temperature=1.3).sum()

  def dense_loss(s):
    log_q = operators.linear(z, temperatures=temps, weights=w)  # the untruncated teachers
    return losses.mixture_kd(s, log_q, student_temperature=1.3).sum()

  np.testing.assert_allclose(jax.jit(sparse_loss)(student), dense_loss(student), rtol=1e-5)
  grads = [jax.jit(jax.grad(f))(student) for f in (sparse_loss, dense_loss)]
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Extreme values, bf16, jit/vmap, masks, errors.
# ---------------------------------------------------------------------------------------------
def test_extreme_logits():
  out, temps, w, student, t_s = _problem(21, v=29, k=6, scale=1e4)
  for key, ((loss, grad), (ref_loss, ref_grad)) in _both(out, temps, w, student, t_s, ALL).items():
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)), key
    assert np.all(np.asarray(ref_loss) > 10.0), key
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-2, err_msg=str(key))
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-3, err_msg=str(key))


def test_bfloat16_inputs():
  out, temps, w, student, t_s = _problem(31, v=37, k=7, dtype=jnp.bfloat16)
  for key, ((loss, grad), (ref_loss, ref_grad)) in _both(out, temps, w, student, t_s, ALL).items():
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16, key
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-5, err_msg=str(key))
    np.testing.assert_allclose(
      np.asarray(grad, np.float32),
      np.asarray(ref_grad, np.float32),
      rtol=2e-2,
      atol=2e-3,
      err_msg=str(key),
    )


def test_jit_vmap_and_where_mask():
  out, temps, w, student, t_s = _problem(41, batch=(6,), v=21, k=4)

  def loss(s, o):
    target = sparse.linear(o, temperatures=temps, weights=w, tail_mode="bucket")
    return sparse.sparse_kd_loss(s, target, student_temperature=t_s)

  batched = jax.jit(loss)(student, out)
  # vmap over the batch axis (axis 0 of the student, axis 1 of the teachers)
  one_row = lambda s, i, lp: loss(s[None], out.replace(indices=i[:, None], log_probs=lp[:, None]))
  vm = jax.jit(jax.vmap(lambda *a: one_row(*a)[0], in_axes=(0, 1, 1)))
  np.testing.assert_allclose(vm(student, out.indices, out.log_probs), batched, rtol=1e-5)
  np.testing.assert_allclose(
    one_row(student[2], out.indices[:, 2], out.log_probs[:, 2]), batched[2:3], rtol=1e-5
  )
  mask = jnp.array([True, False, True, True, False, True])

  def masked(s):
    target = sparse.linear(out, temperatures=temps, weights=w, tail_mode="uniform")
    return sparse.sparse_kd_loss(s, target, where=mask).sum()

  g = jax.jit(jax.grad(masked))(student)
  assert np.all(np.asarray(g)[~np.asarray(mask)] == 0) and np.any(np.asarray(g)[np.asarray(mask)])


def test_sparse_kd_loss_runs_in_the_train_step():
  """`make_train_step` takes the sparse objective (`objectives.sparse_mixture`)."""
  import optax

  from mtkd_jax import models, objectives, train

  r = np.random.default_rng(8)
  model = models.build("mlp", in_features=6, hidden=(8,), num_classes=12)
  z = 2 * r.standard_normal((3, 16, 12)).astype(np.float32)  # [K, B, V]
  out = sparse.from_dense(jnp.asarray(z), 4)
  batch = {
    "x": r.standard_normal((16, 6)).astype(np.float32),
    "y": r.integers(0, 12, 16).astype(np.int32),
    "idx": np.asarray(out.indices),
    "lp": np.asarray(out.log_probs),
  }
  teacher_apply = lambda _, b: sparse.sparse_outputs(b["idx"], b["lp"], vocab_size=12)
  kw = dict(temperatures=[1.0, 1.0, 1.0], weights=[0.2, 0.3, 0.5])
  objective = objectives.sparse_mixture(
    sparse.get("linear(tail_mode='uniform')"), temperatures=kw["temperatures"]
  )
  step = train.make_train_step(
    model.apply,
    optax.sgd(0.1),
    objective=objective,
    weights=kw["weights"],
    teacher_apply=teacher_apply,
  )
  params = model.init(jax.random.key(0))
  optimizer = optax.sgd(0.1)
  init = {"student": params, "weighting": {}}
  state = train.TrainState(jnp.zeros((), jnp.int32), init, optimizer.init(init))
  new_state, metrics = jax.jit(step)(state, batch)
  new_state = new_state.replace(params=new_state.params["student"])
  target = sparse.linear(out, tail_mode="uniform", **kw)
  loss_fn = lambda p: sparse.sparse_kd_loss(model.apply(p, batch["x"]), target).mean()
  want, grads = jax.value_and_grad(loss_fn)(params)
  for new, old, g in zip(*map(jax.tree.leaves, (new_state.params, params, grads)), strict=True):
    np.testing.assert_allclose(new, old - 0.1 * g, rtol=1e-5, atol=1e-6)  # one SGD step
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_q_student"], want, rtol=1e-5)
  assert 0 < float(metrics["target_tail_mass"]) < 1


def test_errors_name_the_argument():
  out, temps, w, student, _ = _problem(51)
  with pytest.raises(ValueError, match="tail_mode"):
    sparse.linear(out, temperatures=temps, weights=w, tail_mode="spread")
  with pytest.raises(ValueError, match="weights"):
    sparse.linear(out, temperatures=temps, weights=jnp.ones(3), tail_mode="drop")
  target = sparse.linear(out, temperatures=temps, weights=w)
  with pytest.raises(ValueError, match=r"student_logits\.shape"):
    sparse.sparse_kd_loss(student[:, :-1], target)
  with pytest.raises(ValueError, match="distinct"):
    sparse.sparse_outputs(np.array([[[1, 1]]]), np.log(np.full((1, 1, 2), 0.3)), vocab_size=5)
  with pytest.raises(ValueError, match="indices must be in"):
    sparse.sparse_outputs(np.array([[[1, 7]]]), np.log(np.full((1, 1, 2), 0.3)), vocab_size=5)
  with pytest.raises(ValueError, match=r"unknown sparse_operator 'power'; valid names"):
    sparse.get("power")


def test_from_dense_is_sorted_top_k_and_truncate_is_a_prefix():
  r = np.random.default_rng(9)
  z = r.standard_normal((2, 3, 10)).astype(np.float32)
  out = sparse.from_dense(jnp.asarray(z), 6, generation_temperatures=jnp.array([1.0, 2.0]))
  want = np.argsort(-z, axis=-1)[..., :6]
  np.testing.assert_array_equal(out.indices, want)
  assert np.all(np.diff(np.asarray(out.log_probs), axis=-1) <= 0)
  small = out.truncate(2)
  np.testing.assert_array_equal(small.indices, want[..., :2])
  np.testing.assert_allclose(
    jnp.exp(sparse.missing_log_mass(small.log_probs)),
    1 - jnp.exp(small.log_probs).sum(-1),
    atol=1e-6,
  )


def test_sparse_kd_loss_refuses_a_mask_that_would_change_its_shape():
  """A [B, 1] mask against the [B] loss broadcast to [B, B] and silently changed the mean."""
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2, 3, 6)).astype(np.float32)
  target = sparse.linear(sparse.from_dense(z, 3), temperatures=1.0, weights=np.array([0.5, 0.5]))
  zs = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
  with pytest.raises(ValueError, match=r"where.*\(3, 1\)"):
    sparse.sparse_kd_loss(zs, target, where=np.array([[True], [False], [True]]))
  full = sparse.sparse_kd_loss(zs, target)
  masked = sparse.sparse_kd_loss(zs, target, where=np.array([True, False, True]))
  np.testing.assert_allclose(masked, np.where([True, False, True], full, 0.0))
