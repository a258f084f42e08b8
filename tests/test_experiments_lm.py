"""The stdlib_lm experiment end to end at the small size: CLI run, teacher dump CLI, notebook.

The CLI run starts from an empty workdir (as from a fresh clone), is SIGKILLed during student
training and run again, and must give the results of tests/data/results_small/stdlib_lm.json
(one uninterrupted run); the dump CLI restores the same teachers and must write byte-identical
shards; the notebook resumes the run's workdir, so it re-evaluates restored models and must
print the same numbers.
"""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import nbformat
import numpy as np
import pytest
import results_compare
from nbclient import NotebookClient

from mtkd_jax import teachers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=experiments/configs/stdlib_lm.py:small"
TIMINGS = ("timings_s", "total_time_s")  # wall-clock times: the only fields a rerun changes


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it
  return env


def _small_run(tmp_path):
  """The CLI run, SIGKILLed in the middle of a student's training (the first seed of the
  mixture student, once its step-4 checkpoint of 8 is written), then run again to the end: it
  restores the finished students, resumes that one from step 4, and must give the results of
  the fixture, made by one uninterrupted run."""
  runs = tmp_path / "runs"
  workdir = runs / "stdlib_lm"
  cmd = [
    sys.executable,
    "-m",
    "mtkd_jax.main",
    CONFIG,
    "--config.progress=False",
    f"--workdir={workdir}",
  ]
  # Checkpoint fields only say when to save: the rerun may change them (RESUMABLE_FIELDS).
  every = ["--config.checkpoint_every=4", "--config.keep_checkpoints=2"]
  mark = workdir / "checkpoints" / "student_mixture_linear_seed100" / "4"
  with open(tmp_path / "killed.log", "w") as log:
    killed = subprocess.Popen(
      cmd + every, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 600
    while not mark.exists() and killed.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    rc = killed.wait()
  assert rc == -signal.SIGKILL and mark.exists(), (
    rc,
    (tmp_path / "killed.log").read_text()[-4000:],
  )
  assert not (workdir / "results.json").exists()
  finished = workdir / "checkpoints" / "student_labels_seed100"
  stamps = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == stamps  # restored, not redone
  with open(workdir / "results.json") as f:
    return runs, workdir, proc.stdout, json.load(f)


@pytest.mark.slow
def test_small_run_then_dump_cli_then_notebook(tmp_path, monkeypatch):
  """One test, so the run (the expensive part) is shared even when pytest-xdist splits files."""
  small_run = _small_run(tmp_path)
  _check_results(small_run)
  _check_dump_cli(small_run, tmp_path)
  _check_notebook(small_run, tmp_path, monkeypatch)


def _check_results(small_run):
  _, workdir, stdout, results = small_run
  bpb, se = results["bits_per_byte"], results["bits_per_byte_se"]
  fams = ["tests", "tools", "core"]
  students = ["student[labels]", *(f"student[teacher {f}]" for f in fams)]
  students += ["student[mixture linear]", "student[mixture linear, jsd(beta=0.5)]"]
  students += ["student[mixture linear + 0.25 labels]", "student[label_aware(tau=1.0)]"]
  students += [f"student[top4,{m}]" for m in ("drop", "bucket")]
  want = [f"teacher[{f}]" for f in fams] + ["teacher mixture", *students]
  assert sorted(bpb) == sorted(want)
  assert sorted(se) == sorted(students) and results["num_seeds"] == 2
  assert sorted(results["vs_labels"]) == sorted(students[1:])
  assert results["eval_split"] == "test"
  for name, row in [*bpb.items(), ("average teacher", results["average_teacher"])]:
    assert sorted(row) == sorted([*fams, "all"]), name
    assert all(math.isfinite(v) and 0.5 < v < 8.5 for v in row.values()), (name, row)
    assert f"{row['all']:.4f}" in stdout  # the printed table holds the same numbers
  for name in students:  # mean ± s.e. over the seeds, and the paired difference to labels
    seeds = results["bits_per_byte_seeds"][name]["all"]
    assert len(seeds) == 2 and math.isclose(bpb[name]["all"], sum(seeds) / 2)
    assert math.isclose(se[name]["all"], abs(seeds[0] - seeds[1]) / 2, rel_tol=1e-9)
    assert f"{bpb[name]['all']:.4f} ± {se[name]['all']:.4f}" in stdout
  labels = results["bits_per_byte_seeds"]["student[labels]"]["all"]
  mix = results["bits_per_byte_seeds"]["student[mixture linear]"]["all"]
  d = results["vs_labels"]["student[mixture linear]"]["all"]
  assert math.isclose(d["mean"], (mix[0] - labels[0] + mix[1] - labels[1]) / 2, abs_tol=1e-12)
  # The teachers are larger than the student, and learned something (uniform bytes: 8 bits);
  # the mixture of teachers is at least as good as their average (log-loss bound, Thm IV.9).
  assert results["num_params"]["teacher"] > results["num_params"]["student"]
  assert all(bpb[f"teacher[{f}]"]["all"] < 7.9 for f in fams)
  assert bpb["teacher mixture"]["all"] <= results["average_teacher"]["all"] + 1e-9
  # Validation files are carved from the training files: three disjoint splits.
  assert all(results["validation_bytes"][f] > 0 for f in fams)
  # Different targets give different students (same init and batches).
  assert len({round(bpb[n]["all"], 6) for n in students}) == len(students)
  store = teachers.open_store(str(workdir / "store"))  # checksums verified
  assert store.k == 16 and store.names == tuple(fams) and store.manifest["num_rows"] == 48
  spec = importlib.util.spec_from_file_location(
    "plot_stdlib_lm", os.path.join(ROOT, "experiments", "plots", "stdlib_lm.py")
  )
  plots = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(plots)
  plots.plot(results, str(workdir / "sparse_teachers.png"))
  with open(workdir / "sparse_teachers.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(ROOT, "tests", "data", "results_small", "stdlib_lm.json")) as f:
    fixture = json.load(f)
  # The store's size on disk is zstd's output: the last bit of one stored bf16 log-prob changes
  # it by a few bytes (the fixture's 117,412 vs 117,419 on an AMD EPYC at full XLA:CPU optimisation,
  # where every bits-per-byte number still equals the fixture to 1e-6). To 0.1%, then.
  assert math.isclose(results["store"]["bytes"], fixture["store"]["bytes"], rel_tol=1e-3)
  strip = lambda r: {
    **{k: v for k, v in r.items() if k not in TIMINGS},
    "store": {k: v for k, v in r["store"].items() if k != "bytes"},
  }
  assert results_compare.differences(strip(fixture), strip(results)) == []


def _check_dump_cli(small_run, tmp_path):
  _, workdir, _, _ = small_run
  out = tmp_path / "dump"
  args = [CONFIG, f"--out={out}", f"--workdir={workdir}"]
  cmd = [sys.executable, "-m", "mtkd_jax.teachers", "dump", *args]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "shards ok" in proc.stdout
  new, old = (teachers.open_store(str(d)).manifest for d in (out, workdir / "store"))
  assert [t["sha256"] for t in new["teachers"]] == [t["sha256"] for t in old["teachers"]]
  assert new["tokens"]["sha256"] == old["tokens"]["sha256"]


def _check_notebook(small_run, tmp_path, monkeypatch):
  runs, _, _, results = small_run
  monkeypatch.setenv("MTKD_NOTEBOOK_SIZE", "small")
  monkeypatch.setenv("MTKD_NOTEBOOK_WORKDIR", str(runs))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  (tmp_path / "nb").mkdir()
  (tmp_path / "experiments").symlink_to(os.path.join(ROOT, "experiments"))  # ../experiments
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "sparse_teachers.ipynb"), as_version=4)
  for cell in nb.cells:  # the committed outputs are those of the full-size run: start afresh
    if cell.cell_type == "code":
      cell.outputs = []
  NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path / "nb")}}
  ).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  for name in ("sparse_teachers.png", "sparse_teachers_bpb_vs_k.png"):
    assert os.path.getsize(runs / name) > 5000
  dense = results["bits_per_byte"]["student[mixture linear]"]["all"]
  assert f"dense student {dense:.4f} bits/byte" in text  # restored, not retrained differently
  for mode in ("drop", "bucket"):
    k4 = results["bits_per_byte"][f"student[top4,{mode}]"]["all"] - dense
    assert f"{mode:<8} gap to the dense-teacher student" in text and f"{k4:+.4f}" in text


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "log8"])
def test_every_store_dtype_is_a_valid_config(dtype):
  from mtkd_jax import configs
  from mtkd_jax.experiments import stdlib_lm

  config = configs.load(os.path.join(ROOT, "experiments", "configs", "stdlib_lm.py:small"))
  config.store.dtype = dtype
  stdlib_lm.validate_config(config)
  config.store.dtype = "int4"
  with pytest.raises(ValueError, match=r"config.store.dtype: one of .*'log8'.*, got 'int4'"):
    stdlib_lm.validate_config(config)


