"""Tests for mtkd_jax.meta: the anchored target and the contraction bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtkd_jax import meta
from mtkd_jax.divergences import kl_divergence


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl(p_log, q_log):
  return (np.exp(p_log) * (p_log - q_log)).sum(-1)


def test_anchored_target_is_the_mixture():
  r = np.random.default_rng(0)
  lq, lp = _log_softmax(r.normal(size=(2, 5, 7)) * 2)
  got = np.exp(meta.anchored_target(lq, lp, 0.3))
  np.testing.assert_allclose(got, 0.3 * np.exp(lq) + 0.7 * np.exp(lp), rtol=1e-5)
  np.testing.assert_allclose(meta.anchored_target(lq, lp, 1.0), lq, atol=1e-5)
  np.testing.assert_allclose(meta.anchored_target(lq, lp, 0.0), lp, atol=1e-5)
  with pytest.raises(ValueError, match="alpha"):
    meta.anchored_target(lq, lp, 1.5)
  with pytest.raises(ValueError, match="same shape"):
    meta.anchored_target(lq, lp[:, :3], 0.5)


@given(st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_one_generation_contracts_for_any_student(alpha, seed):
  """KL(q_t ‖ q_base) ≤ (1 − α) KL(p_{S_{t−1}} ‖ q_base), per example (convexity of KL)."""
  r = np.random.default_rng(seed)
  lq = _log_softmax(r.normal(size=(16, 6)) * r.uniform(0.5, 4)).astype(np.float32)
  lp = _log_softmax(r.normal(size=(16, 6)) * r.uniform(0.5, 4)).astype(np.float32)
  kl_t = np.asarray(kl_divergence(meta.anchored_target(lq, lp, alpha), lq))
  bound = np.asarray(meta.contraction_bound(lq, lp, alpha))
  np.testing.assert_allclose(bound, (1 - alpha) * _kl(lp, lq), rtol=1e-4, atol=1e-6)
  assert np.all(kl_t <= bound + 1e-5), (kl_t - bound).max()
  if 0.05 < alpha < 0.95:  # strictly inside: a strict contraction where p ≠ q
    assert np.all(kl_t < (1 - alpha) * _kl(lp, lq) + 1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.6])
def test_exact_students_contract_geometrically(alpha):
  """With p_{S_t} = q_t: KL(q_t ‖ q_base) ≤ (1 − α)^t KL(p_{S_0} ‖ q_base) at every generation."""
  r = np.random.default_rng(1)
  lq = _log_softmax(r.normal(size=(32, 5)) * 2).astype(np.float32)
  lp0 = _log_softmax(r.normal(size=(32, 5)) * 3).astype(np.float32)
  out = meta.recursive_distillation(lambda t, log_q: log_q, lq, lp0, alpha=alpha, num_generations=8)
  kl0 = _kl(lp0, lq).mean()
  t = np.arange(1, 9)
  np.testing.assert_allclose(out["geometric_bound"][1:], (1 - alpha) ** t * kl0, rtol=1e-4)
  assert np.all(out["geometric_bound_holds"]) and np.all(out["step_bound_holds"])
  assert np.all(out["kl_target_base"][1:] <= out["geometric_bound"][1:] + 1e-6)
  assert np.all(np.diff(out["kl_target_base"][1:]) < 0)  # strictly decreasing
  np.testing.assert_allclose(out["kl_target_student"][1:], 0.0, atol=1e-5)
  # Closed form: q_t = (1 − (1 − α)^t) q_base + (1 − α)^t p_0.
  c = (1 - alpha) ** 8
  q8 = np.log((1 - c) * np.exp(lq) + c * np.exp(lp0))
  np.testing.assert_allclose(out["kl_target_base"][-1], _kl(q8, lq).mean(), rtol=1e-3, atol=1e-6)


def test_noisy_students_keep_the_step_bound_and_can_break_the_geometric_one():
  r = np.random.default_rng(2)
  lq = _log_softmax(r.normal(size=(32, 5)) * 2).astype(np.float32)
  lp0 = _log_softmax(lq + 0.3 * r.normal(size=lq.shape)).astype(np.float32)

  def noisy(t, log_q):  # a student that fits badly: its error is added every generation
    return jax.nn.log_softmax(log_q + 1.5 * jax.random.normal(jax.random.key(t), log_q.shape))

  out = meta.recursive_distillation(noisy, lq, lp0, alpha=0.5, num_generations=6)
  assert np.all(out["step_bound_holds"])
  assert not np.all(out["geometric_bound_holds"])  # fitting error beats (1 − α)^t KL_0
  assert np.all(out["kl_target_base"][1:] <= out["step_bound"][1:] + 1e-6)


def test_no_anchor_does_not_contract():
  r = np.random.default_rng(3)
  lq = _log_softmax(r.normal(size=(8, 4))).astype(np.float32)
  lp0 = _log_softmax(r.normal(size=(8, 4)) * 2).astype(np.float32)
  out = meta.recursive_distillation(lambda t, log_q: log_q, lq, lp0, alpha=0.0, num_generations=3)
  np.testing.assert_allclose(out["kl_target_base"][1:], _kl(lp0, lq).mean(), rtol=1e-4)
  assert float(jnp.asarray(meta.geometric_bound(2.0, 0.0, 3))) == 2.0


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7])
def test_exact_chains_from_different_starts_merge_at_rate_one_minus_alpha(alpha):
  """Exact students: two chains' students differ by (1 − α)^t (p_0^a − p_0^b)."""
  r = np.random.default_rng(2)
  lq = _log_softmax(r.normal(size=(16, 4))).astype(np.float32)
  chains = {}
  for name, scale in (("a", 3.0), ("b", 0.1), ("c", 6.0)):
    lp0 = _log_softmax(r.normal(size=(16, 4)) * scale).astype(np.float32)
    targets, students = [], [lp0]
    for _ in range(5):
      targets.append(np.asarray(meta.anchored_target(lq, students[-1], alpha)))
      students.append(targets[-1])  # the student fits its target exactly
    chains[name] = (targets, students)
  out = meta.fixed_point_agreement(alpha, lq, chains)
  assert out["contraction_rate"] == pytest.approx(1 - alpha, abs=1e-4)
  np.testing.assert_allclose(out["rate_per_generation"], 1 - alpha, atol=1e-4)
  assert out["rate_bound"] == 1 - alpha
  if alpha > 0:
    assert out["max_kl_final_students"] < out["max_kl_initial_students"] * (1 - alpha) ** 4
  else:  # no anchor: the chains never meet
    assert out["max_kl_final_students"] == pytest.approx(out["max_kl_initial_students"], rel=1e-4)
