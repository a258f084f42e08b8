"""The axiom checker must be honest both ways: pass what holds, catch what breaks."""

import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import axioms, operators

# Small but enough: the smallest geometric counterexample has K = 2, V = 3.
FAST = dict(num_teachers=3, vocab_size=4, trials=24)


def not_normalised(teacher_logits, *, temperatures, weights):
  """Linear mixture with extra mass on token 0 and no renormalisation."""
  log_q = operators.linear(teacher_logits, temperatures=temperatures, weights=weights)
  return jnp.logaddexp(
    log_q,
    jnp.log(0.1) * (jnp.arange(log_q.shape[-1]) == 0) - 1e9 * (jnp.arange(log_q.shape[-1]) != 0),
  )


def jump_in_weights(teacher_logits, *, temperatures, weights):
  """Linear below w_0 = 0.5, geometric above: a jump, everything else intact."""
  lin = operators.linear(teacher_logits, temperatures=temperatures, weights=weights)
  geo = operators.geometric(teacher_logits, temperatures=temperatures, weights=weights)
  return jnp.where(weights[0] < 0.5, lin, geo)


def temperature_ignored(teacher_logits, *, temperatures, weights):
  return operators.linear(teacher_logits, temperatures=jnp.ones_like(temperatures), weights=weights)


def ignores_weights(teacher_logits, *, temperatures, weights):
  """Uniform weights whatever is passed: monotone, but never strictly."""
  k = teacher_logits.shape[0]
  return operators.linear(teacher_logits, temperatures=temperatures, weights=jnp.ones(k) / k)


def test_linear_passes_all_five():
  report = axioms.check(operators.linear, **FAST)
  assert report.passed == {1: True, 2: True, 3: True, 4: True, 5: True}
  assert all(c is None for c in report.counterexamples.values())
  assert report.all_passed


@pytest.mark.parametrize(
  "op, broken",
  [
    (not_normalised, 1),
    (jump_in_weights, 4),
    (temperature_ignored, 5),
    (ignores_weights, 3),
  ],
)
def test_broken_operators_fail_the_axiom_they_break(op, broken):
  report = axioms.check(op, **FAST)
  assert not report.passed[broken], report
  counterexample = report.counterexamples[broken]
  assert counterexample is not None and counterexample.axiom == broken
  assert counterexample.inputs["teacher_logits"].ndim == 2
  assert counterexample.quantity in str(counterexample)


def test_geometric_weight_monotonicity_counterexample_is_real():
  """The paper claims the geometric pool satisfies Axiom 3; the checker finds it does not."""
  report = axioms.check(operators.geometric, **FAST)
  assert report.passed[1] and report.passed[2] and report.passed[4] and report.passed[5]
  assert not report.passed[3]
  c = report.counterexamples[3]
  # Recompute the counterexample in float64 NumPy, independently of the operator code.
  lp, t = c.inputs["teacher_logits"], c.inputs["temperatures"]
  tempered = lp / t[:, None]
  tempered = tempered - np.log(np.exp(tempered).sum(-1, keepdims=True))

  def geometric64(w):
    log_q = (w[:, None] * tempered).sum(0)
    return np.exp(log_q) / np.exp(log_q).sum()

  before, after = geometric64(c.inputs["weights"]), geometric64(c.inputs["moved_weights"])
  moved = c.inputs["moved_weights"] - c.inputs["weights"]
  gainer, loser = int(np.argmax(moved)), int(np.argmin(moved))
  p = np.exp(tempered)
  dropped = (p[gainer] > p[loser]) & (after < before - 1e-6)
  assert dropped.any(), (before, after)
  # The smallest size is found first: two teachers, three tokens.
  assert lp.shape == (2, 3)


def test_entropic_is_not_coherent_for_a_lone_teacher():
  # q ∝ p^{1/(1+β)} flattens even a single untempered teacher.
  report = axioms.check(operators.entropic(0.5), **FAST)
  assert not report.passed[5]
  assert "lone" in report.counterexamples[5].description


def test_report_is_deterministic_in_seed():
  a = axioms.check(operators.power(2.0), seed=3, **FAST)
  b = axioms.check(operators.power(2.0), seed=3, **FAST)
  assert a.passed == b.passed
  assert str(a.counterexamples[3]) == str(b.counterexamples[3])


def test_table_prints_every_operator():
  reports = [axioms.check(operators.linear, name="linear", **FAST)]
  reports.append(axioms.check(operators.geometric, name="geometric", **FAST))
  table = axioms.format_table(reports)
  lines = table.splitlines()
  assert lines[2].startswith("| linear") and "✗" not in lines[2]
  assert lines[3].startswith("| geometric") and lines[3].count("✗") == 1
  assert "geometric, axiom 3 (weight monotonicity)" in table


def test_builtin_operator_list_covers_the_required_families():
  names = set(axioms.builtin_operators())
  assert {"linear", "geometric", "power(-1)", "power(0.5)", "power(2)", "entropic(0.5)"} <= names
  assert any(n.startswith("barycenter") for n in names)


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_teachers"):
    axioms.check(operators.linear, num_teachers=1)


def test_help_prints_usage_and_checks_nothing(capsys):
  with pytest.raises(SystemExit) as exit_:
    axioms.main(["--help"])
  assert exit_.value.code == 0
  assert capsys.readouterr().out.startswith("usage: python -m mtkd_jax.axioms")
