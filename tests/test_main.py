"""Tests for the launcher mtkd_jax.main and the digits job: config checks, end to end, refusal."""

import json
import os
import subprocess
import sys

import _processes
import numpy as np
import pytest
import results_compare

from mtkd_jax import configs, train
from mtkd_jax.experiments import digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "digits.py")


def _config(**overrides):
  config = configs.load(CONFIG)
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def test_default_config_is_valid():
  digits.validate_config(_config())
  digits.validate_config(_config(operator="power(alpha=0.5)"))
  digits.validate_config(_config(weighting="confidence(tau=0.5)"))


@pytest.mark.parametrize(
  ("overrides", "field"),
  [
    ({"operator": "median"}, "config.operator"),
    ({"compare_operators": ("geometric", "mean")}, "config.compare_operators"),
    ({"loss": "l2"}, "config.loss"),
    ({"model": "resnet"}, "config.model"),
    ({"temperatures": (1.0, 0.0, 1.0)}, "config.temperatures"),
    ({"temperatures": (1.0, -1.0, 1.0)}, "config.temperatures"),
    ({"temperatures": (1.0, 1.0)}, "config.temperatures"),
    ({"student_temperature": -1.0}, "config.student_temperature"),
    ({"weights": (0.5, 0.5)}, "config.weights"),
    ({"weights": (0.5, 0.4, 0.4)}, "config.weights"),
    ({"teacher_noises": (0.1,)}, "config.teacher_noises"),
    ({"mesh.model": 3}, "config.mesh"),
    ({"mesh.data": 3, "mesh.model": 1}, "config.mesh"),
    ({"batch_size": 0}, "config.batch_size"),
    ({"operator": "power"}, "config.operator"),  # power needs alpha
    ({"operator": "power(0.5)"}, "config.operator"),  # arguments by keyword
    ({"operator": "linear(alpha=0.5)"}, "config.operator"),  # linear takes no alpha
    ({"operator": "power(alpha=__import__('os'))"}, "config.operator"),  # literals only
    ({"weighting": "confidence(tua=0.5)"}, "config.weighting"),
    ({"weighting": "entropy"}, "config.weighting"),
    ({"divergence": "jsd(beta=2)"}, "config.loss"),
    ({"divergence": "tv"}, "config.loss"),
    ({"num_steps": -1}, "config.num_steps"),
    ({"log_every": 0}, "config.log_every"),
    ({"keep_checkpoints": 0}, "config.keep_checkpoints"),
    ({"learning_rate": float("nan")}, "config.learning_rate"),
    ({"learning_rate": -1.0}, "config.learning_rate"),
    ({"teacher_learning_rate": float("inf")}, "config.teacher_learning_rate"),
    ({"teacher_keep_fractions": (0.4, 0.0, 0.4)}, "config.teacher_keep_fractions"),
    ({"teacher_noises": (0.1, -0.1, 0.0)}, "config.teacher_noises"),
  ],
)
def test_bad_config_is_a_one_line_error_naming_the_field(overrides, field):
  with pytest.raises(ValueError) as err:
    digits.validate_config(_config(**overrides))
  message = str(err.value)
  assert message.startswith(field + ":"), message
  assert "\n" not in message


