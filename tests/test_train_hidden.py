"""The student step from hidden states (fused output projection) against the logits path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtkd_jax import models, objectives, operators, train

K_TEMPS = [1.0, 2.0]
WEIGHTS = [0.6, 0.4]


def _lm(width, seed):
  m = models.build("byte_lm", depth=1, width=width, num_heads=2, context=16)
  return m, m.init(jax.random.key(seed))


def _problem():
  student, s_params = _lm(32, 0)
  teachers = [_lm(48, 1), _lm(32, 2)]  # widths differ from the student's and each other's
  for _, p in teachers:  # sharper teachers than at initialisation
    p["head"]["kernel"] = p["head"]["kernel"] * 8.0
  tokens = jax.random.randint(jax.random.key(3), (4, 17), 0, 256)
  batch = {"x": tokens[:, :-1], "y": tokens[:, 1:]}
  t_params = [p for _, p in teachers]
  as_logits = lambda tp, b: jnp.stack(
    [m.apply(p, b["x"]) for (m, _), p in zip(teachers, tp, strict=True)]
  )
  as_pairs = lambda tp, b: [
    (m.features(p, b["x"]), *m.head(p)) for (m, _), p in zip(teachers, tp, strict=True)
  ]
  return student, s_params, t_params, batch, as_logits, as_pairs


def _step(student, objective, teacher_apply, params, batch, t_params):
  # Plain SGD: the step's change of the parameters is the gradient itself. Adam's first step,
  # lr·g/(|g| + eps), would turn float32 round-off in a gradient entry near 0 into an O(lr)
  # difference that depends on the CPU's vector width, not on the paths compared.
  optimizer = optax.sgd(1.0)
  step = train.make_train_step(
    student, optimizer, objective=objective, weights=WEIGHTS, teacher_apply=teacher_apply
  )
  params = train.init_params(lambda _: params)(None)
  state = train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  state, metrics = jax.jit(step)(state, batch, t_params)
  return float(metrics["loss"]), state.params["student"]


@pytest.mark.slow
@pytest.mark.parametrize(
  ("operator", "divergence"), [("linear", "forward_kl"), ("geometric", "jsd(beta=0.3)")]
)
def test_fused_student_step_equals_the_logits_path(operator, divergence):
  student, s_params, t_params, batch, as_logits, as_pairs = _problem()
  op = {"linear": operators.linear, "geometric": operators.geometric}[operator]
  kw = {"temperatures": K_TEMPS, "student_temperature": 2.0, "divergence": divergence}
  ref_loss, ref = _step(
    student.apply,
    objectives.mixture(op, implementation="composed", **kw),
    as_logits,
    s_params,
    batch,
    t_params,
  )
  fused = objectives.mixture_from_hidden(op, token_chunk=24, **kw)  # 64 tokens: ragged chunks
  for teacher_apply in (as_pairs, as_logits):  # teachers online as (hidden, head) or logits
    loss, got = _step(student, fused, teacher_apply, s_params, batch, t_params)
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  moved = max(
    float(jnp.abs(a - b).max())
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(s_params), strict=True)
  )
  assert moved > 1e-3  # the step did update the student


def test_fused_student_step_never_builds_the_student_logits():
  """Compiled temporaries: no [B, L, V] array of the student's in the fused step's HLO."""
  student, s_params, t_params, batch, _, as_pairs = _problem()
  fused = objectives.mixture_from_hidden("linear", temperatures=K_TEMPS, token_chunk=8)
  optimizer = optax.sgd(0.1)
  step = train.make_train_step(
    student, optimizer, objective=fused, weights=WEIGHTS, teacher_apply=as_pairs
  )
  params = train.init_params(lambda _: s_params)(None)
  state = train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  hlo = jax.jit(step).lower(state, batch, t_params).as_text()
  assert "f32[4,16,256]" not in hlo and "f32[64,256]" not in hlo


def test_hidden_objective_needs_a_model_with_features_and_no_blend():
  student, *_ = _problem()
  fused = objectives.mixture_from_hidden("linear", temperatures=K_TEMPS)
  with pytest.raises(ValueError, match="student_apply: an objective from hidden states needs"):
    train.make_train_step(student.apply, optax.sgd(0.1), objective=fused, weights=WEIGHTS)
  with pytest.raises(ValueError, match="label_weight, weighting"):
    train.make_train_step(
      student, optax.sgd(0.1), objective=fused, weights=WEIGHTS, label_weight=0.5
    )
  with pytest.raises(ValueError, match="operator: the fused projection implements"):
    objectives.mixture_from_hidden(operators.power(alpha=0.5), temperatures=K_TEMPS)
