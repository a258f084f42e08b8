"""Tests for mtkd_jax.weighting and mtkd_jax.weighting_checks."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtkd_jax import weighting, weighting_checks


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _problem(seed, k=3, b=16, v=7):
  r = np.random.default_rng(seed)
  lp = _log_softmax(2.0 * r.normal(size=(k, b, v))).astype(np.float32)
  return lp, r.integers(0, v, b).astype(np.int32), r


# ---------------------------------------------------------------------------------------------
# Hand-computed values.
# ---------------------------------------------------------------------------------------------
def test_confidence_matches_hand_computation():
  p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
  h = -(p * np.log(p)).sum(-1)
  c = 1 - h / np.log(3)
  want = np.exp(c / 0.3) / np.exp(c / 0.3).sum()
  got = weighting.confidence(jnp.log(p), tau=0.3)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  m = p.max(-1)
  want_max = np.exp(m / 0.3) / np.exp(m / 0.3).sum()
  np.testing.assert_allclose(
    weighting.confidence(jnp.log(p), tau=0.3, measure="max_prob"), want_max, rtol=1e-5
  )


def test_confidence_applies_teacher_temperatures():
  lp, _, _ = _problem(0)
  t = np.array([0.5, 1.0, 3.0], np.float32)
  tempered = _log_softmax(lp / t[:, None, None])
  np.testing.assert_allclose(
    weighting.confidence(lp, temperatures=t), weighting.confidence(tempered), rtol=1e-5, atol=1e-7
  )


def test_label_aware_is_softmax_of_negative_cross_entropy():
  lp, y, _ = _problem(1)
  ce = -np.take_along_axis(lp, y[None, :, None], axis=-1)[..., 0]  # [K, B]
  want = np.exp(-ce / 2.0) / np.exp(-ce / 2.0).sum(0)
  np.testing.assert_allclose(weighting.label_aware(lp, y, tau=2.0), want, rtol=1e-5)


def test_label_aware_pools_per_domain():
  lp, y, r = _problem(2)
  d = r.integers(0, 3, len(y))
  ly = np.take_along_axis(lp, y[None, :, None], axis=-1)[..., 0]  # [K, B]
  got = np.asarray(weighting.label_aware(lp, y, domains=d, num_domains=3))
  for dom in range(3):
    mean = ly[:, d == dom].mean(1)
    want = np.exp(mean) / np.exp(mean).sum()
    np.testing.assert_allclose(
      got[:, d == dom], np.repeat(want[:, None], (d == dom).sum(), 1), rtol=1e-5
    )


def test_label_aware_with_an_excluding_teacher_is_finite():
  lp = np.array([[0.0, -np.inf], [np.log(0.5), np.log(0.5)]], np.float32)
  w = weighting.label_aware(lp, np.int32(1))
  np.testing.assert_allclose(w, [0.0, 1.0], atol=1e-6)
  w_all = weighting.label_aware(np.array([[0.0, -np.inf], [0.0, -np.inf]]), np.int32(1))
  np.testing.assert_allclose(w_all, [0.5, 0.5])


def test_hierarchical_is_renormalised_product_with_broadcast_scales():
  r = np.random.default_rng(3)
  token = r.dirichlet(np.ones(3), size=(4, 5)).transpose(2, 0, 1)  # [K, B, L]
  task = r.dirichlet(np.ones(3), size=4).T  # [K, B]
  context = r.dirichlet(np.ones(3))  # [K]
  prod = token * task[:, :, None] * context[:, None, None]
  want = prod / prod.sum(0)
  got = weighting.hierarchical(token=token, task=task, context=context)
  assert got.shape == (3, 4, 5)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  smooth = weighting.hierarchical(token=token, task=task, epsilon=0.1)
  mix = lambda w: 0.9 * w + 0.1 / 3
  prod = mix(token) * mix(task)[:, :, None]
  np.testing.assert_allclose(smooth, prod / prod.sum(0), rtol=1e-5)


def test_hierarchical_with_empty_overlap_is_uniform_not_nan():
  w = weighting.hierarchical(token=jnp.array([1.0, 0.0, 0.0]), task=jnp.array([0.0, 0.5, 0.5]))
  np.testing.assert_allclose(w, np.ones(3) / 3)


def test_safety_floor_hand_computed():
  w = jnp.array([[0.1, 0.6, 0.0], [0.6, 0.3, 0.2], [0.3, 0.1, 0.8]])  # [K=3, B=3]
  s = jnp.array([1.0, 0.25, 0.0])
  got = weighting.safety_floor(w, safety_teacher=0, floor=0.5, sensitivity=s, threshold=0.5)
  # position 0: g = 0.5 > 0.1: others scaled by 0.5 / 0.9; position 1: g = 0.25 < 0.6: as is;
  # position 2: g = 0: as is.
  want = np.array([[0.5, 0.6, 0.0], [0.6 * 0.5 / 0.9, 0.3, 0.2], [0.3 * 0.5 / 0.9, 0.1, 0.8]])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_static_and_errors():
  np.testing.assert_allclose(weighting.static([0.2, 0.8], (3,)), [[0.2] * 3, [0.8] * 3])
  with pytest.raises(ValueError, match="sum to 1"):
    weighting.static([0.2, 0.7])
  with pytest.raises(ValueError, match="tau"):
    weighting.confidence(np.zeros((2, 3)), tau=0.0)
  with pytest.raises(ValueError, match="labels"):
    weighting.label_aware(np.zeros((2, 4, 3)), np.zeros(5, np.int32))
  with pytest.raises(ValueError, match="floor"):
    weighting.safety_floor(np.ones(2) / 2, safety_teacher=0, floor=1.5, sensitivity=1.0)
  with pytest.raises(ValueError, match="safety_teacher"):
    weighting.safety_floor(np.ones(2) / 2, safety_teacher=2, floor=0.5, sensitivity=1.0)
  with pytest.raises(ValueError, match="task"):
    weighting.hierarchical(token=np.ones((2, 3)) / 2, task=np.ones((3, 3)) / 3)
  with pytest.raises(ValueError, match="unknown weighting"):
    weighting.get("nope")


# ---------------------------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------------------------
@jax.jit
def _all_schemes(lp, y, s, tau):
  k = lp.shape[0]
  outs = {
    "confidence": weighting.confidence(lp, tau=tau),
    "max_prob": weighting.confidence(lp, tau=tau, measure="max_prob"),
    "standardized": weighting.confidence(lp, tau=tau, standardize=True),
    "label_aware": weighting.label_aware(lp, y, tau=tau),
    "pooled": weighting.label_aware(lp, y, tau=tau, domains=y % 2, num_domains=2),
  }
  outs["hierarchical"] = weighting.hierarchical(token=outs["confidence"], task=outs["pooled"])
  outs["floored"] = weighting.safety_floor(
    outs["hierarchical"], safety_teacher=k - 1, floor=0.4, sensitivity=s
  )
  return outs


# One shape (no recompilation per example); values from huge logits to exact zeros.
_logits = hnp.arrays(np.float32, (3, 5, 6), elements=st.floats(-30, 30, width=32))


@given(_logits, st.floats(0.05, 10.0), st.integers(0, 10_000), st.booleans())
def test_every_scheme_returns_a_distribution(logits, tau, seed, exclude):
  k, b, v = logits.shape
  lp = _log_softmax(logits)
  r = np.random.default_rng(seed)
  y = r.integers(0, v, b).astype(np.int32)
  if exclude:  # teacher 0 gives every label probability 0
    lp[0, np.arange(b), y] = -np.inf
  outs = _all_schemes(lp, y, r.uniform(size=b).astype(np.float32), tau)
  for name, w in outs.items():
    w = np.asarray(w)
    assert w.shape == (k, b), name
    assert np.all(np.isfinite(w)) and np.all(w >= 0), name
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-5, err_msg=name)


@given(st.integers(2, 5), st.floats(0.0, 1.0), st.floats(0.05, 1.0), st.integers(0, 10_000))
def test_safety_floor_is_monotone_in_sensitivity_and_holds_the_floor(k, floor, threshold, seed):
  r = np.random.default_rng(seed)
  w = r.dirichlet(np.ones(k) * r.choice([0.1, 1.0]), size=9).T.astype(np.float32)  # [K, 9]
  s = np.sort(r.uniform(-0.2, 1.2, size=7)).astype(np.float32)
  star = np.stack(
    [
      np.asarray(
        weighting.safety_floor(
          w, safety_teacher=1, floor=floor, sensitivity=np.full(9, x), threshold=threshold
        )
      )[1]
      for x in s
    ]
  )  # [7, 9]
  assert np.all(np.diff(star, axis=0) >= -1e-6)
  sensitive = s >= threshold
  assert np.all(star[sensitive] >= floor - 1e-6)
  assert np.all(star >= w[1] - 1e-6)  # never below the base weight


def test_jit_equals_eager_and_weights_are_differentiable():
  lp, y, _ = _problem(4, b=4)
  fn = lambda x: weighting.hierarchical(
    token=weighting.confidence(x, tau=0.5, standardize=True), task=weighting.label_aware(x, y)
  )
  np.testing.assert_allclose(jax.jit(fn)(lp), fn(lp), rtol=1e-5, atol=1e-7)
  g = jax.jit(jax.grad(lambda x: fn(x)[0].sum()))(lp)
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


# ---------------------------------------------------------------------------------------------
# Data-parallel consistency: 8 devices give the weights of 1.
# ---------------------------------------------------------------------------------------------
def _batch_stat_schemes(axis_name):
  def fn(lp, y, d):
    return {
      "standardized": weighting.confidence(lp, tau=0.5, standardize=True, axis_name=axis_name),
      "pooled": weighting.label_aware(
        lp, y, tau=0.7, domains=d, num_domains=3, axis_name=axis_name
      ),
    }

  return fn


def test_batch_statistics_on_8_devices_equal_1_device():
  assert jax.device_count() == 8
  lp, y, r = _problem(5, k=3, b=32, v=6)
  d = r.integers(0, 3, 32).astype(np.int32)
  on_one = lambda x: jax.device_put(x, jax.devices()[0])
  one = jax.jit(_batch_stat_schemes(None))(on_one(lp), on_one(y), on_one(d))
  mesh = Mesh(np.array(jax.devices()), ("data",))
  spec_kbv, spec_b = PartitionSpec(None, "data"), PartitionSpec("data")
  sharded = jax.jit(
    jax.shard_map(
      _batch_stat_schemes("data"),
      mesh=mesh,
      in_specs=(spec_kbv, spec_b, spec_b),
      out_specs={"standardized": spec_kbv, "pooled": spec_kbv},
    )
  )
  eight = sharded(lp, y, d)
  # Without the psum each device would use its own 4 examples: the test can tell.
  local = jax.jit(
    jax.shard_map(
      _batch_stat_schemes(None),
      mesh=mesh,
      in_specs=(spec_kbv, spec_b, spec_b),
      out_specs={"standardized": spec_kbv, "pooled": spec_kbv},
    )
  )(lp, y, d)
  # And jit over globally sharded arrays (the trainer's way) needs no axis name.
  put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
  global_jit = jax.jit(_batch_stat_schemes(None))(put(lp, spec_kbv), put(y, spec_b), put(d, spec_b))
  for name in one:
    assert eight[name].sharding.num_devices == 8
    np.testing.assert_allclose(eight[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(global_jit[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(np.asarray(local[name]) - np.asarray(one[name])).max() > 1e-3, name


# ---------------------------------------------------------------------------------------------
# Learned gating.
# ---------------------------------------------------------------------------------------------
def test_gate_loss_trains_the_gate_only_and_learns_the_right_teacher():
  # Two teachers; teacher 0 is right when feature 0 > 0, teacher 1 otherwise.
  r = np.random.default_rng(6)
  n, v = 256, 4
  f = r.normal(size=(n, 3)).astype(np.float32)
  y = r.integers(0, v, n).astype(np.int32)
  good = np.where(np.arange(v) == y[:, None], 3.0, 0.0)
  bad = np.where(np.arange(v) == (y[:, None] + 1) % v, 3.0, 0.0)
  first = f[:, :1] > 0
  lp = _log_softmax(np.stack([np.where(first, good, bad), np.where(first, bad, good)]))
  lp = lp.astype(np.float32)  # [2, N, V]
  gate = weighting.make_gate(3, 2, hidden=16)
  params = gate.init(jax.random.key(0))

  def loss(params, lp):
    w = weighting.learned(gate.apply, params, f)
    return weighting.gate_loss(w, lp, y).mean()

  g_teacher = jax.jit(jax.grad(loss, argnums=1))(params, lp)
  assert np.all(np.asarray(g_teacher) == 0.0)  # stop-gradient on the teachers
  opt = optax.adam(3e-2)
  state = opt.init(params)
  loss = jax.jit(loss)
  before = float(loss(params, lp))

  @jax.jit
  def step(p, s):
    updates, s = opt.update(jax.grad(loss)(p, lp), s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(100):
    params, state = step(params, state)
  w = np.asarray(jax.jit(weighting.learned, static_argnums=0)(gate.apply, params, f))  # [2, N]
  assert float(loss(params, lp)) < 0.5 * before
  right = np.where(first[:, 0], w[0], w[1])
  assert right.mean() > 0.9, right.mean()


def test_learned_trainer_hook_features_and_loss():
  hook = weighting.get("learned", num_features=5 + 4, num_teachers=3, hidden=8)
  assert weighting.is_trainable(hook)
  params = hook.init(jax.random.key(1))
  lp, y, r = _problem(7, k=3, b=6, v=4)
  batch = {"x": r.normal(size=(6, 5)).astype(np.float32), "y": y}
  w, loss = jax.jit(lambda p, lp, b, z: (hook(p, lp, b, z), hook.loss(hook(p, lp, b, z), lp, b)))(
    params, lp, batch, r.normal(size=(6, 4)).astype(np.float32)
  )
  assert w.shape == (3, 6) and loss.shape == (6,)
  np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-6)
  assert np.all(np.isfinite(loss)) and np.all(loss > 0)


# ---------------------------------------------------------------------------------------------
# Trainer hooks by name.
# ---------------------------------------------------------------------------------------------
def test_hooks_by_name_match_the_functions():
  lp, y, r = _problem(8)
  s = r.uniform(size=len(y)).astype(np.float32)
  batch = {"y": y, "sensitivity": s, "domain": y % 3}
  hook = weighting.get(
    "hierarchical",
    token={"name": "confidence", "tau": 0.5},
    task={"name": "label_aware", "domain_key": "domain", "num_domains": 3},
    context={"name": "static", "weights": [0.2, 0.3, 0.5]},
    safety_teacher=2,
    floor=0.4,
  )
  want = weighting.safety_floor(
    weighting.hierarchical(
      token=weighting.confidence(lp, tau=0.5),
      task=weighting.label_aware(lp, y, domains=y % 3, num_domains=3),
      context=np.array([0.2, 0.3, 0.5]),
    ),
    safety_teacher=2,
    floor=0.4,
    sensitivity=s,
  )
  np.testing.assert_allclose(hook(lp, batch), want, rtol=1e-5)
  assert set(weighting.names()) == {
    "static",
    "confidence",
    "label_aware",
    "hierarchical",
    "learned",
  }
  summary = weighting.summary(np.array([[1.0, 0.5], [0.0, 0.5]]))
  np.testing.assert_allclose(summary["effective_num_teachers"], 1.5)
  np.testing.assert_allclose(summary["weight_entropy"], np.log(2) / 2, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The checker: it passes what holds and catches what breaks.
# ---------------------------------------------------------------------------------------------
FAST = dict(num_teachers=3, vocab_size=2, trials=18)


def test_checker_passes_floored_schemes_and_catches_the_naive_ones():
  schemes = weighting_checks.builtin_schemes()
  expected = {  # name -> the properties that must fail (all others must pass)
    "safety_floor(hierarchical(ε))": set(),
    "label_aware": {4},
    "hierarchical": {3, 4},
    "naive: renormalised floor": {4},
    "naive: switched floor": {3},
    "naive: sharpened by sensitivity": {4},
  }
  for name, failing in expected.items():
    report = weighting_checks.check(schemes[name], name=name, **FAST)
    assert {n for n, ok in report.passed.items() if not ok} == failing, (name, report)
    for n in failing:
      c = report.counterexamples[n]
      assert c.axiom == n and c.value > 0 and "teacher_logits" in c.inputs
  table = weighting_checks.format_table([report])
  assert "naive: sharpened by sensitivity" in table and "lowered the safety teacher" in table


def test_no_floor_by_design_is_not_applicable_not_a_failure():
  schemes, not_applicable = (
    weighting_checks.builtin_schemes(),
    weighting_checks.builtin_not_applicable(),
  )
  # Only the schemes with a floor promise property 4; the naive floors are checked (and fail).
  assert {n for n in schemes if n not in not_applicable} == {
    "safety_floor(label_aware)",
    "safety_floor(learned)",
    "safety_floor(hierarchical(ε))",
    "naive: renormalised floor",
    "naive: switched floor",
    "naive: floor inside a product",
    "naive: sharpened by sensitivity",
  }
  assert not_applicable["label_aware"] == {4: "no floor"}
  plain = weighting_checks.check(
    schemes["label_aware"], name="label_aware", not_applicable={4: "no floor"}, **FAST
  )
  assert 4 not in plain.passed and plain.all_passed and plain.not_applicable == {4: "no floor"}
  naive = weighting_checks.check(
    schemes["naive: renormalised floor"], name="naive: renormalised floor", **FAST
  )
  table = weighting_checks.format_table([plain, naive])
  rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
  assert rows["label_aware"].count("n/a (no floor)") == 1 and "✗" not in rows["label_aware"]
  assert "n/a" not in rows["naive: renormalised floor"] and "✗" in rows["naive: renormalised floor"]
  assert "n/a (reason) does not apply by design, not checked" in table
  assert "✗ a counterexample was found" in table


def test_checker_catches_unnormalised_and_overflowing_schemes():
  def unnormalised(lp, y, f, s, prior):
    return weighting.confidence(lp) * 1.01

  def overflowing(lp, y, f, s, prior):  # exp without max-subtraction: inf/inf on huge inputs
    e = jnp.exp(jnp.max(lp, -1) * 0 + f[:, 0][None] * jnp.arange(lp.shape[0])[:, None])
    return e / e.sum(0)

  r1 = weighting_checks.check(unnormalised, **FAST)
  assert not r1.passed[1] and r1.counterexamples[1].value == pytest.approx(0.01, rel=1e-3)
  r2 = weighting_checks.check(overflowing, **FAST)
  assert r2.passed[1] and not r2.passed[2]


# ---------------------------------------------------------------------------------------------
# Trainer integration: `weighting=` of train.make_train_step.
# ---------------------------------------------------------------------------------------------
def _step_problem(seed=9, k=3, b=16, v=6, d=5):
  from mtkd_jax import models

  r = np.random.default_rng(seed)
  batch = {
    "x": r.normal(size=(b, d)).astype(np.float32),
    "y": r.integers(0, v, b).astype(np.int32),
    "sensitivity": (r.uniform(size=b) > 0.5).astype(np.float32),
    "teacher_logits": (2.0 * r.normal(size=(k, b, v))).astype(np.float32),  # [K, B, V]
  }
  return models.build("mlp", in_features=d, hidden=(8,), num_classes=v), batch


def test_train_step_uses_hook_weights_and_logs_them():
  from mtkd_jax import losses, objectives, operators, train

  model, batch = _step_problem()
  opt = optax.sgd(0.1)
  params = train.init_params(model.init)(jax.random.key(0))
  state = train.TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  hook = weighting.get("label_aware(tau=0.5, safety_teacher=2, floor=0.4)")
  kw = dict(
    objective=objectives.mixture(operators.linear, temperatures=[1.0] * 3), weights=[1 / 3] * 3
  )
  _, m = jax.jit(train.make_train_step(model.apply, opt, weighting=hook, **kw))(state, batch)
  params = params["student"]
  w = hook(batch["teacher_logits"], batch)  # [K, B]
  np.testing.assert_allclose(m["weight_entropy"], weighting.entropy(w).mean(), rtol=1e-5)
  np.testing.assert_allclose(m["effective_num_teachers"], (1 / (w**2).sum(0)).mean(), rtol=1e-5)
  # The loss is the mixture KD with these per-example weights.
  z = model.apply(params, batch["x"])
  log_q = operators.linear(batch["teacher_logits"], temperatures=jnp.ones(3), weights=w)
  np.testing.assert_allclose(m["loss"], losses.mixture_kd(z, log_q).mean(), rtol=1e-5)
  sensitive = batch["sensitivity"] > 0
  assert np.all(np.asarray(w)[2, sensitive] >= 0.4 - 1e-6)


def test_train_step_trains_a_learned_gate_jointly():
  from mtkd_jax import objectives, operators, train

  model, batch = _step_problem()
  gate = weighting.get("learned", num_features=5 + 6, num_teachers=3, hidden=8)
  opt = optax.adam(1e-2)
  params = train.init_params(model.init, gate)(jax.random.key(0))
  state = train.TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  objective = objectives.mixture(operators.linear, temperatures=[1.0] * 3)
  step = jax.jit(
    train.make_train_step(
      model.apply, opt, objective=objective, weights=[1 / 3] * 3, weighting=gate
    )
  )
  first = None
  for _ in range(30):
    state, m = step(state, batch)
    first = m if first is None else first
  assert float(m["gate_loss"]) < float(first["gate_loss"])  # the gate learns
  z = model.apply(params["student"], batch["x"])
  w = gate(params["weighting"], batch["teacher_logits"], batch, z)
  gl = gate.loss(w, batch["teacher_logits"], batch).mean()
  np.testing.assert_allclose(first["gate_loss"], gl, rtol=1e-5)
  for part in ("student", "weighting"):  # both parts moved
    pairs = zip(jax.tree.leaves(state.params[part]), jax.tree.leaves(params[part]), strict=True)
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in pairs]
    assert max(moved) > 1e-3, part
  assert 0.0 < float(m["weight_entropy"]) < np.log(3) + 1e-6


# ---- review fixes: scores far below e^-80, and the gate loss's mask ----------------------------


def test_label_aware_orders_teachers_far_below_the_old_floor():
  """log p(y) = −100 vs −5000 (logits of ±1e4), and p(y) = 0 vs log p(y) = −90: a floor of −80
  made both pairs equal (weights [0.5, 0.5])."""
  y = np.array([1])
  far = np.array([[[0.0, -100.0, -1e4]], [[0.0, -5000.0, -1e4]]], np.float32)
  np.testing.assert_allclose(weighting.label_aware(far, y)[:, 0], [1.0, 0.0], atol=1e-6)
  excluded = np.array([[[0.0, -np.inf, -1.0]], [[0.0, -90.0, -1.0]]], np.float32)
  np.testing.assert_allclose(weighting.label_aware(excluded, y)[:, 0], [0.0, 1.0], atol=1e-6)
  # No teacher has the label: uniform (a convention), not NaN, also for a tiny τ.
  none = np.array([[[0.0, -np.inf]], [[0.0, -np.inf]]], np.float32)
  np.testing.assert_allclose(weighting.label_aware(none, y, tau=1e-6)[:, 0], [0.5, 0.5])


def test_gate_loss_value_gradient_and_mask_shape():
  y = np.array([1])
  far = np.array([[[0.0, -100.0, -1e4]], [[0.0, -5000.0, -1e4]]], np.float32)
  w = jnp.array([0.5, 0.5])
  np.testing.assert_allclose(weighting.gate_loss(w, far, y), [100.0 + np.log(2.0)], rtol=1e-6)
  g = jax.grad(lambda w: weighting.gate_loss(w, far, y).sum())(w)
  np.testing.assert_allclose(g, [-2.0, 0.0], atol=1e-5)
  z = np.random.default_rng(0).normal(size=(2, 3, 6)).astype(np.float32)
  with pytest.raises(ValueError, match=r"where.*\(3, 1\)"):
    weighting.gate_loss(w, z, np.array([0, 1, 2]), where=np.ones((3, 1), bool))


# ---- property 5: stability under perturbed teachers; the product's degenerate case -------------
def test_stability_measured_within_the_bounds_and_the_argmax_switch_fails():
  from mtkd_jax import weighting_stability

  schemes, bounds = weighting_checks.builtin_schemes(), weighting_checks.builtin_bounds()
  for name in ("label_aware", "confidence(max_prob)", "learned"):
    r = weighting_checks.check(
      schemes[name], name=name, stability_bounds=bounds[name], only=(5,), **FAST
    )
    assert r.passed[5] and r.counterexamples[5] is None, (name, r.values)
    assert "≤" in r.values[5]
  label_aware = weighting_checks.check(
    schemes["label_aware"], stability_bounds=bounds["label_aware"], only=(5,), **FAST
  )
  assert float(label_aware.values[5].split(" ≤")[0]) > 0.5  # the bound 1/τ is nearly reached
  r = weighting_checks.check(schemes["naive: argmax switch"], name="argmax", only=(5,), **FAST)
  assert not r.passed[5]
  c = r.counterexamples[5]
  assert c.axiom == 5 and c.value > weighting_stability.UNBOUNDED_LIMIT
  moved = np.abs(c.inputs["other_weights"] - c.inputs["weights"]).sum(0).max()
  delta = np.abs(c.inputs["other_teacher_logits"] - c.inputs["teacher_logits"]).max()
  assert moved > 1.9 and delta < 1e-2  # weights 2 apart in ℓ₁ for a tiny perturbation
  assert "✗" in weighting_checks.format_table([r], counterexamples=False)


def test_a_scheme_over_its_claimed_bound_fails():
  schemes = weighting_checks.builtin_schemes()
  claimed = lambda k: (0.1, 0.0)  # label_aware reaches 1/τ = 1
  r = weighting_checks.check(schemes["label_aware"], stability_bounds=claimed, only=(5,), **FAST)
  assert not r.passed[5] and r.counterexamples[5].value > 0.1


def test_gate_lipschitz_bounds_finite_differences():
  from mtkd_jax import weighting_stability

  gate = weighting.make_gate(4, 3, hidden=8)
  params = jax.tree.map(lambda p: 3.0 * p, gate.init(jax.random.key(0)))
  bound = weighting_stability.gate_lipschitz(params, tau=0.5)
  r = np.random.default_rng(0)
  f = r.normal(size=(256, 4)).astype(np.float32)
  d = (1e-2 * np.sign(r.normal(size=f.shape))).astype(np.float32)
  w = lambda x: np.asarray(weighting.learned(gate.apply, params, x, tau=0.5))
  ratio = np.abs(w(f + d) - w(f)).sum(0) / 1e-2
  assert 0 < ratio.max() <= bound


def test_product_degenerate_case_is_defined_and_epsilon_bounds_it():
  from mtkd_jax import weighting_stability

  r = weighting_stability.product_degenerate_case()
  np.testing.assert_allclose(r["0"]["corner_weights"], [0.5, 0.5])  # defined: uniform
  assert r["0"]["bound"] is None and not r["0"]["holds"]
  assert r["0"]["weight_change_l1"] > 0.9 and r["0"]["constant"] > 1e5  # the counterexample
  for eps in ("0.01", "0.05", "0.2"):
    np.testing.assert_allclose(r[eps]["corner_weights"], [0.5, 0.5])
    assert r[eps]["holds"] and r[eps]["constant"] > 0.2 * r[eps]["bound"], r[eps]
  assert "no finite bound" in weighting_stability.format_product(r)


def test_train_step_logs_the_gate_gradient_norm():
  from mtkd_jax import objectives, operators, train

  model, batch = _step_problem()
  gate = weighting.get("learned", num_features=5 + 6, num_teachers=3, hidden=8)
  opt = optax.sgd(0.0)
  params = train.init_params(model.init, gate)(jax.random.key(0))
  state = train.TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  objective = objectives.mixture(operators.linear, temperatures=[1.0] * 3)
  step = train.make_train_step(
    model.apply, opt, objective=objective, weights=[1 / 3] * 3, weighting=gate
  )
  _, m = step(state, batch)
  z = model.apply(params["student"], batch["x"])
  loss = lambda phi: gate.loss(
    gate(phi, batch["teacher_logits"], batch, z), batch["teacher_logits"], batch
  ).mean()
  np.testing.assert_allclose(
    m["gate_grad_norm"], optax.tree.norm(jax.grad(loss)(params["weighting"])), rtol=1e-5
  )
