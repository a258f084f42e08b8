"""Tests for benchmarks/device_check.py: its code path on the CPU (--cpu), the end-to-end
section with a stand-in job, the job list against the configs, and the one-line exit on a
machine without an accelerator."""

import importlib.util
import json
import os
import subprocess
import sys
import time
import types

import pytest

from mtkd_jax import configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.py")


def _module(path, name):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


device_check = _module(SCRIPT, "device_check")


def _run(*args, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "OUT"}  # the JSON goes to --out
  return subprocess.run(
    [sys.executable, SCRIPT, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_without_accelerator_says_so_in_one_line_and_exits_0():
  p = _run(timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  assert p.stdout.startswith("no accelerator: ") and p.stdout.count("\n") == 1, p.stdout


@pytest.mark.slow
def test_cpu_mode_kernels_and_bench_write_the_json(tmp_path):
  """Tiny shapes, Pallas interpreted, on the 8 fake CPU devices of conftest (so the
  vocab-parallel check runs), the benchmark at one K in its own process."""
  out = tmp_path / "check.json"
  p = _run("--cpu", f"--out={out}", "--ks=2", "--sections=kernels,bench", "--budget=900")
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert "| kernel check |" in p.stdout and "all ok: True" in p.stdout
  report = json.loads(out.read_text())
  assert report["backend"] == "cpu" and report["cpu_mode"] and report["ok"]

  kernels = {r["name"]: r for r in report["kernels"]}
  fused = [r for name, r in kernels.items() if name.startswith("fused_kd_loss ")]
  assert len(fused) == 2 and all(r["ok"] for r in fused)
  assert all(0 <= r["fwd_err"] <= 1 and 0 <= r["grad_err"] <= 1 for r in fused)
  assert {r["name"].split()[2] for r in fused} == {"float32", "bfloat16"}
  vocab_parallel = kernels[f"fused_kd_loss_vocab_parallel x{report['devices']}"]
  assert report["devices"] == 8 and vocab_parallel["ok"] and vocab_parallel["linear"]
  assert kernels["fused_mixture"]["ok"] and set(kernels["fused_mixture"]["fwd_err"]) == {
    "geometric"
  }
  assert kernels["implementation='auto'"]["path"] == "xla"  # the CPU's choice, no fallback
  assert kernels["implementation='auto'"]["fallback_warning"] is None

  bench = report["bench"]
  assert bench["copy_bandwidth_bytes_per_s"] > 0
  (row,) = [r for r in bench["rows"] if r["kind"] == "kd"]
  assert (row["K"], row["N"], row["V"], row["dtype"]) == (2, 64, 1000, "bfloat16")
  assert row["bytes_once"] == (2 + 2) * 64 * 1000 * 2
  assert set(row["cases"]) == {"pallas", "xla", "naive"}
  for case in row["cases"].values():
    assert case["ms"] > 0 and case["floor_ms"] > 0 and case["reps"] >= 3
    assert case["temp_bytes"] is None or case["temp_bytes"] >= 0
  assert "| kd | 2 | 64 | 1000 | naive |" in p.stdout
  targets = bench["targets"]
  assert targets["K"] == 2 and targets["time_vs_naive"] > 0 and targets["peak_vs_naive"] is None


def test_e2e_section_runs_each_job_and_reads_its_results(tmp_path, monkeypatch):
  """A stand-in job in place of the CLI (the real jobs take minutes on 2 CPU cores)."""
  write = "import json, sys; json.dump({'accuracy': 0.9}, open(sys.argv[1] + '/results.json', 'w'))"
  jobs = {"ok_job": ["-c", write, "{workdir}"], "bad_job": ["-c", "raise SystemExit(3)"]}
  monkeypatch.setattr(device_check, "E2E_JOBS", jobs)
  args = types.SimpleNamespace(
    jobs=set(), cpu=True, t0=time.perf_counter(), deadline=time.perf_counter() + 120
  )
  rows = {r["name"]: r for r in device_check.run_e2e(args)}
  assert rows["ok_job"]["ok"] and rows["ok_job"]["results"] == {"accuracy": 0.9}
  assert "{workdir}" not in rows["ok_job"]["command"]
  assert not rows["bad_job"]["ok"] and rows["bad_job"]["rc"] == 3


def test_e2e_jobs_name_existing_configs_and_fields():
  """The job list stays in step with the configs: every file and overridden field exists."""
  for name, argv in device_check.E2E_JOBS.items():
    argv = argv + device_check.E2E_CPU_OVERRIDES.get(name, [])
    (path,) = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    config = configs.load(os.path.join(ROOT, path))
    for arg in argv:
      if arg.startswith("--config."):
        field = arg[len("--config.") :].split("=")[0]
        assert field in config, (name, field)
