"""Tests of the guarantee experiments: measured numbers against the closed forms.

The training-based parts at small size (Jensen gap along a digits run, capacity sweep, operator
comparison) are exercised with assertions by tests/test_notebooks_guarantees.py, which also
compares every `:small` run with its fixture in tests/data/results_small/.

Monte-Carlo tolerance of Thm IV.2: the unbiased variance of n draws has relative standard
deviation √(2/(n−1)) for Gaussian data (less for the bounded noise used here); the experiment
averages V nearly independent tokens, so its estimate has relative std ≈ √(2/((n−1)V)) and the
check is a 4-sigma band, `variance_reduction.tolerance(n, V)`.
"""

import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import results_compare

from mtkd_jax import configs, operators, theory
from mtkd_jax.experiments import (
  bias_attenuation,
  capacity,
  common,
  jensen_bound,
  log_loss_bound,
  safety_attenuation,
)
from mtkd_jax.experiments import variance_reduction as vr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "results_small")
MY_CONFIGS = {
  "variance_reduction": "variance_reduction",
  "jensen_bound": "jensen_bound",
  "log_loss_bound": "log_loss_bound",
  "safety_attenuation": "safety_attenuation",
  "bias_attenuation": "bias_attenuation",
  "capacity": "capacity",
  "operators": "operators_comparison",
}


def load_config(name, small=True):
  """experiments/configs/<name>.py, `:small` by default."""
  return configs.load(
    os.path.join(ROOT, "experiments", "configs", f"{name}.py") + (":small" if small else "")
  )


def assert_matches_fixture(module, results):
  """`results` (after a JSON round trip) equal tests/data/results_small/<module>.json to 1e-6."""
  with open(os.path.join(FIXTURES, f"{module}.json")) as f:
    fixture = json.load(f)
  assert results_compare.differences(fixture, json.loads(json.dumps(results, default=float))) == []


# --------------------------------------------------------------------------------------------
# Thm IV.2, variance reduction.
# --------------------------------------------------------------------------------------------
def _variance_results():
  config = load_config("variance_reduction")
  config.operators = ("linear", "entropic(beta=0.5)")
  config.num_teachers = (2, 4, 8)
  config.rhos = (0.0, 0.5)
  config.seed = 3
  config.progress = False
  vr.validate_config(config)
  return vr.run(config, "unused")


def test_tolerance_formula():
  assert vr.tolerance(2001, 10) == pytest.approx(4 * math.sqrt(2 / 20000))


def test_measured_variance_matches_closed_form():
  """One Monte-Carlo run (linear and entropic), checked three ways."""
  res = _variance_results()
  _check_closed_form(res)
  _check_can_fail(res)
  _check_entropic(res)


def _check_closed_form(res):
  tol = res["tolerance"]
  assert tol == pytest.approx(4 * math.sqrt(2 / ((res["num_seeds"] - 1) * res["vocab_size"])))
  rows = vr.select(res, operator="linear")
  assert {(r["num_teachers"], r["rho"]) for r in rows} == {
    (k, rho) for k in (2, 4, 8) for rho in (0.0, 0.5)
  }
  for r in rows:
    assert abs(r["measured"] / r["closed_form"] - 1) <= tol, r
    # The closed form itself, by hand: Σ w_k² σ_k² (ρ = 0) or wᵀCw with C_jl = ρ σ_j σ_l.
    k = r["num_teachers"]
    w = vr.teacher_weights(r["weighting"], k, k, 0.6)
    s = vr.teacher_sigmas(r["sigmas"], k, res["sigma"], 0.5)
    cov = r["rho"] * np.outer(s, s) + (1 - r["rho"]) * np.diag(s**2)
    assert r["closed_form"] == pytest.approx(w @ cov @ w, rel=1e-5)
    if r["rho"] == 0.0:
      assert r["closed_form"] == pytest.approx(np.sum(w**2 * s**2), rel=1e-5)
    if r["sigmas"] == "equal":
      sw2 = np.sum(w**2)
      assert r["closed_form"] == pytest.approx(
        res["sigma"] ** 2 * (sw2 + r["rho"] * (1 - sw2)), rel=1e-5
      )
    assert r["measured"] < r["single_teacher"]  # strict reduction, K ≥ 2
  assert res["min_teacher_probability"] > 0  # nothing left the simplex


