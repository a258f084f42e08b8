"""Tests for mtkd_jax.checkpoints and the loop's fault handling: corrupted, truncated or deleted
checkpoint files, non-finite losses, and cut-off metric rows."""

import json
import os

import _multiprocess_worker as tiny
import jax
import numpy as np
import pytest

from mtkd_jax import checkpoints, sharding, train


def _mesh():
  return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


def _files(step_dir):
  """The data files of one checkpoint step, largest first."""
  out = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  return sorted(out, key=os.path.getsize, reverse=True)


def test_fingerprints_change_with_one_flipped_bit_and_not_with_the_sharding():
  x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
  a = checkpoints.fingerprints({"x": jax.numpy.asarray(x)})
  y = x.copy()
  y.view(np.uint32)[3, 2] ^= 1 << 7
  assert checkpoints.fingerprints({"x": jax.numpy.asarray(y)}) != a
  mesh = sharding.make_mesh(4, 2)
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  assert checkpoints.fingerprints({"x": sharded}) == a
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # same values, other places: a position-weighted sum differs
  assert checkpoints.fingerprints({"x": jax.numpy.asarray(swapped)}) != a


@pytest.mark.parametrize("fault", ["flip", "truncate", "delete"])
def test_a_damaged_latest_step_falls_back_to_the_previous_one(tmp_path, fault, capfd):
  workdir = str(tmp_path / "w")
  tiny.run_tiny(_mesh(), workdir=workdir, num_steps=10)  # keeps steps 5 and 10
  run_dir = os.path.join(workdir, "checkpoints", "tiny")
  path = _files(os.path.join(run_dir, "10"))[0]
  if fault == "flip":
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 2, len(data) // 2 + 8):
      data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
  elif fault == "truncate":
    os.truncate(path, os.path.getsize(path) // 2)
  else:
    os.remove(path)
  history, params = tiny.run_tiny(_mesh(), workdir=workdir, num_steps=10)
  err = capfd.readouterr().err
  assert "step 10" in err and "trying an older one" in err, err
  assert [r["step"] for r in history] == list(range(6, 11))  # resumed from step 5
  _ref_history, ref_params = tiny.run_tiny(_mesh(), num_steps=10)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_no_intact_step_is_a_one_line_error_naming_each(tmp_path):
  workdir = str(tmp_path / "w")
  tiny.run_tiny(_mesh(), workdir=workdir, num_steps=10)
  run_dir = os.path.join(workdir, "checkpoints", "tiny")
  for step in ("5", "10"):
    os.remove(os.path.join(run_dir, "fingerprints", f"{step}.json"))
  with pytest.raises(checkpoints.CheckpointError) as err:
    tiny.run_tiny(_mesh(), workdir=workdir, num_steps=10)
  message = str(err.value)
  assert "\n" not in message and "step 10" in message and "step 5" in message, message


def test_keep_checkpoints_zero_is_refused():
  with pytest.raises(ValueError, match="keep_checkpoints: must be >= 1"):
    checkpoints.Checkpointer("/tmp/unused_ckpt", every=1, keep=0)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  import optax

  student, optimizer, step, arrays = tiny.tiny_problem()
  arrays = dict(arrays)
  loop = train.Loop(mesh=_mesh(), workdir=str(tmp_path), checkpoint_every=5, log_every=4)
  bad_optimizer = optax.sgd(float("nan"))  # every update is NaN from the first step on
  nan_step = train.make_train_step(
    student.apply, bad_optimizer, objective=_objective(), weights=[0.5, 0.3, 0.2]
  )
  with pytest.raises(
    train.NonFiniteError, match=r"tiny: non-finite loss or gradient norm at step 2"
  ):
    train.train(
      "tiny",
      init_params=train.init_params(student.init),
      train_step=nan_step,
      optimizer=bad_optimizer,
      arrays=arrays,
      num_steps=12,
      batch_size=32,
      seed=0,
      loop=loop,
    )
  assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints", "tiny", "5"))
  del step, optimizer


def _objective():
  from mtkd_jax import objectives, operators

  return objectives.mixture(operators.linear, temperatures=[1.0, 2.0, 1.5])


def test_a_cut_off_metrics_row_stays_on_its_own_line(tmp_path):
  workdir = str(tmp_path)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write('{"run": "tiny", "step": 1, "lo')  # what a full disk leaves
  tiny.run_tiny(_mesh(), workdir=workdir, num_steps=3)
  lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
  assert lines[0].startswith('{"run": "tiny", "step": 1, "lo')
  assert [json.loads(line)["step"] for line in lines[1:]] == [1, 2, 3]
  rows = checkpoints.read_rows(os.path.join(workdir, "metrics.jsonl"))  # cut-off line skipped
  assert [row["step"] for row in rows] == [1, 2, 3]


def _train_cached(loop, key, num_steps=4):
  student, optimizer, step, arrays = tiny.tiny_problem()
  with train.cached_run(loop, "teacher", key) as cached_loop:
    state, _ = train.train(
      "teacher",
      init_params=train.init_params(student.init),
      train_step=step,
      optimizer=optimizer,
      arrays=dict(arrays),
      num_steps=num_steps,
      batch_size=32,
      seed=0,
      loop=cached_loop,
    )
  return cached_loop.workdir, state


def test_a_cached_run_is_trained_once_per_key_and_shared_by_workdirs(tmp_path):
  cache = str(tmp_path / "cache")
  loop = lambda w: train.Loop(
    mesh=_mesh(), workdir=str(tmp_path / w), log_every=2, teacher_cache=cache
  )
  entry_a, state_a = _train_cached(loop("a"), {"seed": 0})
  stamp = os.path.getmtime(os.path.join(entry_a, "metrics.jsonl"))
  entry_b, state_b = _train_cached(loop("b"), {"seed": 0})  # restored, not trained
  assert entry_a == entry_b and os.path.getmtime(os.path.join(entry_a, "metrics.jsonl")) == stamp
  np.testing.assert_array_equal(
    jax.tree.leaves(state_a.params)[0], jax.tree.leaves(state_b.params)[0]
  )
  for w in ("a", "b"):  # the cached run's curve shows in each workdir, once
    rows = checkpoints.read_rows(str(tmp_path / w / "metrics.jsonl"))
    assert [r["step"] for r in rows if r["run"] == "teacher"] == [2, 4]
  entry_c, _ = _train_cached(loop("a"), {"seed": 1})  # another key: another entry
  assert entry_c != entry_a and json.load(open(os.path.join(entry_c, "key.json")))["seed"] == 1
  assert not os.path.exists(tmp_path / "a" / "checkpoints")  # nothing cached in the workdir


def test_num_steps_may_grow_in_a_trained_workdir_and_nothing_else(tmp_path, capsys):
  workdir = str(tmp_path)
  checkpoints.check_workdir(workdir, {"num_steps": 10, "lr": 0.1})
  os.makedirs(os.path.join(workdir, "checkpoints"))
  checkpoints.check_workdir(workdir, {"num_steps": 20, "lr": 0.1, "log_every": 3})
  assert "continuing its runs from their last checkpoints (num_steps 10 -> 20)" in (
    capsys.readouterr().err
  )
  assert json.load(open(os.path.join(workdir, "config.json")))["num_steps"] == 20
  with pytest.raises(ValueError, match=r"incompatible config \(num_steps: 20 -> 15\)"):
    checkpoints.check_workdir(workdir, {"num_steps": 15, "lr": 0.1})
  with pytest.raises(ValueError, match=r"incompatible config \(lr: 0.1 -> 0.2\)"):
    checkpoints.check_workdir(workdir, {"num_steps": 30, "lr": 0.2})
