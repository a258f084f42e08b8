"""Tests for mtkd_jax.store (teacher store v2): round trip, corruption by name, resume, parallel."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import _processes
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import sparse, store

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)
import _store_worker as worker  # noqa: E402

T_G = np.array([1.0, 2.0, 0.5], np.float32)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("v2") / "store")
  worker.dump(out)
  return out


def _files(directory):
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      if name not in ("dump.lock",):
        with open(os.path.join(root, name), "rb") as f:
          out[os.path.relpath(os.path.join(root, name), directory)] = f.read()
  return out


def _run_worker(out, *args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run(
    [sys.executable, os.path.join(TESTS, "_store_worker.py"), str(out), *args],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


# ---------------------------------------------------------------------------------------------
# Round trip.
# ---------------------------------------------------------------------------------------------
def test_round_trip_against_the_dense_teachers_top_k(store_dir):
  src, table = worker.source()
  s = store.open_store(store_dir, verify=True)
  m = s.manifest
  assert s.names == ("a", "b", "c") and s.k == 7 and m["num_chunks"] == 6
  assert m["teachers"][1]["config"] == {"family": "b", "layers": 2}
  np.testing.assert_array_equal(s.generation_temperatures, T_G)
  np.testing.assert_array_equal(np.asarray(s.tokens), src.tokens)
  logits = jnp.asarray(table[:, src.tokens[:, :-1]])  # [K, N, L, V]
  want = sparse.from_dense(logits, 7, generation_temperatures=T_G)
  log_p = jax.nn.log_softmax(logits / T_G[:, None, None, None], axis=-1)
  for j in range(3):
    idx = np.asarray(s.indices[j])
    assert idx.dtype == np.uint16  # V = 300
    np.testing.assert_array_equal(idx, np.asarray(want.indices[j]))
    lp = np.asarray(s.log_probs[j])
    assert lp.tobytes() == np.asarray(want.log_probs[j].astype(jnp.bfloat16)).tobytes()
    # the tail is the exact mass outside the top-7, from the logits
    outside = np.asarray(log_p[j]).copy()
    np.put_along_axis(outside, idx.astype(np.int64), -np.inf, axis=-1)
    tail = np.log(np.exp(outside.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(np.asarray(s.tail_log_mass[j]), tail, rtol=1e-5, atol=1e-5)


def test_batches_are_sharded_per_process_and_feed_the_sparse_objective(store_dir):
  s = store.open_store(store_dir)
  full = s.batch(8, seed=3, step=2, k=4)
  halves = [s.batch(8, seed=3, step=2, k=4, rows=slice(a, a + 4)) for a in (0, 4)]
  for key, value in full.items():
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value)
  out = s.teacher_apply()(None, full)
  assert out.indices.shape == (3, 8, 5, 4) and out.vocab_size == 300
  # the tail outside the top-4 prefix = stored tail (outside top-7) + listed ranks 5..7
  b7 = s.batch(8, seed=3, step=2)
  lp7 = b7["teacher_log_probs_1"].astype(np.float32)
  want = np.logaddexp(b7["teacher_tail_log_mass_1"], np.log(np.exp(lp7[..., 4:]).sum(-1)))
  np.testing.assert_allclose(full["teacher_tail_log_mass_1"], want, rtol=1e-6)
  full_t = s.teacher_apply()(None, b7).truncate(4)
  np.testing.assert_allclose(full_t.missing_log_mass, out.missing_log_mass, rtol=1e-5)
  with pytest.raises(ValueError, match="stored k"):
    s.arrays(k=8)


def test_teachers_are_picked_by_index_with_their_own_temperatures(store_dir):
  """`arrays(k, teachers)` holds only those teachers' columns; `teacher_apply(teachers)` stacks
  them in the order given, with their own generation temperatures (1, 2, 0.5 here)."""
  s = store.open_store(store_dir)
  assert sorted(k for k in s.arrays(4, (2, 0)) if k.startswith("teacher_indices")) == [
    "teacher_indices_0",
    "teacher_indices_2",
  ]
  batch = {k: jnp.asarray(v) for k, v in s.batch(8, seed=3, step=2, k=4).items()}
  every, picked = s.teacher_apply()(None, batch), s.teacher_apply((2, 0))(None, batch)
  np.testing.assert_array_equal(picked.generation_temperatures, [0.5, 1.0])
  for field in ("indices", "log_probs", "missing_log_mass"):
    want = np.asarray(getattr(every, field))[np.array([2, 0])]
    np.testing.assert_array_equal(np.asarray(getattr(picked, field)), want)
  for bad in ((0, 0), (3,), (), (1.7,), 2):
    with pytest.raises(ValueError, match=r"teachers: distinct indices in \[0, 3\)"):
      s.teacher_apply(bad)


def test_stored_tail_survives_rounding_when_retempered():
  # top-2 of V = 3 holds all but 1e-12 of the mass: 1 − Σ p rounds to 0 in float32, the stored
  # tail keeps it, and re-tempering at T = 8 T_g turns it into a visible share.
  log_p = jnp.asarray(np.log(np.array([[[0.7, 0.3 - 1e-12, 1e-12]]])), jnp.float32)
  top = sparse.from_dense(log_p, 2)
  stored = top.replace(missing_log_mass=jnp.array([[np.log(1e-12)]], jnp.float32))
  _, _, tail_rounded = sparse.retemper(top, 8.0)
  _, _, tail_stored = sparse.retemper(stored, 8.0)
  exact = (1e-12) ** (1 / 8) / (0.7 ** (1 / 8) + 0.3 ** (1 / 8) + (1e-12) ** (1 / 8))
  np.testing.assert_allclose(float(jnp.exp(tail_stored[0, 0])), exact, rtol=1e-4)
  assert abs(float(jnp.exp(tail_rounded[0, 0])) - exact) > 0.1 * exact


def test_log8_error_is_within_the_stated_bound(tmp_path):
  src, _ = worker.source()
  m = store.write_store(
    str(tmp_path), src, k=7, generation_temperatures=T_G, dtype="log8", rows_per_chunk=8
  )
  spec = m["teachers"][0]["log_probs"]
  assert spec["dtype"] == "log8" and spec["max_error"] == pytest.approx(16 / 510)
  s = store.open_store(str(tmp_path), verify=True)
  want = sparse.from_dense(
    jnp.asarray(worker.source()[1][:, src.tokens[:, :-1]]), 7, generation_temperatures=T_G
  )
  for j in range(3):
    got, exact = np.asarray(s.log_probs[j], np.float32), np.asarray(want.log_probs[j])
    inside = exact >= -16
    # bound + bf16 rounding of the decoded value (|x| ≤ 16: 2^-4 ulp / 2)
    assert np.abs(got - exact)[inside].max() <= spec["max_error"] + 2**-5
    assert (got[~inside] == -16).all()


def test_smallest_index_dtype():
  assert [store.index_dtype(v) for v in (256, 257, 65536, 65537)] == [
    "uint8",
    "uint16",
    "uint16",
    "int32",
  ]


# ---------------------------------------------------------------------------------------------
# Failures, by name.
# ---------------------------------------------------------------------------------------------
def _copy(store_dir, tmp_path, name="bad"):
  dst = str(tmp_path / name)
  shutil.copytree(store_dir, dst)
  return dst


def _flip(path, where):
  with open(path, "r+b") as f:
    f.seek(where)
    byte = f.read(1)
    f.seek(where)
    f.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("where", [5, -2])  # inside the zstd frame; inside the CRC-32C
def test_corrupted_chunk_is_named_when_read(store_dir, tmp_path, where):
  bad = _copy(store_dir, tmp_path)
  path = os.path.join(bad, "teacher_1", "log_probs", "c", "2", "0", "0")
  _flip(path, where % os.path.getsize(path))
  s = store.open_store(bad)  # metadata only: opens
  rows_in_chunk_0 = np.arange(4)
  s.log_probs[1].take(rows_in_chunk_0)  # other chunks read fine
  np.take(s.arrays(4)["teacher_log_probs_1"], rows_in_chunk_0, axis=0)  # as get_batch reads
  with pytest.raises(store.CorruptChunkError, match=r"teacher 'b' log_probs: chunk 2 is corrupt"):
    s.log_probs[1].take(np.array([1, 9]))
  with pytest.raises(store.CorruptChunkError, match=r"teacher 'b' log_probs: chunk 2"):
    store.open_store(bad, verify=True)


def test_truncated_and_missing_chunks_are_named(store_dir, tmp_path):
  bad = _copy(store_dir, tmp_path)
  path = os.path.join(bad, "teacher_2", "indices", "c", "3", "0", "0")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 3)
  s = store.open_store(bad)
  with pytest.raises(store.CorruptChunkError, match=r"teacher 'c' indices: chunk 3 is corrupt"):
    s.batch(23, seed=0, step=0)
  os.remove(path)
  with pytest.raises(store.CorruptChunkError, match=r"teacher 'c' indices: chunk 3 is missing"):
    store.open_store(bad).indices[2].take(np.array([13]))
  os.remove(os.path.join(bad, "tokens", "c", "0", "0"))
  with pytest.raises(store.CorruptChunkError, match=r"tokens: chunk 0 is missing"):
    np.asarray(store.open_store(bad).tokens)


def _edit_manifest(directory, edit, rehash=True):
  path = os.path.join(directory, "manifest.json")
  with open(path) as f:
    m = json.load(f)
  edit(m)
  if rehash:  # a consistent-looking forgery: only the cross-checks can catch it
    body = {k: v for k, v in m.items() if k != "manifest_sha256"}
    m["manifest_sha256"] = store._digest(body)
  with open(path, "w") as f:
    json.dump(m, f)


@pytest.mark.parametrize(
  "edit,rehash,match",
  [
    (lambda m: m.update(k=6), False, r"'manifest_sha256' does not match"),
    (lambda m: m.update(k=6), True, r"teacher 'a' indices is uint16\[23, 5, 6\]"),
    (lambda m: m.update(num_rows=24), True, r"tokens is uint16\[24, 6\]"),
    (
      lambda m: m["teachers"][0].update(generation_temperature=0.0),
      True,
      r"teachers\[0\]\.generation_temperature' must be > 0",
    ),
    (lambda m: m["teachers"][1].update(max_index=300), True, r"teachers\[1\]\.max_index' = 300"),
    (lambda m: m["teachers"][2].update(indices="uint8"), True, r"teachers\[2\]\.indices'"),
    (lambda m: m.update(rows_per_chunk=8), True, r"'rows_per_chunk' does not match"),
    (lambda m: m.pop("num_chunks") and m.pop("vocab_size"), True, r"field 'vocab_size' is missing"),
    (lambda m: m.update(format="mtkd_jax.teachers/3"), True, r"field 'format'"),
  ],
)
def test_edited_or_damaged_manifest_is_refused_naming_the_field(
  store_dir, tmp_path, edit, rehash, match
):
  bad = _copy(store_dir, tmp_path)
  _edit_manifest(bad, edit, rehash)
  with pytest.raises(store.ManifestError, match=match):
    store.open_store(bad)


def test_max_index_is_checked_against_the_array_by_verify(store_dir, tmp_path):
  bad = _copy(store_dir, tmp_path)
  _edit_manifest(bad, lambda m: m["teachers"][0].update(max_index=3))
  store.open_store(bad)  # plausible: < V
  with pytest.raises(store.ManifestError, match=r"teachers\[0\]\.max_index' = 3, the array"):
    store.open_store(bad, verify=True)


def test_request_that_does_not_match_the_store_is_refused_naming_the_field(store_dir):
  s = store.open_store(store_dir)
  s.check_matches(k=4, vocab_size=300, names=("a", "b", "c"), generation_temperatures=T_G)
  for field, value, match in [
    ("k", 8, "field 'k'"),
    ("vocab_size", 256, "field 'vocab_size'"),
    ("names", ("a", "b"), "field 'names'"),
    ("generation_temperatures", 1.0, "field 'generation_temperature'"),
    ("dtype", "log8", "field 'dtype'"),
  ]:
    with pytest.raises(store.ManifestError, match=match):
      s.check_matches(**{field: value})


def test_missing_manifest_is_an_incomplete_store(store_dir, tmp_path):
  bad = _copy(store_dir, tmp_path)
  os.remove(os.path.join(bad, "manifest.json"))
  with pytest.raises(store.ManifestError, match=r"manifest\.json is missing"):
    store.open_store(bad)


# ---------------------------------------------------------------------------------------------
# Opening reads metadata only.
# ---------------------------------------------------------------------------------------------
def synthetic_store(directory, num_positions, seq_len=1000, rows_per_chunk=1000, k=64):
  """A v2 store of `num_positions` positions (3 teachers, V = 256) whose metadata is complete
  and whose chunks are never written: opening must not notice."""
  n = num_positions // seq_len
  body = {
    "format": store.FORMAT,
    "vocab_size": 256,
    "k": k,
    "sorted": True,
    "num_rows": n,
    "row_shape": [seq_len],
    "rows_per_chunk": rows_per_chunk,
    "num_chunks": -(-n // rows_per_chunk),
    "codecs": "bytes, zstd(level=3), crc32c",
    "tokens": {"dtype": "uint8", "sha256": "", "bytes": 0},
    "teachers": [
      {
        "name": f"t{j}",
        "config": None,
        "generation_temperature": 1.0,
        "indices": "uint8",
        "log_probs": {"dtype": "bfloat16", "storage": "bfloat16"},
        "max_index": 255,
        "bytes": 0,
        "sha256": "",
      }
      for j in range(3)
    ],
  }
  for _, rel, shape, dtype in store._array_layout(body):
    spec = store._spec(os.path.join(directory, rel), shape, dtype, rows_per_chunk)
    store.ts.open(spec, create=True).result()
  store._write_manifest(directory, body)


def test_open_time_is_metadata_only_and_independent_of_size(tmp_path):
  times = {}
  for n in (10**6, 10**8):
    d = str(tmp_path / f"s{n}")
    synthetic_store(d, n)
    t0 = time.perf_counter()
    s = store.open_store(d)
    times[n] = time.perf_counter() - t0
    assert s.manifest["num_rows"] * 1000 == n
  assert times[10**8] < 1.0, times
  assert times[10**8] < 3 * times[10**6] + 0.05, times


# ---------------------------------------------------------------------------------------------
# Dumps: resumable, locked, parallel.
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(store_dir, tmp_path):
  out = tmp_path / "resumed"
  killed = _run_worker(out, "--kill-after=2")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert not (out / "manifest.json").exists()  # incomplete
  done = {c for c in range(6) if (out / "tokens" / "c" / str(c) / "0").exists()}
  assert done == {0, 1, 2}
  stamps = {
    c: os.stat(out / "teacher_0" / "log_probs" / "c" / str(c) / "0" / "0").st_mtime_ns for c in done
  }
  written = []
  worker.dump(str(out), after_chunk=written.append)  # resume
  assert written == [3, 4, 5]
  assert _files(str(out)) == _files(store_dir)
  for c in done:  # skipped, not rewritten
    assert (
      os.stat(out / "teacher_0" / "log_probs" / "c" / str(c) / "0" / "0").st_mtime_ns == stamps[c]
    )


@pytest.mark.slow
def test_two_dumps_into_one_directory_are_refused(tmp_path):
  out = tmp_path / "busy"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  holder = subprocess.Popen(
    [sys.executable, os.path.join(TESTS, "_store_worker.py"), str(out), "--hold=60"],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "holding"
    with pytest.raises(RuntimeError, match=r"another dump is writing .*dump\.lock is held"):
      worker.dump(str(out))
  finally:
    holder.kill()
    holder.wait()
  worker.dump(str(out))  # the kernel released the dead dump's lock: resumes and finishes
  store.open_store(str(out), verify=True)


@pytest.mark.slow
def test_two_processes_write_the_same_store_as_one(store_dir, tmp_path):
  out, port = tmp_path / "two", _processes.free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  commands = [
    [
      sys.executable,
      os.path.join(TESTS, "_store_worker.py"),
      str(out),
      f"--distributed={port},{i},2",
    ]
    for i in range(2)
  ]
  _processes.run_all(commands, env=env, cwd=ROOT, timeout=240)
  assert _files(str(out)) == _files(store_dir)