def _check_can_fail(variance_results):
  """Ignoring the correlation (Σ w² σ² at ρ = 0.5) is far outside the Monte-Carlo tolerance."""
  tol = variance_results["tolerance"]
  for r in vr.select(variance_results, operator="linear", rho=0.5):
    sigma = vr.teacher_sigmas(r["sigmas"], r["num_teachers"], variance_results["sigma"], 0.5)
    w = vr.teacher_weights(r["weighting"], r["num_teachers"], r["num_teachers"], 0.6)
    assert abs(r["measured"] / np.sum(w**2 * sigma**2) - 1) > 3 * tol


def _check_entropic(variance_results):
  for r in vr.select(variance_results, operator="entropic(beta=0.5)"):
    assert 0.4 < r["ratio_to_closed_form"] < 0.7  # flattening shrinks the fluctuations
    assert r["bias"] > 10 * vr.select(variance_results, operator="linear")[0]["bias"]


def test_noise_is_zero_sum_unit_variance_and_correlated():
  keys = jax.random.split(jax.random.key(11), 20000)
  z = jax.vmap(lambda k: vr.noise(k, 0.5, 3, 6))(keys)  # [n, K, V]
  np.testing.assert_allclose(z.sum(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.var(0).mean(), 1.0, rtol=0.03)
  corr = np.corrcoef(np.asarray(z[:, 0, :]).ravel(), np.asarray(z[:, 1, :]).ravel())[0, 1]
  assert corr == pytest.approx(0.5, abs=0.03)


def test_variance_config_refuses_noise_that_leaves_the_simplex():
  config = load_config("variance_reduction")
  config.sigma = 0.02
  with pytest.raises(ValueError, match=r"config\.sigma"):
    vr.validate_config(config)


# --------------------------------------------------------------------------------------------
# Thm IV.7 Jensen bound, Thm IV.9 log-loss bound.
# --------------------------------------------------------------------------------------------
def test_jensen_random_search():
  config = load_config("jensen_bound")
  config.operators = ("linear", "geometric", "entropic(beta=0.5)")
  config.num_random = 3000
  config.seed = 5
  res = jensen_bound.random_search(config)
  assert res["linear"]["fraction"] == 0.0 and res["linear"]["counterexample"] is None
  assert res["linear"]["max_abs_gap_minus_js"] < 1e-5  # L_multi − L_mix = JS
  for spec in ("geometric", "entropic(beta=0.5)"):  # the paper's "any operator" claim fails
    assert res[spec]["fraction"] > 0.05
    ex = res[spec]["counterexample"]
    p, w, s = (np.asarray(ex[k], np.float64) for k in ("teachers", "weights", "student"))
    p, s, w = p / p.sum(-1, keepdims=True), s / s.sum(), w / w.sum()
    log_q = operators.get(spec)(jnp.log(p), temperatures=jnp.ones(3), weights=w)
    q = np.exp(np.asarray(log_q, np.float64))
    kl = lambda a, b: np.sum(a * (np.log(a) - np.log(b)))
    assert kl(q, s) > sum(w[k] * kl(p[k], s) for k in range(3)) + 0.1  # reproduces


def test_jensen_identity_on_hand_example():
  p = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
  w = jnp.array([0.25, 0.75])
  q = 0.25 * np.exp(p[0]) + 0.75 * np.exp(p[1])
  js = sum(w[k] * np.sum(np.exp(p[k]) * (p[k] - np.log(q))) for k in range(2))
  assert float(theory.jensen_gap(p, temperatures=jnp.ones(2), weights=w)) == pytest.approx(js)


def test_log_loss_bound_per_operator():
  log_p, w, rng = common.random_teachers(7, 3000, 3, 6)
  labels = rng.integers(0, 6, 3000)
  specs = ("linear", "geometric", "power(alpha=0.5)", "power(alpha=2)", "entropic(beta=0.5)")
  res = log_loss_bound.check_bound(log_p, labels, w, np.ones(3, np.float32), specs)
  for spec in ("linear", "geometric", "power(alpha=0.5)"):  # Jensen, Hölder, power means α ≤ 1
    assert res[spec]["fraction"] == 0.0, spec
    assert res[spec]["max_violation"] <= log_loss_bound.TOL
  for spec in ("power(alpha=2)", "entropic(beta=0.5)"):
    assert res[spec]["fraction"] > 0.01, spec
    ex = res[spec]["counterexample"]
    assert ex["neg_log_q_y"] > ex["bound"]
  # Hand check of one example for the linear operator.
  q = np.sum(w[:, 0, None] * np.exp(log_p[:, 0]), axis=0)
  assert res["linear"]["lhs"][0] == pytest.approx(-np.log(q[labels[0]]), rel=1e-4)


# --------------------------------------------------------------------------------------------
# Prop IV.11 / Cor IV.12 safety.
# --------------------------------------------------------------------------------------------
def test_safety_attenuation():
  config = load_config("safety_attenuation")
  config.num_random = 3000
  config.operators = ("linear", "geometric", "power(alpha=2)", "entropic(beta=0.5)")
  safety_attenuation.validate_config(config)
  res = safety_attenuation.run(config, "unused")
  for sc in res["scenarios"].values():
    assert sc["violations"]["linear"] == []
    np.testing.assert_array_less(np.asarray(sc["q"]["linear"]), np.asarray(sc["bound"]) + 1e-6)
  # Hand value: consensus scenario, w* = 0, geometric pool of (0.4, 0.01, 0.59) and
  # (0.4, 0.59, 0.01): q(0) = 0.4 / (0.4 + 2 √(0.0059)) = 0.7225 > p_max = 0.4.
  consensus = res["scenarios"]["consensus"]
  q0 = 0.4 / (0.4 + 2 * math.sqrt(0.01 * 0.59))
  assert consensus["q"]["geometric"][0] == pytest.approx(q0, abs=1e-4)
  assert 0.0 in consensus["violations"]["geometric"]
  assert res["scenarios"]["confident"]["violations"]["power(alpha=2)"]  # breaks at large w*
  rnd = res["random"]
  assert rnd["linear"]["cor_iv12"]["fraction"] == 0.0
  assert rnd["linear"]["prop_iv11"]["fraction"] == 0.0
  for spec in ("geometric", "power(alpha=2)", "entropic(beta=0.5)"):
    assert rnd[spec]["cor_iv12"]["fraction"] > 0.01, spec
  assert rnd["geometric"]["prop_iv11"]["fraction"] > 0.01  # q(i) above every teacher's p(i)
  assert rnd["power(alpha=2)"]["prop_iv11"]["fraction"] == 0.0  # Z ≥ 1 for α ≥ 1: below p_max


# --------------------------------------------------------------------------------------------
# Bias attenuation, capacity.
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bias_attenuation(tmp_path):
  config = load_config("bias_attenuation")
  config.progress = False
  bias_attenuation.validate_config(config)
  res = bias_attenuation.run(config, str(tmp_path))
  assert_matches_fixture("bias_attenuation", res)  # the :small run, unchanged
  assert res["linear_identity_error"] < 1e-6  # b_q = Σ_k w_k b_k
  linear = res["aggregates"]["linear"]["bias_l2"]
  assert linear <= res["weighted_teacher_bias_l2"] + 1e-9  # triangle inequality
  assert linear < res["best_teacher_bias_l2"]  # shifted biases cancel
  for name, t in res["teachers"].items():  # each teacher over-predicts its own window
    b = np.asarray(t["bias"])
    assert b[t["classes"]].mean() > b[np.setdiff1d(np.arange(10), t["classes"])].mean(), name


def test_capacity_targets_are_linear_mixtures():
  config = load_config("capacity")
  _, teacher_logits, w, log_q = capacity.problem(config)
  p = jax.nn.softmax(teacher_logits, axis=-1)  # [K, N, V]
  np.testing.assert_allclose(np.exp(log_q), np.einsum("k,knv->nv", w, p), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Configs, CLI, plots.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config_name", sorted(MY_CONFIGS))
def test_configs_load_and_validate(config_name):
  import importlib

  full, small = load_config(config_name, small=False), load_config(config_name)
  assert full != small  # the `if arg.small:` block shrinks the run
  for config in (full, small):
    assert config.experiment == MY_CONFIGS[config_name]
    module = importlib.import_module(f"mtkd_jax.experiments.{config.experiment}")
    module.validate_config(config)
    assert hasattr(module, "run") and hasattr(module, "format_table")
  assert os.path.exists(os.path.join(ROOT, "experiments", "plots", f"{config_name}.py"))
  if "operators" in config:
    config.operators = ("linear", "nope(alpha=3)")
    with pytest.raises(ValueError, match=r"config\.operators"):
      module.validate_config(config)
  else:  # capacity
    config.widths = (0,)
    with pytest.raises(ValueError, match=r"config\.widths"):
      module.validate_config(config)


@pytest.mark.parametrize(
  ("config_name", "field", "value"),
  [
    ("adaptive", "num_steps", 0),
    ("adaptive", "gate_learning_rates", (1e-3, float("nan"))),
    ("bias_attenuation", "out_fraction", 1.5),
    ("capacity", "learning_rate", -1.0),
    ("digits", "keep_checkpoints", 0),
    ("jensen_bound", "num_random", 0),
    ("log_loss_bound", "random_vocab_size", 0),
    ("meta_distillation", "s0_steps", -1),
    ("operators", "seeds", (0, -1)),
    ("safety_attenuation", "unsafe_threshold", float("inf")),
    ("stdlib_lm", "store.windows", 0),
    ("variance_reduction", "skew", 0.0),
  ],
)
def test_numeric_fields_are_checked_before_any_work(config_name, field, value):
  """Every experiment refuses a bad number with a one-line `config.<field>: ...` error."""
  config = load_config(config_name)
  module = importlib.import_module(f"mtkd_jax.experiments.{config.experiment}")
  *parents, leaf = field.split(".")
  target = config
  for key in parents:
    target = target[key]
  target[leaf] = value
  with pytest.raises(ValueError) as err:
    module.validate_config(config)
  assert str(err.value).startswith(f"config.{field}: ") and "\n" not in str(err.value)


def test_digits_fields_are_validated():
  config = load_config("log_loss_bound")
  config.digits.weights = (0.5, 0.5, 0.5)
  with pytest.raises(ValueError, match=r"config\.digits\.weights"):
    log_loss_bound.validate_config(config)


def test_operator_specs():
  assert operators.get("linear") is operators.linear
  lp = jnp.log(jnp.array([[0.9, 0.1], [0.5, 0.5]]))
  got = operators.get("power(alpha=0.5)")(lp, temperatures=jnp.ones(2), weights=jnp.ones(2) / 2)
  m = (0.5 * np.sqrt([0.9, 0.1]) + 0.5 * np.sqrt(0.5)) ** 2  # power mean α = 1/2, by hand
  np.testing.assert_allclose(np.exp(got), m / m.sum(), rtol=1e-5)  # [0.7236, 0.2764]
  with pytest.raises(ValueError):
    operators.get("linear(alpha=2)")


@pytest.mark.parametrize("config_name", sorted(MY_CONFIGS))
def test_plot_draws_the_fixture(config_name, tmp_path):
  """experiments/plots/<name>.py, loaded by path, draws the fixture results to a PNG."""
  path = os.path.join(ROOT, "experiments", "plots", f"{config_name}.py")
  spec = importlib.util.spec_from_file_location(f"plot_{config_name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with open(os.path.join(FIXTURES, f"{MY_CONFIGS[config_name]}.json")) as f:
    results = json.load(f)
  png = tmp_path / f"{config_name}.png"
  module.plot(results, str(png))
  assert png.stat().st_size > 5000
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli(tmp_path):
  """`python -m mtkd_jax.main` runs an experiment config and writes results.json."""
  cli = subprocess.run(
    [
      sys.executable,
      "-m",
      "mtkd_jax.main",
      "--config=experiments/configs/log_loss_bound.py:small",
      f"--workdir={tmp_path}/cli",
      "--config.num_random=200",
      "--config.digits.teacher_steps=20",
      "--config.progress=False",
      "--config.operators=('linear', 'entropic(beta=0.5)')",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert cli.returncode == 0, cli.stderr[-2000:]
  assert "Thm IV.9" in cli.stdout
  with open(tmp_path / "cli" / "results.json") as f:
    assert json.load(f)["digits"]["linear"]["fraction"] == 0.0
