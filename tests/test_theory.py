"""Tests for mtkd_jax.theory: the paper's quantities (paper §IV–V) against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtkd_jax import operators, theory


def np_temper(x, t):
  y = np.asarray(x, np.float64) / np.asarray(t, np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
  e = np.exp(y - y.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def np_kl(p, q):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0), axis=-1)


def random_teachers(seed, num_teachers=3, batch=(2, 3), vocab=5, weight_rank=1):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(num_teachers, *batch, vocab)) * 2).astype(np.float32)
  t = rng.uniform(0.5, 2.0, size=num_teachers).astype(np.float32)
  w = rng.uniform(0.1, 1.0, size=(num_teachers, *batch[: weight_rank - 1]))
  w = (w / w.sum(axis=0)).astype(np.float32)
  return x, t, w, w.reshape(w.shape + (1,) * (x.ndim - w.ndim)).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Hand-computed values.
# ---------------------------------------------------------------------------------------------

P2 = np.log(np.array([[0.9, 0.1], [0.5, 0.5]], np.float32))
HALF = np.array([0.5, 0.5], np.float32)


def test_cross_teacher_variance_hand_computed():
  # q = [.7, .3]; Σ w p² − q² = [.5 (.81 + .25) − .49, .5 (.01 + .25) − .09] = [.04, .04].
  var = theory.cross_teacher_variance(P2, weights=HALF)
  np.testing.assert_allclose(var, [0.04, 0.04], atol=1e-6)


def test_jensen_gap_hand_computed():
  # q = [.7, .3]: .5 (.9 ln(.9/.7) + .1 ln(.1/.3)) + .5 (.5 ln(.5/.7) + .5 ln(.5/.3)).
  expected = 0.5 * (0.9 * np.log(0.9 / 0.7) + 0.1 * np.log(0.1 / 0.3)) + 0.5 * (
    0.5 * np.log(0.5 / 0.7) + 0.5 * np.log(0.5 / 0.3)
  )
  gap = theory.jensen_gap(P2, temperatures=np.ones(2), weights=HALF)
  np.testing.assert_allclose(gap, expected, atol=1e-6)
  assert expected > 0.05


def test_log_loss_bound_hand_computed():
  # y = 1: linear −ln .3 = 1.203973 ≤ −(.5 ln .1 + .5 ln .5) = 1.497866; geometric −ln .25.
  lhs, rhs = theory.log_loss_bound(P2, np.array(1), temperatures=np.ones(2), weights=HALF)
  np.testing.assert_allclose([lhs, rhs], [-np.log(0.3), -0.5 * np.log(0.05)], atol=1e-6)
  lhs, _ = theory.log_loss_bound(
    P2, np.array(1), temperatures=np.ones(2), weights=HALF, operator=operators.geometric
  )
  np.testing.assert_allclose(lhs, -np.log(0.25), atol=1e-6)


def test_safety_bound_hand_computed():
  # safety teacher k* = 1 with w* = .5: bound = .5 · p_0 + .5 · p_1 = [.7, .3] = q for linear.
  q, bound = theory.safety_bound(P2, temperatures=np.ones(2), weights=HALF, safety_teacher=1)
  np.testing.assert_allclose(q, [0.7, 0.3], atol=1e-6)
  np.testing.assert_allclose(bound, [0.7, 0.3], atol=1e-6)


def test_effective_num_teachers_values():
  np.testing.assert_allclose(theory.effective_num_teachers(np.full(4, 0.25)), 4.0, rtol=1e-6)
  np.testing.assert_allclose(theory.effective_num_teachers(np.array([0.0, 1.0, 0.0])), 1.0)
  # 1 / (.25 + .0625 + .0625) = 8/3.
  np.testing.assert_allclose(
    theory.effective_num_teachers(np.array([0.5, 0.25, 0.25])), 8 / 3, rtol=1e-6
  )
  per_position = np.array([[0.5, 1.0], [0.5, 0.0]])  # [K=2, B=2]
  np.testing.assert_allclose(theory.effective_num_teachers(per_position), [2.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(
    theory.effective_num_teachers(per_position.T, axis=1), [2.0, 1.0], rtol=1e-6
  )


def test_ensemble_noise_variance_hand_computed():
  # w = [.5, .5], σ² = [1, 4], uncorrelated: .25 + 1 = 1.25 ≤ Σ w σ² = 2.5.
  w = np.array([0.5, 0.5])
  np.testing.assert_allclose(theory.ensemble_noise_variance(w, np.diag([1.0, 4.0])), 1.25)
  # σ = [1, 2], ρ = .5: off-diagonal .5 · 1 · 2 = 1; variance .25 + 1 + 2 · .25 · 1 = 1.75.
  cov = theory.equicorrelated_covariance(np.array([1.0, 2.0]), 0.5)
  np.testing.assert_allclose(cov, [[1.0, 1.0], [1.0, 4.0]], atol=1e-6)
  np.testing.assert_allclose(theory.ensemble_noise_variance(w, cov), 1.75, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Properties against float64 references.
# ---------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), weight_rank=st.integers(1, 3))
def test_cross_teacher_variance_matches_definition(seed, weight_rank):
  x, t, w, w64 = random_teachers(seed, weight_rank=weight_rank)
  p = np_temper(x, t)  # [K, B, S, V]
  q = (w64 * p).sum(axis=0)
  expected = (w64 * p**2).sum(axis=0) - q**2  # Def IV.1
  var = np.asarray(theory.cross_teacher_variance(x, weights=w, temperatures=t))
  assert var.shape == (2, 3, 5) and np.all(var >= 0)
  np.testing.assert_allclose(var, expected, atol=1e-6)


@given(seed=st.integers(0, 2**32 - 1), weight_rank=st.integers(1, 3))
def test_jensen_gap_matches_definition(seed, weight_rank):
  x, t, w, w64 = random_teachers(seed, weight_rank=weight_rank)
  p = np_temper(x, t)
  q = (w64 * p).sum(axis=0)
  expected = sum(w64[k][..., 0] * np_kl(p[k], q) for k in range(3))
  gap = np.asarray(theory.jensen_gap(x, temperatures=t, weights=w))
  assert gap.shape == (2, 3) and np.all(gap >= 0)
  np.testing.assert_allclose(gap, expected, atol=2e-6)


def test_jensen_gap_zero_for_identical_teachers():
  x, _, w, _ = random_teachers(1)
  same = np.broadcast_to(x[:1], x.shape)
  np.testing.assert_allclose(
    theory.jensen_gap(same, temperatures=np.ones(3), weights=w), 0.0, atol=1e-6
  )


@given(seed=st.integers(0, 2**32 - 1))
def test_ensemble_noise_variance_uncorrelated_and_equicorrelated(seed):
  rng = np.random.default_rng(seed)
  k = 4
  w = rng.dirichlet(np.ones(k))
  sigma = rng.uniform(0.1, 2.0, size=k)
  # Uncorrelated: Σ w² σ² ≤ Σ w σ² (Thm IV.2).
  var = float(theory.ensemble_noise_variance(w, np.diag(sigma**2)))
  np.testing.assert_allclose(var, np.sum(w**2 * sigma**2), rtol=1e-5)
  assert var <= np.sum(w * sigma**2) + 1e-6
  # Equal σ, pairwise ρ: σ² (Σ w² + ρ (1 − Σ w²)).
  s, rho = sigma[0], rng.uniform(-1 / (k - 1), 1.0)
  cov = theory.equicorrelated_covariance(np.full(k, s), rho)
  var = float(theory.ensemble_noise_variance(w, cov))
  sw2 = np.sum(w**2)
  np.testing.assert_allclose(var, s**2 * (sw2 + rho * (1 - sw2)), rtol=1e-5, atol=1e-6)


def test_ensemble_noise_variance_matches_monte_carlo():
  rng = np.random.default_rng(0)
  w = np.array([0.5, 0.3, 0.2])
  cov = np.asarray(theory.equicorrelated_covariance(np.array([1.0, 0.5, 2.0]), 0.4), np.float64)
  eps = rng.multivariate_normal(np.zeros(3), cov, size=200_000)  # [N, K]
  np.testing.assert_allclose(theory.ensemble_noise_variance(w, cov), np.var(eps @ w), rtol=0.02)


@pytest.mark.parametrize("operator", [operators.linear, operators.geometric], ids=["lin", "geo"])
@given(seed=st.integers(0, 2**32 - 1), weight_rank=st.integers(1, 2))
def test_log_loss_bound_holds(operator, seed, weight_rank):
  """Thm IV.9: −log q(y) ≤ −Σ w log p(y), Jensen (linear) and Hölder (geometric)."""
  x, t, w, w64 = random_teachers(seed, weight_rank=weight_rank)
  labels = np.random.default_rng(seed).integers(0, 5, size=(2, 3))
  lhs, rhs = theory.log_loss_bound(x, labels, temperatures=t, weights=w, operator=operator)
  assert lhs.shape == rhs.shape == (2, 3)
  assert np.all(np.asarray(lhs) <= np.asarray(rhs) + 1e-5)
  at_y = lambda a: np.take_along_axis(a, labels[..., None], -1)[..., 0]
  expected_rhs = -sum(w64[k][..., 0] * np.log(at_y(np_temper(x, t)[k])) for k in range(3))
  np.testing.assert_allclose(rhs, expected_rhs, rtol=1e-5, atol=1e-5)


@given(
  seed=st.integers(0, 2**32 - 1), safety_teacher=st.integers(0, 2), weight_rank=st.integers(1, 2)
)
def test_safety_bound_holds_for_linear(seed, safety_teacher, weight_rank):
  x, t, w, w64 = random_teachers(seed, weight_rank=weight_rank)
  q, bound = theory.safety_bound(x, temperatures=t, weights=w, safety_teacher=safety_teacher)
  q, bound = np.asarray(q), np.asarray(bound)
  assert np.all(q <= bound + 1e-6)
  p = np_temper(x, t)
  others = np.max(np.delete(p, safety_teacher, axis=0), axis=0)
  w_star = w64[safety_teacher]
  np.testing.assert_allclose(bound, (1 - w_star) * others + w_star * p[safety_teacher], atol=1e-6)
  # Prop IV.11: q(i) < max_k p_k(i) whenever a weighted teacher is below the max.
  p_max = p.max(axis=0)
  below = np.any((w64 > 0) & (p < p_max - 1e-3), axis=0)
  assert np.all(q[below] < p_max[below])


def test_safety_bound_can_fail_for_geometric():
  # p1 = [.5, .49, .01], p2 = [.5, .01, .49], w = .5: q ∝ [.5, .07, .07] ⇒ q(0) ≈ .78 > bound .5.
  x = np.log(np.array([[0.5, 0.49, 0.01], [0.5, 0.01, 0.49]], np.float32))
  q, bound = theory.safety_bound(
    x, temperatures=np.ones(2), weights=HALF, safety_teacher=0, operator=operators.geometric
  )
  np.testing.assert_allclose(bound[0], 0.5, atol=1e-6)
  np.testing.assert_allclose(q[0], 0.5 / (0.5 + 2 * np.sqrt(0.0049)), atol=1e-6)
  assert q[0] > bound[0] + 0.2


def test_jit_and_vmap():
  x, t, w, _ = random_teachers(2, batch=(4,), weight_rank=2)  # x [K, B, V], w [K, B]
  for fn in (
    lambda x, w: theory.cross_teacher_variance(x, weights=w, temperatures=t),
    lambda x, w: theory.jensen_gap(x, temperatures=t, weights=w),
  ):
    eager = fn(x, w)
    np.testing.assert_allclose(jax.jit(fn)(x, w), eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(fn, in_axes=(1, 1))(x, w), eager, atol=1e-6)


def test_jensen_gap_gradient_is_finite_and_zero_at_agreement():
  x, t, w, _ = random_teachers(3, batch=(2,))
  g = jax.grad(lambda x: jnp.sum(theory.jensen_gap(x, temperatures=t, weights=w)))(x)
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 1e-4
  same = jnp.broadcast_to(jnp.asarray(x[:1]), x.shape)
  g0 = jax.grad(lambda x: jnp.sum(theory.jensen_gap(x, temperatures=np.ones(3), weights=w)))(same)
  np.testing.assert_allclose(g0, 0.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------


def test_bad_input():
  x, t, w, _ = random_teachers(4, batch=(2,))
  with pytest.raises(ValueError, match=r"weights.*shape=\(2,\)"):
    theory.jensen_gap(x, temperatures=t, weights=np.array([0.5, 0.5]))
  with pytest.raises(ValueError, match=r"weights.*sum to 1.*shape=\(3,\)"):
    theory.cross_teacher_variance(x, weights=np.array([0.5, 0.5, 0.5]))
  with pytest.raises(ValueError, match=r"weights.*shape=\(3,\)"):
    theory.cross_teacher_variance(x, weights=np.array([np.nan, 0.5, 0.5]))
  with pytest.raises(ValueError, match=r"temperatures.*shape=\(3,\)"):
    theory.jensen_gap(x, temperatures=np.array([1.0, -1.0, 1.0]), weights=w)
  with pytest.raises(ValueError, match=r"labels.*shape=\(3,\)"):
    theory.log_loss_bound(x, np.zeros(3, np.int32), temperatures=t, weights=w)
  with pytest.raises(ValueError, match=r"safety_teacher.*shape=\(3, 2, 5\)"):
    theory.safety_bound(x, temperatures=t, weights=w, safety_teacher=3)
  with pytest.raises(ValueError, match=r"weights.shape=\(3,\).*covariance.shape=\(2, 2\)"):
    theory.ensemble_noise_variance(w, np.eye(2))
  with pytest.raises(ValueError, match="rho"):
    theory.equicorrelated_covariance(np.ones(3), -0.9)


def test_zero_weight_teacher_contributes_nothing_not_nan():
  """0·∞ = 0: teacher 1 has weight 0 and puts all its mass where q = 0 (KL = ∞, log p(y) = −∞)."""
  with np.errstate(divide="ignore"):
    lp = np.log(np.array([[0.9, 0.1, 0.0], [0.0, 0.5, 0.5]]))
  w = np.array([1.0, 0.0])
  assert float(theory.jensen_gap(lp, temperatures=1.0, weights=w)) == 0.0
  lhs, rhs = theory.log_loss_bound(lp, np.array(0), temperatures=1.0, weights=w)
  np.testing.assert_allclose([lhs, rhs], [-np.log(0.9)] * 2, rtol=1e-6)