def _run_cli(workdir, *flags, timeout=240, config=CONFIG, devices=2, env=None):
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {_processes.CHEAP_XLA_FLAGS}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT,
    **(env or {}),
  )
  cmd = [sys.executable, "-m", "mtkd_jax.main", f"--config={config}", f"--workdir={workdir}"]
  return subprocess.run(
    [*cmd, *flags], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def test_cli_rejects_unknown_operator_before_compiling(tmp_path):
  r = _run_cli(tmp_path / "w", "--config.operator=median")
  assert r.returncode == 2
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1 and "config.operator" in lines[0] and "'linear'" in lines[0], r.stderr
  assert not (tmp_path / "w").exists()  # nothing trained or written


TINY = [
  "--config.teacher_steps=20",
  "--config.num_steps=20",
  "--config.checkpoint_every=10",
  "--config.log_every=5",
  "--config.batch_size=32",
  "--config.progress=False",
]


@pytest.mark.slow
def test_cli_tiny_job_table_files_cache_and_refusal(tmp_path):
  workdir, cache = tmp_path / "run", tmp_path / "teachers"
  env = {"MTKD_TEACHER_CACHE": str(cache)}
  r = _run_cli(workdir, *TINY, env=env)
  assert r.returncode == 0, f"rc={r.returncode}\n{r.stderr[-3000:]}"
  for name in (
    "teacher_0",
    "teacher_2",
    "student_linear",
    "student_geometric",
    "student_from_teacher_1",
    "average teacher",
    "ensemble_q_linear",
  ):
    assert name in r.stdout, r.stdout
  results = json.loads((workdir / "results.json").read_text())
  assert 0.0 <= results["student_linear"]["accuracy"] <= 1.0
  teacher_avg = sum(results[f"teacher_{k}"]["log_loss"] for k in range(3)) / 3
  assert abs(results["average teacher"]["log_loss"] - teacher_avg) < 1e-5
  acc_avg = sum(results[f"teacher_{k}"]["accuracy"] for k in range(3)) / 3
  assert abs(results["average teacher"]["accuracy"] - acc_avg) < 1e-6
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {row["run"] for row in rows} >= {"teacher_0", "student_linear", "student_geometric"}
  student_rows = [row for row in rows if row["run"] == "student_linear"]
  assert [row["step"] for row in student_rows] == [5, 10, 15, 20]
  for key in (
    "loss",
    "kl_q_student",
    "jensen_gap",
    "per_teacher_kl",
    "accuracy",
    "log_loss",
    "effective_num_teachers",
    "grad_norm",
  ):
    assert key in student_rows[0]
  assert len(student_rows[0]["per_teacher_kl"]) == 3
  assert abs(student_rows[0]["effective_num_teachers"] - 3.0) < 1e-4

  # A rerun resumes: every run is finished, so nothing is retrained and the numbers repeat.
  r2 = _run_cli(workdir, *TINY, "--config.log_every=10")  # observation-only field: allowed
  assert r2.returncode == 0, f"rc={r2.returncode}\n{r2.stderr[-3000:]}"
  assert json.loads((workdir / "results.json").read_text()) == results
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == len(rows)

  # An incompatible config is refused, and the checkpoints are left alone.
  before = sorted(p.name for p in (workdir / "checkpoints" / "student_linear").iterdir())
  r3 = _run_cli(workdir, *TINY, "--config.operator=geometric")
  assert r3.returncode == 2
  assert "incompatible config (operator: 'linear' -> 'geometric')" in r3.stderr
  assert sorted(p.name for p in (workdir / "checkpoints" / "student_linear").iterdir()) == before

  # A new workdir with another student config restores the cached teachers: no teacher is
  # trained again, their curves are copied in, and their results are the same. Without
  # JAX_COMPILATION_CACHE_DIR, compiled programs go to the user's cache directory.
  stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.name != ".lock"}
  assert len(list(cache.glob("teacher_*/key.json"))) == 3
  home = {"JAX_COMPILATION_CACHE_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "home")}
  r4 = _run_cli(tmp_path / "b", *TINY, "--config.operator=geometric", env={**env, **home})
  assert r4.returncode == 0, r4.stderr[-3000:]
  assert any((tmp_path / "home" / "mtkd_jax" / "xla").iterdir())
  assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.name != ".lock"} == stamps
  other = json.loads((tmp_path / "b" / "results.json").read_text())
  assert other["teacher_1"] == results["teacher_1"]
  rows_b = [
    json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
  ]
  assert {"teacher_0", "teacher_1", "teacher_2"} <= {row["run"] for row in rows_b}

  # More student steps in a trained workdir: the students continue from their last checkpoint.
  r5 = _run_cli(workdir, *TINY[2:], "--config.teacher_steps=20", "--config.num_steps=30", env=env)
  assert r5.returncode == 0, r5.stderr[-3000:]
  assert "continuing its runs from their last checkpoints (num_steps 20 -> 30)" in r5.stderr
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [row["step"] for row in rows if row["run"] == "student_linear"]
  assert steps == [5, 10, 15, 20, 25, 30]
  r6 = _run_cli(workdir, *TINY, env=env)  # fewer steps than the checkpoints hold: refused
  assert r6.returncode == 2 and "num_steps: 30 -> 20" in r6.stderr


@pytest.mark.slow
def test_small_digits_job_gives_the_results_of_before_the_redesign(tmp_path):
  """`digits.py:small` through the CLI: the same results.json as the job had before (1e-6)."""
  r = _run_cli(tmp_path / "w", "--config.progress=False", config=CONFIG + ":small", devices=1)
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads((tmp_path / "w" / "results.json").read_text())
  with open(os.path.join(ROOT, "tests", "data", "results_small", "digits.json")) as f:
    expected = json.load(f)
  assert results_compare.differences(expected, results) == []


@pytest.mark.slow
def test_one_hot_weights_train_and_weigh_the_average_teacher(tmp_path):
  """weights=(1,0,0): the single-teacher students still get weight 1 (no 0/0), and the average
  teacher is teacher 0 in both columns."""
  r = _run_cli(
    tmp_path / "w",
    *TINY,
    "--config.weights=(1,0,0)",
    "--config.teacher_steps=10",
    "--config.num_steps=10",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads((tmp_path / "w" / "results.json").read_text())
  for k in range(3):
    assert np.isfinite(results[f"student_from_teacher_{k}"]["log_loss"])
  for column in ("accuracy", "log_loss"):
    assert results["average teacher"][column] == pytest.approx(results["teacher_0"][column])


@pytest.mark.slow
def test_adaptive_student_is_compared_with_the_average_teacher_under_its_own_weights(tmp_path):
  from mtkd_jax import registry
  from mtkd_jax.experiments import common

  config = _config(
    weighting="confidence(tau=0.5)",
    teacher_steps=10,
    num_steps=10,
    compare_operators=(),
    single_teacher_students=False,
    batch_size=32,
    progress=False,
  )
  results = digits.run(config, str(tmp_path))
  row = results["student_linear"]
  # By hand: the scheme's [K, N] weights on the test set, then Σ_k w_k(x) log-loss_k(x), averaged.
  splits, _, _, test_logits = common.train_teachers(config, train.Loop.from_config(config, None))
  scheme = registry.get("weighting", "confidence", tau=0.5, temperatures=config.temperatures)
  w = np.asarray(scheme(test_logits, {"x": splits["test"].x, "y": splits["test"].y}))
  assert w.shape == test_logits.shape[:2] and not np.allclose(w, w[:, :1])  # per example
  expected = common.average_teacher(test_logits, splits["test"].y, w)
  assert row["average_teacher"] == pytest.approx(expected, rel=1e-6)
  table = digits.format_table(results)
  assert "the average teacher (under its adaptive weights) log-loss" in table
