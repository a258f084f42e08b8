"""The scripts of examples/ run as a user runs them (subprocesses, 8 fake CPU devices)."""

import os
import re
import subprocess
import sys

import _processes
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(
  os.environ,
  XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {_processes.CHEAP_XLA_FLAGS}",
  JAX_PLATFORMS="cpu",
)


def _run(script, *args):
  result = subprocess.run(
    [sys.executable, os.path.join(ROOT, "examples", script), *args],
    env=ENV,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_train_from_logits_trains_on_a_mesh_and_reloads_the_same_student(tmp_path):
  workdir = tmp_path / "w"
  out = _run("train_from_logits.py", f"--workdir={workdir}", "--steps=100")
  assert re.search(r"^one jitted step: loss \d+\.\d+$", out, re.M), out
  trained = re.search(r"^train\.train: 100 steps on 8 devices, last loss (\S+)$", out, re.M)
  assert trained, out
  scores = re.findall(
    r"^(trained|reloaded \(step 100\)) student: test KD loss (\S+), accuracy (\S+)", out, re.M
  )
  assert [s[0] for s in scores] == ["trained", "reloaded (step 100)"], out
  (_, kd_trained, acc_trained), (_, kd_reloaded, acc_reloaded) = scores
  assert (kd_reloaded, acc_reloaded) == (kd_trained, acc_trained)  # the very same parameters
  assert float(acc_reloaded) > 0.5  # chance: 1/8
  assert float(kd_reloaded) < 0.5 * float(re.search(r"loss (\S+)", out).group(1))
  assert os.path.isdir(workdir / "checkpoints" / "student" / "100")


@pytest.mark.slow
def test_flax_teachers_run_inside_the_step(tmp_path):
  out = _run("flax_teachers.py", f"--workdir={tmp_path / 'w'}", "--steps=100")
  teachers = re.findall(r"^teacher_\d \(width \d+\): test accuracy (\S+)$", out, re.M)
  assert len(teachers) == 3 and all(float(a) > 0.7 for a in teachers), out
  student = re.search(
    r"^student \(from all 3 teachers, 100 steps on 8 devices\): "
    r"test accuracy (\S+), log-loss (\S+)$",
    out,
    re.M,
  )
  assert student and float(student.group(1)) > 0.8, out  # chance: 0.1
  assert os.path.isdir(tmp_path / "w" / "checkpoints" / "student" / "100")
