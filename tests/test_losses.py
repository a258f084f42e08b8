"""Tests for mtkd_jax.losses: values, gradients, masks, the paper's §IV-B identity, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from mtkd_jax import losses, operators, theory


def np_softmax(z, t=1.0):
  y = np.asarray(z, np.float64) / t
  e = np.exp(y - y.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def np_kl(p, q):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0), axis=-1)


def random_problem(seed, num_teachers=3, batch=(2, 3), vocab=5, weight_rank=1):
  """Student logits [*batch, V], teacher logits [K, *batch, V], T [K], weights [K, ...]."""
  rng = np.random.default_rng(seed)
  z = (rng.normal(size=(*batch, vocab)) * 2).astype(np.float32)
  x = (rng.normal(size=(num_teachers, *batch, vocab)) * 2).astype(np.float32)
  t = rng.uniform(0.5, 2.0, size=num_teachers).astype(np.float32)
  w = rng.uniform(0.1, 1.0, size=(num_teachers, *batch[: weight_rank - 1]))
  return z, x, t, (w / w.sum(axis=0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Hand-computed values.
# ---------------------------------------------------------------------------------------------


def test_kl_divergence_hand_computed():
  log_p = jnp.log(jnp.array([[0.5, 0.5], [0.0, 1.0]]))
  log_q = jnp.log(jnp.array([[0.25, 0.75], [0.5, 0.5]]))
  # .5 ln 2 + .5 ln(2/3) = .143841; 0 · log(0/.5) + 1 · ln 2 = .693147.
  np.testing.assert_allclose(losses.kl_divergence(log_p, log_q), [0.143841, np.log(2)], atol=1e-6)


def test_mixture_kd_hand_computed():
  # softmax([0, 1]) = [.268941, .731059]; KL([.5, .5] ‖ that) = −ln 2 − .5 ln(.268941 · .731059).
  z, log_q = jnp.array([0.0, 1.0]), jnp.log(jnp.array([0.5, 0.5]))
  expected = -np.log(2) - 0.5 * np.log(0.268941 * 0.731059)
  np.testing.assert_allclose(losses.mixture_kd(z, log_q), expected, atol=1e-6)
  # T_S = 2: softmax([0, .5]) = [.377541, .622459]; scaled by 4 unless disabled.
  kl2 = -np.log(2) - 0.5 * np.log(0.377541 * 0.622459)
  np.testing.assert_allclose(
    losses.mixture_kd(z, log_q, student_temperature=2.0), 4 * kl2, atol=1e-5
  )
  np.testing.assert_allclose(
    losses.mixture_kd(z, log_q, student_temperature=2.0, temperature_sq_scaling=False),
    kl2,
    atol=1e-6,
  )


def test_sum_of_kls_hand_computed():
  # Teachers p1 = [.9, .1], p2 = [.5, .5] (T = 1), w = [.25, .75], student softmax([0, 0]) = u:
  # .25 · KL(p1 ‖ u) + .75 · 0 = .25 (.9 ln 1.8 + .1 ln .2) = .25 · .368064.
  teachers = jnp.log(jnp.array([[0.9, 0.1], [0.5, 0.5]]))
  out = losses.sum_of_kls(
    jnp.zeros(2), teachers, temperatures=jnp.ones(2), weights=jnp.array([0.25, 0.75])
  )
  np.testing.assert_allclose(out, 0.25 * (0.9 * np.log(1.8) + 0.1 * np.log(0.2)), atol=1e-6)


def test_cross_entropy_and_blend_hand_computed():
  logits = jnp.array([[0.0, np.log(3.0)], [2.0, 2.0]])  # softmax [.25, .75] and [.5, .5]
  labels = jnp.array([1, 0])
  ce = np.asarray(losses.cross_entropy(logits, labels))
  np.testing.assert_allclose(ce, [-np.log(0.75), np.log(2)], atol=1e-6)
  kd = jnp.array([1.0, 2.0])
  blend = losses.hard_label_blend(kd, logits, labels, label_weight=0.25)
  np.testing.assert_allclose(blend, 0.75 * np.array([1.0, 2.0]) + 0.25 * ce, atol=1e-6)
  np.testing.assert_allclose(losses.hard_label_blend(kd, logits, labels, label_weight=0.0), kd)
  np.testing.assert_allclose(
    losses.hard_label_blend(kd, logits, labels, label_weight=1.0), ce, atol=1e-6
  )
  masked = losses.cross_entropy(logits, labels, where=jnp.array([True, False]))
  np.testing.assert_allclose(masked, [ce[0], 0.0], atol=1e-6)
  blend_masked = losses.hard_label_blend(
    kd, logits, labels, label_weight=0.25, where=jnp.array([False, True])
  )
  np.testing.assert_allclose(blend_masked, [0.0, 0.75 * 2.0 + 0.25 * ce[1]], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Against float64 references.
# ---------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), t_s=st.sampled_from([0.5, 1.0, 3.0]))
def test_mixture_kd_matches_reference(seed, t_s):
  z, x, _, _ = random_problem(seed)
  q = np_softmax(x[0])
  out = losses.mixture_kd(z, np.log(q).astype(np.float32), student_temperature=t_s)
  assert out.shape == (2, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, t_s**2 * np_kl(q, np_softmax(z, t_s)), rtol=1e-5, atol=1e-5)


@given(seed=st.integers(0, 2**32 - 1), weight_rank=st.integers(1, 3))
def test_sum_of_kls_matches_reference(seed, weight_rank):
  z, x, t, w = random_problem(seed, weight_rank=weight_rank)
  t_s = np.array([0.5, 1.0, 2.0], np.float32)  # per-teacher student temperatures
  out = losses.sum_of_kls(z, x, temperatures=t, weights=w, student_temperature=t_s)
  w_b = w.reshape(w.shape + (1,) * (3 - w.ndim))  # [K, B, S] broadcastable
  expected = sum(
    t_s[k] ** 2 * w_b[k] * np_kl(np_softmax(x[k], t[k]), np_softmax(z, t_s[k])) for k in range(3)
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  unscaled = losses.sum_of_kls(
    z, x, temperatures=t, weights=w, student_temperature=t_s, temperature_sq_scaling=False
  )
  expected = sum(w_b[k] * np_kl(np_softmax(x[k], t[k]), np_softmax(z, t_s[k])) for k in range(3))
  np.testing.assert_allclose(unscaled, expected, rtol=1e-5, atol=1e-5)


@given(seed=st.integers(0, 2**32 - 1))
def test_cross_entropy_matches_reference(seed):
  z, _, _, _ = random_problem(seed)
  labels = np.random.default_rng(seed).integers(0, 5, size=(2, 3))
  expected = -np.log(np.take_along_axis(np_softmax(z), labels[..., None], -1)[..., 0])
  np.testing.assert_allclose(losses.cross_entropy(z, labels), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Paper §IV-B: L_multi − L_mix = Σ_k w_k KL(p_k ‖ q) for linear, and equal gradients.
# ---------------------------------------------------------------------------------------------


@given(
  seed=st.integers(0, 2**32 - 1),
  weight_rank=st.integers(1, 3),
  t_s=st.sampled_from([1.0, 2.0]),
)
def test_jensen_identity_and_equal_gradients(seed, weight_rank, t_s):
  z, x, t, w = random_problem(seed, weight_rank=weight_rank)
  kw = dict(temperatures=t, weights=w)
  log_q = operators.linear(x, **kw)

  l_mix = lambda z: losses.mixture_kd(z, log_q, student_temperature=t_s)
  l_multi = lambda z: losses.sum_of_kls(z, x, student_temperature=t_s, **kw)
  gap = np.asarray(l_multi(z)) - np.asarray(l_mix(z))
  jensen = np.asarray(theory.jensen_gap(x, **kw))
  np.testing.assert_allclose(gap, t_s**2 * jensen, atol=2e-5)
  assert np.all(jensen >= -1e-6)  # Thm IV.7: L_mix ≤ L_multi
  # The gap does not depend on the student: same gradient.
  g_mix = jax.grad(lambda z: jnp.sum(l_mix(z)))(z)
  g_multi = jax.grad(lambda z: jnp.sum(l_multi(z)))(z)
  np.testing.assert_allclose(g_multi, g_mix, atol=1e-5)


def test_objectives_differ_for_geometric_and_per_teacher_student_temperatures():
  z, x, t, w = random_problem(1)
  g_multi = jax.grad(lambda z: jnp.sum(losses.sum_of_kls(z, x, temperatures=t, weights=w)))(z)
  log_geo = operators.geometric(x, temperatures=t, weights=w)
  g_geo = jax.grad(lambda z: jnp.sum(losses.mixture_kd(z, log_geo)))(z)
  assert np.abs(np.asarray(g_multi - g_geo)).max() > 1e-3
  t_s = np.array([0.5, 1.0, 2.0], np.float32)
  g_multi_ts = jax.grad(
    lambda z: jnp.sum(
      losses.sum_of_kls(
        z, x, temperatures=t, weights=w, student_temperature=t_s, temperature_sq_scaling=False
      )
    )
  )(z)
  log_lin = operators.linear(x, temperatures=t, weights=w)
  g_lin = jax.grad(lambda z: jnp.sum(losses.mixture_kd(z, log_lin)))(z)
  assert np.abs(np.asarray(g_multi_ts - g_lin)).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t_s", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("scaling", [True, False])
def test_mixture_kd_gradient_closed_form(t_s, scaling):
  """∂/∂z T_S² KL(q ‖ softmax(z / T_S)) = T_S² (p_S − q) / T_S (and (p_S − q) / T_S unscaled)."""
  z, x, t, w = random_problem(2)
  log_q = operators.power(0.5)(x, temperatures=t, weights=w)
  grad = jax.grad(
    lambda z: jnp.sum(
      losses.mixture_kd(z, log_q, student_temperature=t_s, temperature_sq_scaling=scaling)
    )
  )(z)
  p_s = np_softmax(z, t_s)
  expected = (p_s - np.exp(np.asarray(log_q, np.float64))) / t_s * (t_s**2 if scaling else 1.0)
  np.testing.assert_allclose(grad, expected, atol=2e-6)


def test_gradients_float64():
  z, x, t, w = random_problem(3, batch=(2,), vocab=4)
  with jax.enable_x64(True):
    z64, x64 = jnp.asarray(z, jnp.float64), jnp.asarray(x, jnp.float64)
    log_q = operators.linear(x64, temperatures=t, weights=w)
    mix = jax.jit(lambda z, lq: jnp.sum(losses.mixture_kd(z, lq, student_temperature=1.5)))
    check_grads(mix, (z64, log_q), order=1, modes=["rev"])
    multi = jax.jit(
      lambda z, x, theta: jnp.sum(
        losses.sum_of_kls(
          z,
          x,
          temperatures=t,
          weights=jax.nn.softmax(theta),
          student_temperature=jnp.array([0.5, 1.0, 2.0]),
        )
      )
    )
    check_grads(multi, (z64, x64, jnp.log(jnp.asarray(w, jnp.float64))), order=1, modes=["rev"])
    ce = jax.jit(lambda z: jnp.sum(losses.cross_entropy(z, jnp.array([1, 3]))))
    check_grads(ce, (z64,), order=1, modes=["rev"])


def test_masked_target_entries_zero_log_zero_and_finite_gradients():
  # -inf target entries (masked tokens) contribute 0 and give finite gradients.
  z = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4)), jnp.float32)
  q = np.array([[0.0, 0.3, 0.7, 0.0], [0.5, 0.0, 0.25, 0.25]])
  log_q = jnp.log(jnp.asarray(q, jnp.float32))
  out = losses.mixture_kd(z, log_q)
  np.testing.assert_allclose(out, np_kl(q, np_softmax(z)), atol=1e-6)
  g_z, g_q = jax.grad(lambda z, lq: jnp.sum(losses.mixture_kd(z, lq)), argnums=(0, 1))(z, log_q)
  assert np.all(np.isfinite(np.asarray(g_z))) and np.all(np.isfinite(np.asarray(g_q)))
  np.testing.assert_allclose(g_z, np_softmax(z) - q, atol=1e-6)
  g_kl = jax.grad(lambda lq: jnp.sum(losses.kl_divergence(lq, jax.nn.log_softmax(z))))(log_q)
  assert np.all(np.isfinite(np.asarray(g_kl)))
  # teacher-side masks in sum_of_kls
  x = jnp.log(jnp.asarray(np.stack([q, q[::-1]]), jnp.float32))  # [K=2, B=2, V=4]
  g = jax.grad(
    lambda z, x: jnp.sum(
      losses.sum_of_kls(z, x, temperatures=jnp.ones(2), weights=jnp.ones(2) / 2)
    ),
    argnums=(0, 1),
  )(z, x)
  assert all(np.all(np.isfinite(np.asarray(gi))) for gi in g)


def test_masked_target_entries_at_student_temperature():
  z = jnp.asarray(np.random.default_rng(5).normal(size=(3,)), jnp.float32)
  log_q = jnp.log(jnp.array([0.0, 0.4, 0.6]))
  g = jax.grad(lambda z: losses.mixture_kd(z, log_q, student_temperature=2.0))(z)
  np.testing.assert_allclose(g, 2.0 * (np_softmax(z, 2.0) - np.array([0.0, 0.4, 0.6])), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# where masks, jit, vmap, dtypes.
# ---------------------------------------------------------------------------------------------


def test_where_mask_zeroes_examples_and_their_gradients():
  z, x, t, w = random_problem(6)
  log_q = operators.linear(x, temperatures=t, weights=w)
  where = np.array([[True, False, True], [False, False, True]])
  for fn in (
    lambda z: losses.mixture_kd(z, log_q, where=where),
    lambda z: losses.sum_of_kls(z, x, temperatures=t, weights=w, where=where),
  ):
    out = np.asarray(fn(z))
    assert np.all(out[~where] == 0.0) and np.all(out[where] > 0.0)
    g = np.asarray(jax.grad(lambda z, fn=fn: jnp.sum(fn(z)))(z))
    assert np.all(g[~where] == 0.0) and np.all(np.abs(g[where]).sum(-1) > 0)
  full = np.asarray(losses.mixture_kd(z, log_q))
  np.testing.assert_allclose(losses.mixture_kd(z, log_q, where=where), np.where(where, full, 0.0))
  # a broadcastable per-row mask
  out = np.asarray(losses.mixture_kd(z, log_q, where=np.array([[True], [False]])))
  np.testing.assert_allclose(out, np.where([[True], [False]], full, 0.0))


def test_jit_and_vmap():
  z, x, t, w = random_problem(7, batch=(4,), weight_rank=2)
  log_q = operators.linear(x, temperatures=t, weights=w)
  mix = lambda z, lq: losses.mixture_kd(z, lq, student_temperature=2.0)
  np.testing.assert_allclose(jax.jit(mix)(z, log_q), mix(z, log_q), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.vmap(mix)(z, log_q), mix(z, log_q), rtol=1e-6, atol=1e-7)
  multi = lambda z, x, w: losses.sum_of_kls(z, x, temperatures=t, weights=w)
  batched = multi(z, x, w)
  np.testing.assert_allclose(jax.jit(multi)(z, x, w), batched, rtol=1e-6, atol=1e-7)
  mapped = jax.vmap(multi, in_axes=(0, 1, 1))(z, x, w)
  np.testing.assert_allclose(mapped, batched, rtol=1e-6, atol=1e-7)


def test_bfloat16_inputs_computed_in_float32():
  z, x, t, w = random_problem(8)
  z16, x16 = jnp.asarray(z, jnp.bfloat16), jnp.asarray(x, jnp.bfloat16)
  z32, x32 = z16.astype(jnp.float32), x16.astype(jnp.float32)
  log_q = operators.linear(x32, temperatures=t, weights=w)
  out = losses.mixture_kd(z16, log_q.astype(jnp.bfloat16))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
    out, losses.mixture_kd(z32, log_q.astype(jnp.bfloat16).astype(jnp.float32)), atol=1e-6
  )
  out = losses.sum_of_kls(z16, x16, temperatures=t, weights=w)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, losses.sum_of_kls(z32, x32, temperatures=t, weights=w), atol=1e-6)
  assert losses.cross_entropy(z16, jnp.zeros((2, 3), jnp.int32)).dtype == jnp.float32


def test_extreme_logits_and_temperatures_are_finite():
  z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], np.float32)
  log_q = jnp.log(jnp.array([[0.2, 0.3, 0.5], [0.0, 0.5, 0.5]]))
  for t_s in (1e-3, 1.0, 1e3):
    out = np.asarray(losses.mixture_kd(z, log_q, student_temperature=t_s))
    g = np.asarray(
      jax.grad(lambda z, t_s=t_s: jnp.sum(losses.mixture_kd(z, log_q, student_temperature=t_s)))(z)
    )
    assert np.all(np.isfinite(out)) and np.all(out >= 0), (t_s, out)
    assert np.all(np.isfinite(g)), (t_s, g)
  # row 2 at T_S = 1e-3 is [0, .5, .5]: exactly the target.
  np.testing.assert_allclose(
    losses.mixture_kd(z, log_q, student_temperature=1e-3)[1], 0.0, atol=1e-6
  )


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------


def test_kl_divergence_v_mismatch():
  with pytest.raises(ValueError, match=r"log_p.*shape.*\(2, 3\).*\(2, 4\)"):
    losses.kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
  # V = 1 on one side must not silently broadcast over the vocabulary.
  with pytest.raises(ValueError, match=r"log_q.*shape.*\(2, 1\)"):
    losses.kl_divergence(jnp.log(jnp.full((2, 3), 1 / 3)), jnp.zeros((2, 1)))


def test_mixture_kd_bad_input():
  z, lq = np.zeros((2, 5), np.float32), np.log(np.full((2, 5), 0.2, np.float32))
  with pytest.raises(ValueError, match=r"target_log_q.shape=\(2, 4\)"):
    losses.mixture_kd(z, lq[:, :4])
  with pytest.raises(ValueError, match=r"student_temperature.*shape=\(\)"):
    losses.mixture_kd(z, lq, student_temperature=0.0)
  with pytest.raises(ValueError, match=r"student_temperature.*shape=\(\)"):
    losses.mixture_kd(z, lq, student_temperature=-1.0)
  with pytest.raises(ValueError, match=r"student_temperature.*shape=\(2,\)"):
    losses.mixture_kd(z, lq, student_temperature=np.ones(2))
  with pytest.raises(ValueError, match=r"where.*shape=\(3,\)"):
    losses.mixture_kd(z, lq, where=np.ones(3, bool))


def test_sum_of_kls_bad_input():
  z, x, t, w = random_problem(9, batch=(2,))
  with pytest.raises(ValueError, match=r"teacher_logits.shape=\(3, 2, 5\).*\(2, 4\)"):
    losses.sum_of_kls(z[:, :4], x, temperatures=t, weights=w)
  with pytest.raises(ValueError, match=r"weights.*shape=\(2,\)"):
    losses.sum_of_kls(z, x, temperatures=t, weights=w[:2] / w[:2].sum())
  with pytest.raises(ValueError, match=r"weights.*sum to 1.*shape=\(3,\)"):
    losses.sum_of_kls(z, x, temperatures=t, weights=w * 2)
  with pytest.raises(ValueError, match=r"weights.*shape=\(3,\)"):
    losses.sum_of_kls(z, x, temperatures=t, weights=np.array([1.2, -0.1, -0.1]))
  with pytest.raises(ValueError, match=r"temperatures.*shape=\(2,\)"):
    losses.sum_of_kls(z, x, temperatures=t[:2], weights=w)
  with pytest.raises(ValueError, match=r"temperatures.*shape=\(3,\)"):
    losses.sum_of_kls(z, x, temperatures=np.array([1.0, 0.0, 1.0]), weights=w)
  with pytest.raises(ValueError, match=r"student_temperature.*shape=\(2,\)"):
    losses.sum_of_kls(z, x, temperatures=t, weights=w, student_temperature=np.ones(2))
  with pytest.raises(ValueError, match=r"student_temperature.*shape=\(\)"):
    losses.sum_of_kls(z, x, temperatures=t, weights=w, student_temperature=0.0)


def test_cross_entropy_and_blend_bad_input():
  z = np.zeros((2, 5), np.float32)
  with pytest.raises(ValueError, match=r"labels.*shape=\(3,\)"):
    losses.cross_entropy(z, np.zeros(3, np.int32))
  with pytest.raises(ValueError, match=r"labels.*float32"):
    losses.cross_entropy(z, np.zeros(2, np.float32))
  with pytest.raises(ValueError, match="label_weight"):
    losses.hard_label_blend(np.zeros(2), z, np.zeros(2, np.int32), label_weight=1.5)


def test_sum_of_kls_zero_weight_teacher_outside_the_students_support():
  """The student masks token 2, which only the zero-weight teacher uses: 0·∞ = 0, not NaN."""
  zs = np.array([0.0, 0.0, -np.inf])
  tl = np.full((2, 3), -np.inf)
  tl[0, :2] = np.log(0.5)
  tl[1, 2] = 0.0
  loss, g = jax.value_and_grad(
    lambda s: losses.sum_of_kls(s, tl, temperatures=1.0, weights=np.array([1.0, 0.0])).sum()
  )(jnp.asarray(zs))
  assert float(loss) == 0.0 and np.all(np.isfinite(np.asarray(g)))


def test_cross_entropy_refuses_out_of_range_labels_where_they_count():
  logits = jnp.zeros((2, 5))
  for bad in (-1, 5):
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 5\)"):
      losses.cross_entropy(logits, np.array([1, bad]))
  # A padding id that the mask excludes is fine (and contributes 0).
  out = losses.cross_entropy(logits, np.array([1, -100]), where=np.array([True, False]))
  np.testing.assert_allclose(out, [np.log(5.0), 0.0], rtol=1e-6)