def test_a_store_of_other_teachers_is_dumped_again(tmp_path):
  """The workdir's store is reused only when its manifest records the same teachers and windows
  (`_teacher_source` puts their SHA-256 there); other teachers give a new dump, never the old
  teachers' top-k."""
  from mtkd_jax import configs
  from mtkd_jax.experiments import stdlib_lm

  config = configs.load(os.path.join(ROOT, "experiments", "configs", "stdlib_lm.py:small"))
  config.seq_len, config.store.windows, config.store.k, config.progress = 4, 8, 4, False
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (8, 5)).astype(np.int32)

  def source(seed, digest):
    table = np.random.default_rng(seed).standard_normal((2, 256, 256)).astype(np.float32)
    ident = ({"params_sha256": digest}, {"params_sha256": "b"})
    logits = lambda x: jnp.asarray(table[:, x])  # [2, B, L, 256]
    return teachers.TeacherSource(("a", "b"), tokens, logits, 256, ident)

  directory = str(tmp_path / "store")
  read = lambda store: np.asarray(store.arrays(4)["teacher_log_probs_0"]).astype(np.float32)
  first = read(stdlib_lm._open_or_dump_store(config, directory, source(1, "a")))
  again = stdlib_lm._open_or_dump_store(config, directory, source(2, "a"))  # same digests: reused
  assert (read(again) == first).all()
  other = stdlib_lm._open_or_dump_store(config, directory, source(2, "a2"))
  assert other.manifest["teachers"][0]["config"] == {"params_sha256": "a2"}
  assert (read(other) != first).any()


