"""Tests for mtkd_jax.operators against hand-computed values and a float64 NumPy reference.

The NumPy reference below is written from the math of the paper's §II–III in the probability
domain (not by calling mtkd_jax), so agreement is evidence, not tautology.
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from mtkd_jax import operators

# ---------------------------------------------------------------------------------------------
# Independent float64 NumPy reference (paper §II–III), probability domain.
# ---------------------------------------------------------------------------------------------


def np_temper(x, temperatures):
  """p_{k,T} ∝ exp(x_k / T_k) for logits or log-probs x [K, ..., V]; -inf stays probability 0."""
  x = np.asarray(x, np.float64)
  t = np.broadcast_to(np.asarray(temperatures, np.float64), (x.shape[0],))
  y = x / t.reshape((-1,) + (1,) * (x.ndim - 1))
  y = y - y.max(axis=-1, keepdims=True)
  e = np.exp(y)
  return e / e.sum(axis=-1, keepdims=True)  # [K, ..., V]


def np_weights(weights, teacher_shape):
  w = np.asarray(weights, np.float64)
  return w.reshape(w.shape + (1,) * (len(teacher_shape) - w.ndim))  # [K, ..., 1]


def np_normalise(u):
  return u / u.sum(axis=-1, keepdims=True)


def np_linear(x, temperatures, weights):
  p, w = np_temper(x, temperatures), np_weights(weights, np.shape(x))
  return (w * p).sum(axis=0)


def np_geometric(x, temperatures, weights):
  p, w = np_temper(x, temperatures), np_weights(weights, np.shape(x))
  with np.errstate(divide="ignore"):
    return np_normalise(np.prod(p**w, axis=0))  # 0**0 = 1 in NumPy: zero weight, no veto


def np_power(alpha):
  def op(x, temperatures, weights):
    p, w = np_temper(x, temperatures), np_weights(weights, np.shape(x))
    with np.errstate(divide="ignore"):
      mean = ((w * p**alpha).sum(axis=0)) ** (1.0 / alpha)
    return np_normalise(mean)

  return op


def np_entropic(beta):
  def op(x, temperatures, weights):
    p, w = np_temper(x, temperatures), np_weights(weights, np.shape(x))
    return np_normalise(np.prod(p ** (w / (1.0 + beta)), axis=0))

  return op


def np_logsumexp(a, axis):
  m = np.max(a, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def np_log_temper(x, temperatures):
  """log p_{k,T} = x / T − logsumexp(x / T), float64: stable for logits of ±1e4."""
  x = np.asarray(x, np.float64)
  t = np.broadcast_to(np.asarray(temperatures, np.float64), (x.shape[0],))
  y = x / t.reshape((-1,) + (1,) * (x.ndim - 1))
  return y - np_logsumexp(y, -1)[..., None]


def np_log_normalise(s):
  return s - np_logsumexp(s, -1)[..., None]


def np_log_weighted_sum(log_p, w):
  """Σ_k w_k log p_k with 0 · log 0 = 0 (weight 0: no veto)."""
  terms = np.where(w > 0, w * np.where(np.isfinite(log_p), log_p, 0.0), 0.0)
  vetoed = np.any((w > 0) & ~np.isfinite(log_p), axis=0)
  return np.where(vetoed, -np.inf, terms.sum(axis=0))


def np_log_reference(name):
  """Log-space float64 versions of the closed forms, for extreme inputs (returns q, not log q)."""

  def op(x, temperatures, weights):
    log_p, w = np_log_temper(x, temperatures), np_weights(weights, np.shape(x))
    with np.errstate(divide="ignore"):
      log_w = np.log(w)
    if name == "linear":
      return np.exp(np_logsumexp(log_w + log_p, 0))
    if name == "geometric":
      return np.exp(np_log_normalise(np_log_weighted_sum(log_p, w)))
    if name == "entropic(0.5)":
      return np.exp(np_log_normalise(np_log_weighted_sum(log_p, w) / 1.5))
    alpha = {"power(-1)": -1.0, "power(0.5)": 0.5, "power(2)": 2.0}[name]
    terms = np.where(w > 0, log_w + alpha * log_p, -np.inf)  # p^α = +inf for p = 0, α < 0
    log_mean = np_logsumexp(terms, 0) / alpha
    return np.exp(np_log_normalise(log_mean))

  return op


# (jax operator, numpy reference) pairs; barycenters are compared with their closed forms.
CASES = {
  "linear": (operators.linear, np_linear),
  "geometric": (operators.geometric, np_geometric),
  "power(-1)": (operators.power(-1.0), np_power(-1.0)),
  "power(0.5)": (operators.power(0.5), np_power(0.5)),
  "power(2)": (operators.power(2.0), np_power(2.0)),
  "entropic(0.5)": (operators.entropic(0.5), np_entropic(0.5)),
  "barycenter(kl)": (operators.barycenter("kl"), np_geometric),
  "barycenter(reverse_kl)": (operators.barycenter("reverse_kl"), np_linear),
  "barycenter(hellinger)": (operators.barycenter("hellinger"), np_power(0.5)),
}
CLOSED_FORM = {k: v for k, v in CASES.items() if not k.startswith("barycenter")}
ALL_OPS = {k: v[0] for k, v in CASES.items()}
REFERENCE_NAME = dict(
  {k: k for k in CLOSED_FORM},
  **{
    "barycenter(kl)": "geometric",
    "barycenter(reverse_kl)": "linear",
    "barycenter(hellinger)": "power(0.5)",
  },
)


def random_inputs(seed, num_teachers, batch_shape, vocab, weight_rank=1, scale=2.0):
  """Fresh random logits [K, *batch, V], temperatures [K] in [0.3, 3], weights [K, *batch[:r-1]]."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_teachers, *batch_shape, vocab)) * scale
  t = rng.uniform(0.3, 3.0, size=num_teachers)
  w_shape = (num_teachers, *batch_shape[: weight_rank - 1])
  w = rng.uniform(0.05, 1.0, size=w_shape)
  w = w / w.sum(axis=0, keepdims=True)
  return x.astype(np.float32), t.astype(np.float32), w.astype(np.float32)


