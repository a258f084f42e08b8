"""Tests for mtkd_jax.teachers: v2 by default; v1 stores still read exactly, refuse bad shards."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import sparse, teachers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, V, L, N = 3, 17, 6, 10


def _source(seed=0):
  r = np.random.default_rng(seed)
  table = (3 * r.standard_normal((K, V, V))).astype(np.float32)  # teacher j: logits = table[j][x]
  tokens = r.integers(0, V, (N, L + 1)).astype(np.int32)
  logits_fn = lambda x: jnp.asarray(table[:, x])  # [K, B, L, V]
  return teachers.TeacherSource(("a", "b", "c"), tokens, logits_fn, V), table


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("store"))
  source, _ = _source()
  teachers.write_store_v1(out, source, k=5, generation_temperatures=[1.0, 2.0, 0.5], batch_size=4)
  return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_store_round_trips_exactly(tmp_path, dtype):
  source, table = _source(1)
  t_g = np.array([1.0, 2.0, 0.5], np.float32)
  manifest = teachers.write_store_v1(
    str(tmp_path), source, k=5, generation_temperatures=t_g, dtype=dtype, batch_size=3
  )
  store = teachers.open_store(str(tmp_path))
  assert store.manifest == manifest and store.names == ("a", "b", "c")
  np.testing.assert_array_equal(store.tokens, source.tokens)
  want = sparse.from_dense(
    jnp.asarray(table[:, source.tokens[:, :-1]]), 5, generation_temperatures=t_g
  )
  want_lp = np.asarray(want.log_probs.astype(teachers.DTYPES[dtype]))
  for j in range(K):
    assert store.log_probs[j].dtype == teachers.DTYPES[dtype]
    np.testing.assert_array_equal(store.indices[j], np.asarray(want.indices[j]))
    assert store.log_probs[j].tobytes() == want_lp[j].tobytes()  # bit-exact
  np.testing.assert_array_equal(store.generation_temperatures, t_g)
  assert manifest["teachers"][1]["generation_temperature"] == 2.0
  assert manifest["teachers"][0]["indices"]["shape"] == [N, L, 5]


def test_reader_feeds_the_trainer_sharded_per_process(store_dir):
  store = teachers.open_store(store_dir)
  full = store.batch(8, seed=3, step=5, k=3)
  halves = [store.batch(8, seed=3, step=5, k=3, rows=slice(a, a + 4)) for a in (0, 4)]
  for key, value in full.items():
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value)
  assert full["x"].dtype == np.int32 and full["teacher_indices_0"].shape == (8, L, 3)
  outputs = store.teacher_apply()(None, full)
  assert outputs.indices.shape == (K, 8, L, 3) and outputs.vocab_size == V
  np.testing.assert_array_equal(outputs.log_probs[2], full["teacher_log_probs_2"])
  np.testing.assert_array_equal(full["y"][:, :-1], full["x"][:, 1:])  # y is x shifted by one
  with pytest.raises(ValueError, match="stored k"):
    store.arrays(k=6)


def _copy(src, dst):
  os.makedirs(dst)
  for name in os.listdir(src):
    with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
      g.write(f.read())


def test_corrupted_shard_is_refused_and_named(store_dir, tmp_path):
  bad = str(tmp_path / "bad")
  _copy(store_dir, bad)
  path = os.path.join(bad, "teacher_1.bin")
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x40]))
  with pytest.raises(teachers.CorruptShardError, match=r"teacher_1\.bin fails its SHA-256"):
    teachers.open_store(bad)
  teachers.open_store(bad, verify=False)  # sizes still match: only the checksum catches it


def test_truncated_shard_is_refused_and_named(store_dir, tmp_path):
  bad = str(tmp_path / "short")
  _copy(store_dir, bad)
  path = os.path.join(bad, "teacher_2.bin")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 7)
  with pytest.raises(teachers.CorruptShardError, match=r"teacher_2\.bin is truncated"):
    teachers.open_store(bad, verify=False)
  os.remove(os.path.join(bad, "manifest.json"))
  with pytest.raises(ValueError, match=r"manifest\.json is missing"):
    teachers.open_store(bad)


def test_verify_cli_names_the_bad_shard(store_dir, tmp_path):
  bad = str(tmp_path / "cli")
  _copy(store_dir, bad)
  with open(os.path.join(bad, "tokens.bin"), "r+b") as f:
    f.write(b"\x01\x02\x03")
  cmd = [sys.executable, "-m", "mtkd_jax.teachers", "verify"]
  run = lambda d: subprocess.run(
    [*cmd, f"--out={d}"], capture_output=True, text=True, cwd=ROOT, timeout=120
  )
  ok, broken = run(store_dir), run(bad)
  assert ok.returncode == 0 and "shards ok" in ok.stdout, ok.stderr
  assert broken.returncode == 2 and "tokens.bin fails its SHA-256" in broken.stderr


def test_dump_cli_errors_are_one_line(tmp_path):
  """No --config, or an experiment without teacher_source: `error: ...` and exit status 2."""
  cmd = [sys.executable, "-m", "mtkd_jax.teachers", "dump", f"--out={tmp_path / 'store'}"]
  adaptive = "--config=experiments/configs/adaptive.py:small"
  for args, message in (([], "needs --config"), ([adaptive], "defines no teacher_source")):
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr[-2000:]


def test_write_store_writes_v2_and_verify_cli_names_the_bad_chunk(tmp_path):
  source, _ = _source()
  out = str(tmp_path / "v2")
  teachers.write_store(out, source, k=5, generation_temperatures=1.0, batch_size=4)
  store = teachers.open_store(out)
  assert store.manifest["format"] == "mtkd_jax.teachers/2" and store.k == 5
  cmd = [sys.executable, "-m", "mtkd_jax.teachers", "verify", f"--out={out}"]
  ok = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert ok.returncode == 0 and "shards ok" in ok.stdout, ok.stderr
  with open(os.path.join(out, "teacher_0", "indices", "c", "1", "0", "0"), "r+b") as f:
    f.write(b"\x00\x00\x00")
  bad = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert bad.returncode == 2 and "teacher 'a' indices: chunk 1" in bad.stderr, bad.stderr