@pytest.mark.slow
def test_teachers_from_the_store(tmp_path):
  """`teachers="store"`: every distilled student reads the store at store.k, so the mixture
  student is the top-16 bucket student (the same objective, init and batches: one step), and a
  single teacher's student reads that teacher's columns. Online, only students without a blend
  or adaptive weights, with the linear or geometric operator, take the fused path from hidden
  states. (Picking teachers out of a store: tests/test_store.py.)"""
  from mtkd_jax import configs
  from mtkd_jax.experiments import stdlib_lm

  config = configs.load(os.path.join(ROOT, "experiments", "configs", "stdlib_lm.py:small"))
  config.dense_operators = ("linear", "power(alpha=0.5)")
  runs = {r["name"]: r for r in stdlib_lm.student_runs(config)}
  kinds = {n: r["kind"] for n, r in runs.items()}
  assert kinds["student[mixture linear]"] == kinds["student[teacher core]"] == "hidden"
  assert kinds["student[mixture linear, jsd(beta=0.5)]"] == "hidden"
  assert kinds["student[mixture power(alpha=0.5)]"] == "dense"
  assert kinds["student[mixture linear + 0.25 labels]"] == "dense"
  assert kinds["student[label_aware(tau=1.0)]"] == "dense"
  config.teachers = "store"
  with pytest.raises(ValueError, match=r"config\.adaptive: .*teachers='store'"):
    stdlib_lm.validate_config(config)
  config.adaptive = ""
  with pytest.raises(ValueError, match=r"config\.dense_operators: .*power"):
    stdlib_lm.validate_config(config)
  config.dense_operators = ("linear",)
  config.store.tail_mode, config.divergences = "drop", ("reverse_kl",)
  with pytest.raises(ValueError, match=r"config\.divergences: .*reverse"):
    stdlib_lm.validate_config(config)
  config.store.tail_mode = "bucked"
  with pytest.raises(ValueError, match=r"config\.store\.tail_mode: .*bucked"):
    stdlib_lm.validate_config(config)
  config.store.tail_mode = "bucket"
  single = next(r for r in stdlib_lm.student_runs(config) if r["name"] == "student[teacher core]")
  assert (single["kind"], single["teachers"], single["k"]) == ("sparse", (2,), 16)
  assert single["tail_mode"] == "bucket"
  # The run: one CPU device and the session's teacher cache, as the CLI test above.
  overrides = {"teachers": "store", "adaptive": "", "divergences": "()", "label_weight": 0}
  overrides.update(num_seeds=1, label_student=False, single_teacher_students=False)
  overrides.update(progress=False, eval_windows=4, k_values="(16,)", tail_modes="('bucket',)")
  cmd = [sys.executable, "-m", "mtkd_jax.main", CONFIG, f"--workdir={tmp_path}"]
  cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  bpb = results["bits_per_byte"]
  assert results["teachers"] == "store" and "teachers: store" in proc.stdout
  assert bpb["student[mixture linear]"] == bpb["student[top16,bucket]"]