_JITTED = {}


def run(op, x, t, w):
  """op(x, temperatures=t, weights=w); barycenters run jitted (eager, each call recompiles the
  mirror-descent loop). Tests of the eager path call the operators directly."""
  if op.__name__.startswith("barycenter"):
    if op not in _JITTED:
      _JITTED[op] = jax.jit(lambda x, t, w: op(x, temperatures=t, weights=w))
    return _JITTED[op](jnp.asarray(x), jnp.asarray(t), jnp.asarray(w))
  return op(jnp.asarray(x), temperatures=jnp.asarray(t), weights=jnp.asarray(w))


def assert_matches_reference(log_q, q_ref, prob_atol=1e-6, log_atol=2e-5, log_rtol=1e-5):
  log_q = np.asarray(log_q)
  assert log_q.dtype == np.float32
  np.testing.assert_allclose(np.exp(log_q.astype(np.float64)), q_ref, rtol=0, atol=prob_atol)
  np.testing.assert_allclose(log_q, np.log(q_ref), rtol=log_rtol, atol=log_atol)


# ---------------------------------------------------------------------------------------------
# Hand-computed values.
# ---------------------------------------------------------------------------------------------

P2 = np.log(np.array([[0.9, 0.1], [0.5, 0.5]]))  # two teachers, V = 2
HALF = np.array([0.5, 0.5])


@pytest.mark.parametrize(
  ("op", "expected"),
  [
    (operators.linear, [0.7, 0.3]),
    # sqrt(.9 * .5) = .670820, sqrt(.1 * .5) = .223607 -> normalised .75, .25.
    (operators.geometric, [0.75, 0.25]),
    # ((√.9 + √.5) / 2)² = .685410, ((√.1 + √.5) / 2)² = .261803 -> / .947214.
    (operators.power(0.5), [0.685410 / 0.947214, 0.261803 / 0.947214]),
    # (.5 · .9² + .5 · .5²)^(1/2) = √.53 = .728011, (.5 · .1² + .5 · .5²)^(1/2) = √.13 = .360555.
    (operators.power(2.0), [0.728011 / 1.088566, 0.360555 / 1.088566]),
    # harmonic: 1 / (.5/.9 + .5/.5) = .642857, 1 / (.5/.1 + .5/.5) = .166667.
    (operators.power(-1.0), [0.642857 / 0.809524, 0.166667 / 0.809524]),
    # √.45^(1/1.5) = .766309, √.05^(1/1.5) = .368403.
    (operators.entropic(0.5), [0.766309 / 1.134712, 0.368403 / 1.134712]),
  ],
)
def test_hand_computed_two_teachers(op, expected):
  q = np.exp(np.asarray(op(jnp.asarray(P2), temperatures=jnp.ones(2), weights=jnp.asarray(HALF))))
  np.testing.assert_allclose(q, expected, atol=2e-6)


