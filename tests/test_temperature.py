"""Tests for mtkd_jax.temperature: tempering in log space and conversion to log-probabilities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from mtkd_jax import temperature


def np_temper(x, t):
  """float64 reference: p_T(i) ∝ exp(x_i / T) (x logits or log-probs), per teacher row."""
  x = np.asarray(x, np.float64)
  t = np.asarray(t, np.float64).reshape((-1,) + (1,) * (x.ndim - 1)) if np.ndim(t) else t
  y = x / t
  y = y - y.max(axis=-1, keepdims=True)
  e = np.exp(y)
  return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Hand-computed values.
# ---------------------------------------------------------------------------------------------


def test_scale_hand_computed():
  # p = [.2, .8] at T = 2: √.2 : √.8 = 1 : 2 -> [1/3, 2/3]; at T = 1/2: .04 : .64 -> [1/17, 16/17].
  log_p = jnp.log(jnp.array([[0.2, 0.8], [0.2, 0.8], [0.2, 0.8]]))
  out = np.exp(np.asarray(temperature.scale(log_p, jnp.array([1.0, 2.0, 0.5]))))
  np.testing.assert_allclose(out, [[0.2, 0.8], [1 / 3, 2 / 3], [1 / 17, 16 / 17]], atol=1e-6)


def test_scale_logits_equals_log_probs():
  # logits [0, ln 3] are p = [1/4, 3/4]; at T = 2 either gives ∝ [1, √3].
  expected = np.array([1.0, np.sqrt(3.0)]) / (1 + np.sqrt(3.0))
  for x in ([0.0, np.log(3.0)], np.log([0.25, 0.75])):
    out = np.exp(np.asarray(temperature.scale(jnp.array([x]), jnp.array([2.0]))))[0]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_scalar_temperature_and_axis():
  x = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
  # axis=0 normalises columns: column 0 at T = 2 is ∝ [e^0.5, e^1.5].
  out = np.exp(np.asarray(temperature.scale(x, 2.0, axis=0)))
  np.testing.assert_allclose(out[:, 0], [1 / (1 + np.e), np.e / (1 + np.e)], atol=1e-6)
  np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-6)


def test_to_log_probs_hand_computed():
  np.testing.assert_allclose(
    temperature.to_log_probs(jnp.array([0.0, np.log(3.0)]), "logits"),
    np.log([0.25, 0.75]),
    atol=1e-6,
  )
  np.testing.assert_allclose(
    temperature.to_log_probs(jnp.array([1.0, 3.0]), "probs"), np.log([0.25, 0.75]), atol=1e-6
  )
  # log-probs off by a constant are renormalised.
  np.testing.assert_allclose(
    temperature.to_log_probs(jnp.log(jnp.array([0.5, 1.5])), "log_probs"),
    np.log([0.25, 0.75]),
    atol=1e-6,
  )


def test_to_log_probs_zero_probs_give_minus_inf_not_nan():
  out = np.asarray(
    temperature.to_log_probs(jnp.array([[0.0, 0.25, 0.75], [0.0, 0.0, 1.0]]), "probs")
  )
  assert out[0, 0] == -np.inf and out[1, 0] == -np.inf and out[1, 1] == -np.inf
  np.testing.assert_allclose(out[0, 1:], np.log([0.25, 0.75]), atol=1e-6)
  assert out[1, 2] == 0.0
  # and the gradient w.r.t. the non-zero probabilities is finite
  g = jax.grad(lambda p: temperature.to_log_probs(p, "probs")[2])(jnp.array([0.0, 0.25, 0.75]))
  assert np.all(np.isfinite(np.asarray(g)))


def test_to_log_probs_unknown_kind():
  with pytest.raises(ValueError, match=r"kind.*logits.*log_probs.*probs.*'softmax'"):
    temperature.to_log_probs(jnp.zeros(3), "softmax")


# ---------------------------------------------------------------------------------------------
# Properties against the float64 reference.
# ---------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), num_teachers=st.sampled_from([1, 3]))
def test_scale_matches_reference(seed, num_teachers):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(num_teachers, 2, 5)) * 3).astype(np.float32)
  t = np.exp(rng.uniform(-2, 2, size=num_teachers)).astype(np.float32)
  out = np.asarray(temperature.scale(x, t))
  assert out.dtype == np.float32 and out.shape == x.shape
  np.testing.assert_allclose(np.exp(out.astype(np.float64)), np_temper(x, t), atol=1e-6)
  np.testing.assert_allclose(np.exp(out.astype(np.float64)).sum(-1), 1.0, atol=1e-6)


@given(seed=st.integers(0, 2**32 - 1))
def test_temperature_one_is_identity_on_log_probs(seed):
  x = np.random.default_rng(seed).normal(size=(3, 2, 5)).astype(np.float32)
  log_p = np.asarray(jax.nn.log_softmax(x, axis=-1))
  np.testing.assert_allclose(temperature.scale(log_p, jnp.ones(3)), log_p, atol=1e-6)


@given(seed=st.integers(0, 2**32 - 1), t1=st.floats(0.2, 5.0), t2=st.floats(0.2, 5.0))
def test_tempering_composes(seed, t1, t2):
  # (p^{1/T1})^{1/T2} = p^{1/(T1 T2)}.
  x = np.random.default_rng(seed).normal(size=(1, 2, 5)).astype(np.float32)
  twice = temperature.scale(temperature.scale(x, t1), t2)
  once = temperature.scale(x, t1 * t2)
  np.testing.assert_allclose(np.exp(twice), np.exp(once), atol=2e-6)


def test_jit_and_vmap():
  x = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
  t = np.array([0.5, 1.0, 2.0], np.float32)
  eager = temperature.scale(x, t)
  np.testing.assert_allclose(jax.jit(temperature.scale)(x, t), eager, atol=1e-6)
  mapped = jax.vmap(temperature.scale, in_axes=(1, None), out_axes=1)(x, t)
  np.testing.assert_allclose(mapped, eager, atol=1e-6)


def test_gradients_float64():
  x = np.random.default_rng(1).normal(size=(3, 2, 4))
  with jax.enable_x64(True):
    f = jax.jit(
      lambda x, log_t: jnp.sum(
        jnp.sin(jnp.arange(24.0).reshape(3, 2, 4)) * temperature.scale(x, jnp.exp(log_t))
      )
    )
    check_grads(f, (jnp.asarray(x), jnp.log(jnp.array([0.5, 1.0, 2.0]))), order=2, modes=["rev"])


# ---------------------------------------------------------------------------------------------
# Extremes.
# ---------------------------------------------------------------------------------------------


def test_small_temperature_is_one_hot_ties_share_mass():
  x = np.array([[3.0, 3.0, 0.0, -1.0], [0.0, 1.0, 2.0, 1.9], [1e4, -1e4, 1e4 - 1, 0.0]], np.float32)
  out = np.exp(np.asarray(temperature.scale(x[:, None], np.full(3, 1e-3, np.float32))))[:, 0]
  np.testing.assert_allclose(out, [[0.5, 0.5, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]], atol=1e-6)


def test_large_temperature_is_near_uniform():
  x = np.random.default_rng(2).normal(size=(2, 3, 5)).astype(np.float32) * 3
  out = np.exp(np.asarray(temperature.scale(x, np.full(2, 1e3, np.float32))))
  np.testing.assert_allclose(out, np_temper(x, np.full(2, 1e3)), atol=1e-6)
  np.testing.assert_allclose(out, 0.2, atol=1e-2)  # |z / T| ≤ ~1e-2


@pytest.mark.parametrize("temp", [1e-3, 1.0, 1e3])
def test_huge_logits_finite(temp):
  x = np.array([[[1e4, -1e4, 0.0, 1e4 - 3.0]], [[-1e4, -1e4, -1e4, -1e4]]], np.float32)
  out = np.asarray(temperature.scale(x, np.full(2, temp, np.float32)))
  assert not np.any(np.isnan(out))
  np.testing.assert_allclose(
    np.exp(out.astype(np.float64)), np_temper(x, np.full(2, temp)), atol=1e-6
  )


def test_masked_entries_stay_minus_inf_with_finite_gradients():
  x = np.array([[[-np.inf, 1.0, 2.0]], [[0.5, -np.inf, -np.inf]]], np.float32)
  t = np.array([0.5, 2.0], np.float32)
  out = np.asarray(temperature.scale(x, t))
  assert out[0, 0, 0] == -np.inf and out[1, 0, 1] == -np.inf and out[1, 0, 2] == -np.inf
  np.testing.assert_allclose(np.exp(out[0, 0, 1:]), np_temper(x[:1, :, 1:], t[:1])[0, 0], atol=1e-6)
  assert out[1, 0, 0] == 0.0

  def loss(x):  # reads finite entries only (double where: 0 · log 0 = 0 without NaN)
    y = temperature.scale(x, t)
    finite = jnp.isfinite(y)
    y = jnp.where(finite, y, 0.0)
    return jnp.sum(jnp.where(finite, jnp.exp(y) * y, 0.0))

  assert np.all(np.isfinite(np.asarray(jax.grad(loss)(x))))


def test_masked_entries_temperature_gradient_is_finite():
  """d scale / d T with -inf entries: x / T has derivative -x / T² = +inf there, times a 0."""
  x = np.array([[[-np.inf, 1.0, 2.0]]], np.float32)
  r = jnp.array([0.3, -1.0, 2.0])
  loss = lambda t: jnp.sum(jnp.exp(temperature.scale(x, t)) * r)
  g = jax.grad(loss)(jnp.array([0.7]))
  assert np.all(np.isfinite(np.asarray(g))), f"d/dT = {g}"
  # the finite part is the single-teacher derivative of the unmasked entries
  ref = jax.grad(lambda t: jnp.sum(jnp.exp(temperature.scale(x[..., 1:], t)) * r[1:]))(
    jnp.array([0.7])
  )
  np.testing.assert_allclose(g, ref, rtol=1e-5)


def test_bfloat16_is_computed_in_float32():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 5)), jnp.bfloat16)
  t = jnp.array([0.7, 1.3], jnp.bfloat16)
  out = temperature.scale(x, t)
  assert out.dtype == jnp.float32
  expected = temperature.scale(x.astype(jnp.float32), t.astype(jnp.float32))
  np.testing.assert_allclose(out, expected, atol=1e-6)
  assert temperature.to_log_probs(x, "logits").dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("temperatures", "pattern"),
  [
    (np.array([1.0, 0.0, 1.0]), r"temperatures.*positive.*shape=\(3,\)"),
    (np.array([1.0, -2.0, 1.0]), r"temperatures.*positive.*shape=\(3,\)"),
    (np.array([1.0, np.nan, 1.0]), r"temperatures.*shape=\(3,\)"),
    (np.array([1.0, np.inf, 1.0]), r"temperatures.*shape=\(3,\)"),
    (-1.0, r"temperatures.*shape=\(\)"),
    (np.ones(2), r"temperatures.*\[3\].*shape=\(2,\)"),
    (np.ones((3, 1)), r"temperatures.*shape=\(3, 1\)"),
  ],
)
def test_bad_temperatures(temperatures, pattern, monkeypatch):
  def boom(*args, **kwargs):
    raise AssertionError("compute started before the input check")

  monkeypatch.setattr(jax.nn, "log_softmax", boom)
  with pytest.raises(ValueError, match=pattern):
    temperature.scale(np.zeros((3, 2, 4), np.float32), temperatures)
