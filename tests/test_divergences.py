"""Tests for mtkd_jax.divergences: values, 0 · log 0 = 0, and the barycenter characterisations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from mtkd_jax import divergences


def np_kl(p, q):
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0), axis=-1)


def random_dists(seed, shape=(2, 3, 5)):
  rng = np.random.default_rng(seed)
  a, b = rng.normal(size=shape) * 2, rng.normal(size=shape) * 2
  return np.asarray(jax.nn.log_softmax(a, -1)), np.asarray(jax.nn.log_softmax(b, -1))


# ---------------------------------------------------------------------------------------------
# Hand-computed values.
# ---------------------------------------------------------------------------------------------


def test_kl_hand_computed():
  # KL([.5, .5] ‖ [.25, .75]) = .5 ln 2 + .5 ln(2/3) = .143841.
  log_p, log_q = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.25, 0.75]))
  np.testing.assert_allclose(divergences.kl_divergence(log_p, log_q), 0.143841, atol=1e-6)
  # forward_kl(q, p) = KL(q ‖ p) and reverse_kl(q, p) = KL(p ‖ q):
  # KL([.25, .75] ‖ [.5, .5]) = .25 ln .5 + .75 ln 1.5 = .130812.
  np.testing.assert_allclose(divergences.forward_kl(log_q, log_p), 0.130812, atol=1e-6)
  np.testing.assert_allclose(divergences.reverse_kl(log_q, log_p), 0.143841, atol=1e-6)


def test_squared_hellinger_hand_computed():
  # (√.25 − √.5)² + (√.75 − √.5)² = .042893 + .026612 = .069505.
  log_a, log_b = jnp.log(jnp.array([0.25, 0.75])), jnp.log(jnp.array([0.5, 0.5]))
  expected = (0.5 - np.sqrt(0.5)) ** 2 + (np.sqrt(0.75) - np.sqrt(0.5)) ** 2
  np.testing.assert_allclose(divergences.squared_hellinger(log_a, log_b), expected, atol=1e-6)
  # disjoint supports: the maximum, 2.
  one_hot = jnp.log(jnp.array([[1.0, 0.0], [0.0, 1.0]]))
  np.testing.assert_allclose(divergences.squared_hellinger(one_hot[0], one_hot[1]), 2.0)


def test_zero_log_zero_is_zero_and_support_mismatch_is_inf():
  log_p = jnp.log(jnp.array([0.0, 0.4, 0.6]))
  log_q = jnp.log(jnp.array([0.2, 0.4, 0.4]))
  np.testing.assert_allclose(divergences.kl_divergence(log_p, log_q), 0.6 * np.log(1.5), atol=1e-6)
  assert divergences.kl_divergence(log_q, log_p) == np.inf  # q > 0 where p = 0
  both = jnp.log(jnp.array([0.0, 1.0]))
  assert divergences.kl_divergence(both, both) == 0.0


def test_names():
  assert divergences.DIVERGENCES["kl"] is divergences.forward_kl
  assert divergences.DIVERGENCES["reverse_kl"] is divergences.reverse_kl
  assert divergences.DIVERGENCES["hellinger"] is divergences.squared_hellinger


# ---------------------------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1))
def test_kl_matches_reference_and_is_non_negative(seed):
  log_p, log_q = random_dists(seed)
  kl = np.asarray(divergences.kl_divergence(log_p, log_q))
  assert kl.shape == (2, 3)
  np.testing.assert_allclose(kl, np_kl(np.exp(log_p), np.exp(log_q)), atol=2e-6)
  assert np.all(kl >= -1e-6)
  np.testing.assert_allclose(divergences.kl_divergence(log_p, log_p), 0.0, atol=1e-6)


@given(seed=st.integers(0, 2**32 - 1))
def test_axis_argument(seed):
  log_p, log_q = random_dists(seed)
  moved = divergences.kl_divergence(np.moveaxis(log_p, -1, 0), np.moveaxis(log_q, -1, 0), axis=0)
  np.testing.assert_allclose(moved, divergences.kl_divergence(log_p, log_q), atol=1e-6)


@pytest.mark.parametrize(
  ("name", "closed_form"),
  [
    ("reverse_kl", lambda p, w: np.einsum("k,kv->v", w, p)),
    ("kl", lambda p, w: np.exp(np.einsum("k,kv->v", w, np.log(p)))),
    ("hellinger", lambda p, w: np.einsum("k,kv->v", w, np.sqrt(p)) ** 2),
  ],
)
def test_closed_form_is_the_weighted_minimiser(name, closed_form):
  """argmin_q Σ_k w_k D(q, p_k) is the closed form: random perturbations never improve it."""
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(5), size=3)  # [K, V]
  w = rng.dirichlet(np.ones(3))
  q = closed_form(p, w)
  q = q / q.sum()
  d = divergences.DIVERGENCES[name]
  with jax.enable_x64(True):
    objective = lambda q: float(sum(w[k] * d(jnp.log(q), jnp.log(p[k])) for k in range(3)))
    best = objective(q)
    for _ in range(20):
      other = q * np.exp(0.05 * rng.normal(size=5))
      assert objective(other / other.sum()) > best


def test_gradients_float64():
  log_p, log_q = random_dists(1, (2, 4))
  with jax.enable_x64(True):
    for d in (divergences.kl_divergence, divergences.forward_kl, divergences.squared_hellinger):
      f = jax.jit(lambda a, b, d=d: jnp.sum(d(jax.nn.log_softmax(a), jax.nn.log_softmax(b))))
      args = (jnp.asarray(log_p, jnp.float64), jnp.asarray(log_q, jnp.float64))
      check_grads(f, args, order=1, modes=["rev"])


def test_finite_gradients_with_masked_target():
  log_p = jnp.log(jnp.array([[0.0, 0.4, 0.6], [0.5, 0.0, 0.5]]))  # -inf target entries
  z = jnp.array([[0.1, -0.3, 0.2], [1.0, 0.0, -1.0]])
  g_z = jax.grad(lambda z: jnp.sum(divergences.kl_divergence(log_p, jax.nn.log_softmax(z))))(z)
  g_p = jax.grad(lambda lp: jnp.sum(divergences.kl_divergence(lp, jax.nn.log_softmax(z))))(log_p)
  assert np.all(np.isfinite(np.asarray(g_z))) and np.all(np.isfinite(np.asarray(g_p)))
  # d/dz KL(p ‖ softmax z) = softmax z − p.
  np.testing.assert_allclose(g_z, jax.nn.softmax(z) - jnp.exp(log_p), atol=1e-6)
  g_h = jax.grad(lambda lp: jnp.sum(divergences.squared_hellinger(lp, jax.nn.log_softmax(z))))(
    log_p
  )
  assert np.all(np.isfinite(np.asarray(g_h)))


# ---------------------------------------------------------------------------------------------
# KD divergences (forward KL, reverse KL, generalised JSD), composed.
# ---------------------------------------------------------------------------------------------


def np_kd(log_q, z, div, beta, ts):
  """Float64 NumPy T_S²·D(q, softmax(z / T_S)) per row."""
  q = np.exp(np.asarray(log_q, np.float64))
  u = np.asarray(z, np.float64) / ts
  p = np.exp(u - u.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  if div == "forward_kl":
    d = np_kl(q, p)
  elif div == "reverse_kl":
    d = np_kl(p, q)
  else:
    m = beta * q + (1 - beta) * p
    d = beta * np_kl(q, m) + (1 - beta) * np_kl(p, m)
  return ts**2 * d


@pytest.mark.parametrize("div", divergences.KD_DIVERGENCES)
@pytest.mark.parametrize("ts", [0.5, 1.0, 3.0])
def test_kd_divergence_matches_float64_numpy(div, ts):
  log_q, _ = random_dists(3, (4, 7))
  z = np.random.default_rng(4).normal(size=(4, 7)) * 2
  out = divergences.kd_divergence(log_q, z, divergence=div, beta=0.3, student_temperature=ts)
  np.testing.assert_allclose(out, np_kd(log_q, z, div, 0.3, ts), rtol=2e-5, atol=1e-6)
  assert np.all(np.asarray(out) >= 0)


def test_jsd_gradient_is_the_analytic_formula():
  """∂/∂z_S T_S²·JSD_β = (1 − β)·T_S·p ⊙ (log p − log m − KL(p ‖ m)), in float64."""
  log_q = np.asarray(random_dists(5, (3, 6))[0], np.float64)
  z = np.random.default_rng(6).normal(size=(3, 6))
  beta, ts = 0.8, 1.7
  with jax.enable_x64(True):
    f = lambda z: jnp.sum(
      divergences.kd_divergence(
        jnp.asarray(log_q, jnp.float64), z, divergence="jsd", beta=beta, student_temperature=ts
      )
    )
    g = np.asarray(jax.grad(f)(jnp.asarray(z, jnp.float64)))
  u = z / ts
  p = np.exp(u - u.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  log_m = np.log(beta * np.exp(log_q) + (1 - beta) * p)
  kl_pm = np.sum(p * (np.log(p) - log_m), -1, keepdims=True)
  np.testing.assert_allclose(g, (1 - beta) * ts * p * (np.log(p) - log_m - kl_pm), atol=1e-12)


def test_jsd_bounds_and_limits():
  """0 ≤ JSD_β ≤ h(β) (binary entropy, reached on disjoint supports); JSD_β/β → KL(q ‖ p) as
  β → 0; JSD_β/(1 − β) → KL(p ‖ q) as β → 1."""
  one_hot = jnp.log(jnp.array([[1.0, 0.0], [0.0, 1.0]]))
  for beta in (0.1, 0.5, 0.9):
    h = -beta * np.log(beta) - (1 - beta) * np.log(1 - beta)
    np.testing.assert_allclose(
      divergences.generalized_jsd(one_hot[0], one_hot[1], beta), h, rtol=1e-6
    )
  log_q, log_p = random_dists(7, (5,))
  with jax.enable_x64(True):
    lq, lp = jnp.asarray(log_q, jnp.float64), jnp.asarray(log_p, jnp.float64)
    small = divergences.generalized_jsd(lq, lp, 1e-6) / 1e-6
    large = divergences.generalized_jsd(lq, lp, 1 - 1e-6) / 1e-6
    np.testing.assert_allclose(small, np_kl(np.exp(log_q), np.exp(log_p)), rtol=1e-4)
    np.testing.assert_allclose(large, np_kl(np.exp(log_p), np.exp(log_q)), rtol=1e-4)


def test_kd_divergence_bad_inputs():
  log_q = jnp.log(jnp.full((2, 4), 0.25))
  with pytest.raises(ValueError, match="divergence must be one of"):
    divergences.kd_divergence(log_q, jnp.zeros((2, 4)), divergence="kl")
  with pytest.raises(ValueError, match=r"beta must be in \(0, 1\)"):
    divergences.kd_divergence(log_q, jnp.zeros((2, 4)), divergence="jsd", beta=1.0)
  with pytest.raises(ValueError, match="same shape"):
    divergences.kd_divergence(log_q, jnp.zeros((2, 5)))