def test_hand_computed_temperatures_and_weights_v3():
  # Teacher logits [0, ln 2, ln 4] at T=1 give p = [1, 2, 4]/7; at T=2 teacher 2 logits
  # [0, 2 ln 2, 0] give exp(z/2) = [1, 2, 1] -> p = [1, 2, 1]/4.
  x = np.array([[0.0, np.log(2), np.log(4)], [0.0, 2 * np.log(2), 0.0]])
  t, w = np.array([1.0, 2.0]), np.array([0.25, 0.75])
  lin = np.exp(np.asarray(run(operators.linear, x, t, w)))
  np.testing.assert_allclose(lin, 0.25 * np.array([1, 2, 4]) / 7 + 0.75 * np.array([1, 2, 1]) / 4)
  # geometric on logits: softmax(Σ w z / T) = softmax([0, .25 ln2 + .75 ln2, .25 ln4]) ∝ [1, 2, √2].
  geo = np.exp(np.asarray(run(operators.geometric, x, t, w)))
  np.testing.assert_allclose(geo, np.array([1, 2, np.sqrt(2)]) / (3 + np.sqrt(2)), atol=1e-6)


def expected_single_teacher(name, x, t):
  """K = 1 (or all weight on one teacher) gives the tempered teacher; entropic(β) flattens it.

  entropic(β) is q ∝ p_T^{1/(1+β)}, i.e. the teacher at temperature T (1 + β), by definition.
  """
  return np_temper(x, t * 1.5) if name == "entropic(0.5)" else np_temper(x, t)


def test_one_weight_is_that_teacher():
  x, t, _ = random_inputs(0, 3, (2,), 5)
  w = np.array([0.0, 1.0, 0.0], np.float32)
  for name, op in ALL_OPS.items():
    np.testing.assert_allclose(
      np.exp(run(op, x, t, w)), expected_single_teacher(name, x, t)[1], atol=1e-6, err_msg=name
    )


# ---------------------------------------------------------------------------------------------
# Against the float64 reference on random inputs, including per-position weights.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
  ("batch_shape", "weight_rank"),
  [((2,), 2), ((2, 3), 1), ((2, 3), 2), ((2, 3), 3)],  # B-w[K]: in the property test below
  ids=["B-w[K,B]", "BS-w[K]", "BS-w[K,B]", "BS-w[K,B,S]"],
)
def test_matches_float64_reference(name, batch_shape, weight_rank):
  op, ref = CASES[name]
  x, t, w = random_inputs(
    zlib.crc32(f"{name}{batch_shape}{weight_rank}".encode()), 3, batch_shape, 5, weight_rank
  )
  assert_matches_reference(run(op, x, t, w), ref(x, t, w))


# Shapes are drawn from a few values: every new shape costs compilations in eager mode.
@given(
  seed=st.integers(0, 2**32 - 1),
  num_teachers=st.sampled_from([1, 3]),
  vocab=st.sampled_from([2, 5]),
  weight_rank=st.integers(1, 2),
  name=st.sampled_from(sorted(CLOSED_FORM)),
)
def test_matches_float64_reference_property(seed, num_teachers, vocab, weight_rank, name):
  op, ref = CLOSED_FORM[name]
  x, t, w = random_inputs(seed, num_teachers, (2,), vocab, weight_rank)
  assert_matches_reference(run(op, x, t, w), ref(x, t, w))


def test_log_probs_and_logits_give_the_same_result():
  x, t, w = random_inputs(1, 3, (2,), 5)
  log_probs = np.asarray(jax.nn.log_softmax(x, axis=-1))
  for name, op in ALL_OPS.items():
    np.testing.assert_allclose(run(op, x, t, w), run(op, log_probs, t, w), atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------------------------


@given(
  seed=st.integers(0, 2**32 - 1),
  num_teachers=st.sampled_from([1, 3]),
  vocab=st.sampled_from([1, 5]),
  name=st.sampled_from(sorted(CLOSED_FORM)),
)
def test_normalised(seed, num_teachers, vocab, name):
  x, t, w = random_inputs(seed, num_teachers, (2, 3), vocab, weight_rank=2, scale=5.0)
  q = np.exp(np.asarray(run(ALL_OPS[name], x, t, w), np.float64))
  assert np.all(q >= 0)
  np.testing.assert_allclose(q.sum(axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("barycenter")])
def test_barycenter_normalised(name):
  x, t, w = random_inputs(2, 3, (2, 3), 5, weight_rank=3, scale=5.0)
  q = np.exp(np.asarray(run(ALL_OPS[name], x, t, w), np.float64))
  assert np.all(q >= 0)
  np.testing.assert_allclose(q.sum(axis=-1), 1.0, atol=1e-6)


@given(seed=st.integers(0, 2**32 - 1), vocab=st.sampled_from([2, 5]), temp=st.floats(0.2, 5.0))
def test_single_teacher_is_the_tempered_teacher(seed, vocab, temp):
  x, _, _ = random_inputs(seed, 1, (2,), vocab)
  t = np.array([temp], np.float32)
  for name, op in ALL_OPS.items():
    if name.startswith("barycenter") and seed % 5:  # barycenters compile a loop: sample a few.
      continue
    expected = expected_single_teacher(name, x, t)[0]
    np.testing.assert_allclose(np.exp(run(op, x, t, np.ones(1))), expected, atol=1e-6, err_msg=name)


@given(
  seed=st.integers(0, 2**32 - 1), num_teachers=st.integers(2, 4), weight_rank=st.integers(1, 2)
)
def test_power_one_is_linear(seed, num_teachers, weight_rank):
  x, t, w = random_inputs(seed, num_teachers, (2,), 5, weight_rank)
  np.testing.assert_allclose(
    np.exp(run(operators.power(1.0), x, t, w)), np.exp(run(operators.linear, x, t, w)), atol=1e-6
  )


@given(seed=st.integers(0, 2**32 - 1), num_teachers=st.sampled_from([2, 3]))
def test_power_alpha_to_zero_tends_to_geometric(seed, num_teachers):
  # (Σ w p^α)^{1/α} = exp(Σ w log p + α/2 Var_w[log p] + O(α²)): with log p of order 10 the
  # exact gap at α = 1e-3 is below ~5e-3 in q. Stated tolerance at α = 1e-3: q within 1e-2 of
  # the geometric pool, and within 1e-4 of the float64 power(1e-3) (float32 loses ~eps/α here).
  x, t, w = random_inputs(seed, num_teachers, (2,), 5)
  geo = np.exp(np.asarray(run(operators.geometric, x, t, w), np.float64))
  q = np.exp(np.asarray(run(operators.power(1e-3), x, t, w), np.float64))
  np.testing.assert_allclose(q, geo, atol=1e-2)
  np.testing.assert_allclose(q, np_power(1e-3)(x, t, w), atol=1e-4)
  # exactly zero uses the geometric pool.
  np.testing.assert_allclose(run(operators.power(0.0), x, t, w), run(operators.geometric, x, t, w))


@pytest.mark.parametrize("alpha", [1e-5, 1e-7, -1e-6])
def test_power_tiny_alpha_is_close_to_geometric(alpha):
  # The exact gap is ≤ |α|/2 · Var_w[log p] · q ≈ 1e-5 or less here; float32 may add ~1e-6.
  # A naive log-space (Σ w p^α)^{1/α} divides float32 rounding of order 1e-7 by α.
  x, t, w = random_inputs(16, 3, (2,), 5)
  q = np.exp(np.asarray(run(operators.power(alpha), x, t, w), np.float64))
  exact_gap = np.abs(np_power(alpha)(x, t, w) - np_geometric(x, t, w)).max()
  assert exact_gap < 1e-4
  np.testing.assert_allclose(q, np_geometric(x, t, w), atol=exact_gap + 1e-4)


@given(
  seed=st.integers(0, 2**32 - 1), num_teachers=st.integers(1, 4), weight_rank=st.integers(1, 2)
)
def test_entropic_zero_is_geometric(seed, num_teachers, weight_rank):
  x, t, w = random_inputs(seed, num_teachers, (2,), 5, weight_rank)
  np.testing.assert_allclose(
    run(operators.entropic(0.0), x, t, w), run(operators.geometric, x, t, w), atol=1e-6
  )


@pytest.mark.parametrize("name", list(CASES))
def test_jit_equals_no_jit(name):
  op = ALL_OPS[name]
  x, t, w = random_inputs(3, 3, (2, 3), 5, weight_rank=2)
  eager = op(jnp.asarray(x), temperatures=jnp.asarray(t), weights=jnp.asarray(w))
  jitted = jax.jit(lambda x, t, w: op(x, temperatures=t, weights=w))(x, t, w)
  np.testing.assert_allclose(jitted, eager, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_vmap_equals_batched_call(name):
  op = ALL_OPS[name]
  x, t, w = random_inputs(4, 3, (2,), 5, weight_rank=2)  # x [K, B, V], w [K, B]
  batched = run(op, x, t, w)  # [B, V]
  single = lambda xb, wb: op(xb, temperatures=t, weights=wb)  # xb [K, V], wb [K]
  mapped = jax.vmap(single, in_axes=(1, 1))(jnp.asarray(x), jnp.asarray(w))
  np.testing.assert_allclose(mapped, batched, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_float64(name):
  """check_grads in float64 w.r.t. teacher logits, temperatures and (softmax-parameterised) w."""
  x, t, w = random_inputs(5, 3, (2,), 5)
  readout = jnp.asarray(np.random.default_rng(6).normal(size=(2, 5)))
  with jax.enable_x64(True):
    op = ALL_OPS[name]
    if name.startswith("barycenter"):  # rebuild so the loop traces in float64
      op = operators.barycenter(name[len("barycenter(") : -1], num_steps=30)
    x64, t64 = jnp.asarray(x, jnp.float64), jnp.asarray(t, jnp.float64)
    theta = jnp.log(jnp.asarray(w, jnp.float64))
    r64 = jnp.asarray(readout, jnp.float64)

    @jax.jit
    def f(x, log_t, theta):
      log_q = op(x, temperatures=jnp.exp(log_t), weights=jax.nn.softmax(theta))
      assert log_q.dtype == jnp.float64
      return jnp.sum(jnp.exp(log_q) * r64) + jnp.sum(log_q * r64)

    check_grads(f, (x64, jnp.log(t64), theta), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Extremes: huge logits, extreme temperatures, masked tokens, bfloat16.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("temp", [1e-3, 1.0, 1e3])
def test_huge_logits_are_finite_and_normalised(name, temp):
  rng = np.random.default_rng(7)
  x = (rng.choice([-1e4, 1e4], size=(3, 2, 5)) + rng.normal(size=(3, 2, 5))).astype(np.float32)
  t = np.full(3, temp, np.float32)
  w = np.array([0.2, 0.3, 0.5], np.float32)
  log_q = np.asarray(run(ALL_OPS[name], x, t, w))
  assert not np.any(np.isnan(log_q))
  q = np.exp(log_q.astype(np.float64))
  np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-6)
  # Against the float64 log-space closed form of the same float32 inputs. Float32 spacing at
  # |z| = 1e4 is 1e-3, so scores such as Σ_k w_k z_k / T_k carry errors of ~1e-3 nats: q can
  # only be trusted to ~1e-3 here (measured: ≤ 2.4e-4).
  ref = np_log_reference(REFERENCE_NAME[name])(x, t, w)
  np.testing.assert_allclose(q, ref, atol=1e-3)


@pytest.mark.parametrize("name", list(CASES))
def test_huge_logits_gradients_are_finite(name):
  rng = np.random.default_rng(17)
  x = (rng.choice([-1e4, 1e4], size=(3, 2, 5)) + rng.normal(size=(3, 2, 5))).astype(np.float32)
  t = np.array([1e-3, 1.0, 1e3], np.float32)
  w = np.array([0.2, 0.3, 0.5], np.float32)
  readout = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
  f = lambda x, t, theta: jnp.sum(
    jnp.exp(ALL_OPS[name](x, temperatures=t, weights=jax.nn.softmax(theta))) * readout
  )
  grads = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(x, t, jnp.log(w))
  for g, arg in zip(grads, ("teacher_logits", "temperatures", "weights"), strict=True):
    assert np.all(np.isfinite(np.asarray(g))), f"{name}: non-finite gradient w.r.t. {arg}: {g}"


def test_small_temperature_is_one_hot_and_ties_share_mass():
  # Teacher 0 has a tie between tokens 0 and 1; teacher 1 peaks at token 2.
  x = np.array([[[3.0, 3.0, 0.0, -1.0]], [[0.0, 1.0, 2.0, 1.9]]], np.float32)
  t = np.full(2, 1e-3, np.float32)
  w = np.array([0.4, 0.6], np.float32)
  lin = np.exp(np.asarray(run(operators.linear, x, t, w)))[0]
  np.testing.assert_allclose(lin, [0.2, 0.2, 0.6, 0.0], atol=1e-6)
  # K = 1 for every operator: one-hot at the argmax, ties share equally.
  for name, op in ALL_OPS.items():
    q = np.exp(np.asarray(run(op, x[:1], t[:1], np.ones(1))))[0]
    np.testing.assert_allclose(q, [0.5, 0.5, 0.0, 0.0], atol=1e-6, err_msg=name)
    q = np.exp(np.asarray(run(op, x[1:], t[:1], np.ones(1))))[0]
    np.testing.assert_allclose(q, [0.0, 0.0, 1.0, 0.0], atol=1e-6, err_msg=name)


def test_large_temperature_is_near_uniform():
  x, _, w = random_inputs(8, 3, (2,), 5)  # logits of order 2
  t = np.full(3, 1e3, np.float32)
  for name, op in ALL_OPS.items():
    q = np.exp(np.asarray(run(op, x, t, w)))
    # |z/T| ≲ 1e-2 so q = 1/V up to ~1e-2 relative.
    np.testing.assert_allclose(q, 0.2, atol=1e-2, err_msg=name)


def masked_inputs(seed=9):
  """Logits [K=3, B=2, V=5]: token 0 masked by every teacher, token 3 by teacher 1 only."""
  x, t, w = random_inputs(seed, 3, (2,), 5)
  x[:, :, 0] = -np.inf
  x[1, :, 3] = -np.inf
  return x, t, w


@pytest.mark.parametrize("name", list(CASES))
def test_masked_tokens_forward(name):
  x, t, w = masked_inputs()
  log_q = np.asarray(run(ALL_OPS[name], x, t, w))
  assert not np.any(np.isnan(log_q))
  q = np.exp(log_q.astype(np.float64))
  if name.startswith("barycenter"):
    # The mirror descent floors log q inside the iteration (operators._LOG_FLOOR), so a masked
    # token keeps a tiny mass instead of exactly 0: we accept up to 1e-6.
    zero = q < 1e-6
  else:
    zero = log_q == -np.inf  # exactly 0
  assert np.all(zero[:, 0])  # masked by all teachers
  if REFERENCE_NAME[name] in {"linear", "power(0.5)", "power(2)"}:  # a mean: kept
    assert np.all(np.isfinite(log_q[:, 1:]))
  else:  # geometric, entropic, power(α < 0), barycenter(kl): a veto
    assert np.all(zero[:, 3]), f"token 3 not vetoed: q[:, 3] = {q[:, 3]}, w = {w}"
  np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(q, CASES[name][1](x, t, w), atol=1e-6)


def masked_readout_loss(op, readout):
  """A loss that reads q only on finite entries (as a KD loss does via 0 · log 0 = 0)."""

  def f(x, t, theta):
    log_q = op(x, temperatures=t, weights=jax.nn.softmax(theta))
    finite = jnp.isfinite(log_q)
    return jnp.sum(jnp.where(finite, jnp.exp(log_q) * readout + 0.1 * log_q, 0.0))

  return f


@pytest.mark.parametrize("name", list(CASES))
def test_masked_tokens_gradients_are_finite(name):
  """Gradients w.r.t. the logits and the weights stay finite with -inf entries."""
  x, t, w = masked_inputs()
  readout = jnp.asarray(np.random.default_rng(10).normal(size=(2, 5)), jnp.float32)
  f = masked_readout_loss(ALL_OPS[name], readout)
  grad_f = jax.jit(jax.grad(f, argnums=(0, 2)))
  grads = grad_f(jnp.asarray(x), jnp.asarray(t), jnp.log(jnp.asarray(w)))
  for g, arg in zip(grads, ("teacher_logits", "weights"), strict=True):
    assert np.all(np.isfinite(np.asarray(g))), f"{name}: non-finite gradient w.r.t. {arg}: {g}"


@pytest.mark.parametrize("name", ["linear", "geometric", "power(2)"])
def test_masked_tokens_temperature_gradients_are_finite(name):
  """d log q / d T stays finite with -inf entries (learned or scheduled temperatures)."""
  x, t, w = masked_inputs()
  readout = jnp.asarray(np.random.default_rng(10).normal(size=(2, 5)), jnp.float32)
  f = masked_readout_loss(ALL_OPS[name], readout)
  g = jax.jit(jax.grad(f, argnums=1))(jnp.asarray(x), jnp.asarray(t), jnp.log(jnp.asarray(w)))
  assert np.all(np.isfinite(np.asarray(g))), f"{name}: non-finite gradient w.r.t. T: {g}"


def test_masked_tokens_finite_gradient_matches_finite_differences():
  # Finite difference on the unmasked entries of the linear operator with masked tokens.
  x, t, w = masked_inputs()
  readout = np.random.default_rng(11).normal(size=(2, 5))
  with jax.enable_x64(True):
    x64 = jnp.asarray(x, jnp.float64)

    @jax.jit
    def f(free):  # free: the finite entries of teacher 0
      xx = x64.at[0, :, 1:].set(free)
      return jnp.sum(jnp.exp(operators.linear(xx, temperatures=t, weights=w)) * readout)

    check_grads(f, (x64[0, :, 1:],), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_is_computed_in_float32(name):
  x, t, w = random_inputs(12, 3, (2, 3), 5, weight_rank=2)
  x16 = jnp.asarray(x, jnp.bfloat16)
  log_q16 = ALL_OPS[name](x16, temperatures=jnp.asarray(t), weights=jnp.asarray(w))
  assert log_q16.dtype == jnp.float32
  log_q32 = run(ALL_OPS[name], np.asarray(x16.astype(jnp.float32)), t, w)
  np.testing.assert_allclose(log_q16, log_q32, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_weights_and_temperatures_give_normalised_q(name):
  # bfloat16 cannot represent 1/3: the weights sum to 1.00195. check_weights accepts that
  # rounding (atol 1e-2 for 16-bit weights), so the operator must still return a distribution.
  x, _, _ = random_inputs(13, 3, (2,), 5)
  w16 = jnp.full(3, 1 / 3, jnp.bfloat16)
  t16 = jnp.asarray([0.5, 1.0, 2.0], jnp.bfloat16)
  log_q = ALL_OPS[name](jnp.asarray(x, jnp.bfloat16), temperatures=t16, weights=w16)
  assert log_q.dtype == jnp.float32
  np.testing.assert_allclose(np.exp(np.asarray(log_q, np.float64)).sum(-1), 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument and its shape, raised before any compute.
# ---------------------------------------------------------------------------------------------


X_BAD = np.random.default_rng(14).normal(size=(3, 2, 4)).astype(np.float32)
T_OK = np.ones(3, np.float32)
W_OK = np.array([0.2, 0.3, 0.5], np.float32)


@pytest.fixture
def no_compute(monkeypatch):
  """Makes any tempering (the first computation of every operator) fail loudly."""
  from mtkd_jax import temperature

  def boom(*args, **kwargs):
    raise AssertionError("compute started before the input check")

  monkeypatch.setattr(temperature, "scale", boom)
  monkeypatch.setattr(jax.nn, "log_softmax", boom)


BAD_CASES = {
  "negative weight": (dict(weights=np.array([-0.2, 0.7, 0.5])), r"weights.*shape=\(3,\)"),
  "nan weight": (dict(weights=np.array([np.nan, 0.5, 0.5])), r"weights.*shape=\(3,\)"),
  "weights sum 0.9": (dict(weights=np.array([0.2, 0.2, 0.5])), r"weights.*sum to 1.*shape=\(3,\)"),
  "weights sum 2": (dict(weights=np.ones((3, 2))), r"weights.*sum to 1.*shape=\(3, 2\)"),
  "weights K=2": (dict(weights=np.array([0.5, 0.5])), r"weights.*shape=\(2,\)"),
  "weights wrong axis": (dict(weights=np.full((3, 3), 1 / 3)), r"weights.*shape=\(3, 3\)"),
  "weights too many dims": (dict(weights=np.full((3, 2, 4), 1 / 3)), r"weights.*shape=\(3, 2, 4\)"),
  "T = 0": (dict(temperatures=np.array([1.0, 0.0, 1.0])), r"temperatures.*shape=\(3,\)"),
  "T < 0": (dict(temperatures=np.array([1.0, -1.0, 1.0])), r"temperatures.*shape=\(3,\)"),
  "T nan": (dict(temperatures=np.array([1.0, np.nan, 1.0])), r"temperatures.*shape=\(3,\)"),
  "T scalar 0": (dict(temperatures=0.0), r"temperatures.*shape=\(\)"),
  "T K=2": (dict(temperatures=np.ones(2)), r"temperatures.*shape=\(2,\)"),
  "T 2-d": (dict(temperatures=np.ones((3, 1))), r"temperatures.*shape=\(3, 1\)"),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_before_compute(name, case, no_compute):
  kwargs, pattern = BAD_CASES[case]
  kwargs = dict(dict(temperatures=T_OK, weights=W_OK), **kwargs)
  with pytest.raises(ValueError, match=pattern):
    ALL_OPS[name](X_BAD, **kwargs)


def test_bad_teacher_shape():
  with pytest.raises(ValueError, match=r"teacher_logits.*shape=\(4,\)"):
    operators.linear(np.zeros(4), temperatures=1.0, weights=np.ones(1))


def test_factories_reject_bad_hyperparameters():
  with pytest.raises(ValueError, match="alpha"):
    operators.power(np.inf)
  with pytest.raises(ValueError, match="beta"):
    operators.entropic(-0.1)
  with pytest.raises(ValueError, match=r"divergence.*hellinger"):
    operators.barycenter("wasserstein")
  with pytest.raises(ValueError, match="step_size"):
    operators.barycenter("kl", step_size=0.0)


# ---------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------


def test_registry_get():
  assert operators.get("linear") is operators.linear
  assert operators.get("geometric") is operators.geometric
  assert set(operators.names()) >= {"linear", "geometric", "power", "entropic", "barycenter"}
  x, t, w = random_inputs(15, 3, (2,), 5)
  for name, kwargs, ref in [
    ("power", dict(alpha=2.0), np_power(2.0)),
    ("entropic", dict(beta=0.5), np_entropic(0.5)),
    ("barycenter", dict(divergence="hellinger"), np_power(0.5)),
  ]:
    np.testing.assert_allclose(
      np.exp(run(operators.get(name, **kwargs), x, t, w)), ref(x, t, w), atol=1e-6
    )


def test_registry_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"'nope'.*barycenter.*entropic.*geometric.*linear.*power"):
    operators.get("nope")
  with pytest.raises(ValueError, match="linear"):
    operators.get("linear", alpha=1.0)
  assert operators.get("power(alpha=0.5)").__name__ == operators.get("power", alpha=0.5).__name__


@pytest.mark.parametrize("name", ["linear", "geometric"])
def test_integer_one_hot_weights_equal_float_weights(name):
  lp = jnp.log(jnp.array([[0.2, 0.8], [0.6, 0.4]]))
  op = operators.get(name)
  np.testing.assert_allclose(
    op(lp, temperatures=1.0, weights=np.array([0, 1])),
    op(lp, temperatures=1.0, weights=np.array([0.0, 1.0])),
  )
