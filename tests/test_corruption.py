"""Corrupts each kind of file of a finished job (workdir and teacher cache) and of a teacher store,
then runs again: the outcome is the same results, or a one-line refusal naming the file (or its
checkpoint step); never other numbers without an error, never a raw traceback.

A kind is a path with its step numbers and hashes blanked (`checkpoints/student_linear/N/...`);
each kind is flipped (8 bytes in the middle), truncated (to half) and deleted, in a fresh copy.
"""

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

from mtkd_jax import checkpoints, configs, store
from mtkd_jax.experiments import digits

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
import _store_worker as worker  # noqa: E402

CONFIG = os.path.join(os.path.dirname(TESTS), "experiments", "configs", "digits.py")


def _flip(path):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    chunk = f.read(8)
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


FAULTS = {"flip": _flip, "truncate": _truncate, "delete": os.remove}


def _kinds(directory, skip=(".lock", "dump.lock")):
  """{kind: one relative path of that kind} for the files under `directory`: the one with the
  largest step or chunk number (the newest checkpoint step, the one a rerun restores)."""
  files = []
  for root, _, names in os.walk(directory):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), directory)
      if name not in skip and os.path.getsize(os.path.join(root, name)) > 0:
        files.append(rel)
  natural = lambda rel: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", rel)]
  return {
    re.sub(r"\b\d+\b", "N", re.sub(r"[0-9a-f]{16,}", "H", r)): r for r in sorted(files, key=natural)
  }


def _cases(directory):
  return [(rel, fault) for rel in sorted(_kinds(directory).values()) for fault in FAULTS]


def _refusal(error: Exception, rel: str) -> None:
  """A refusal is one line naming the damaged file: its path, or the array or run it belongs to
  together with its chunk or step number."""
  message = str(error)
  assert "\n" not in message, message
  parts = rel.split(os.sep)
  names = [p for p in parts if not p.isdigit() and len(p) > 1]
  numbers = [p for p in parts if p.isdigit()][:1]
  named = any(n in message for n in names) and all(re.search(rf"\b{n}\b", message) for n in numbers)
  assert rel in message or named, (rel, message)


# ---------------------------------------------------------------------------------------------
# A teacher store: every kind of file.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine_store(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("store") / "store")
  worker.dump(out)
  s = store.open_store(out, verify=True)
  return out, {name: np.asarray(col) for name, col in s.arrays().items()}


def _read_all(directory):
  s = store.open_store(directory, verify=True)
  return {name: np.asarray(col) for name, col in s.arrays().items()}


def test_every_kind_of_store_file_damaged_is_refused_by_name_or_harmless(pristine_store, tmp_path):
  directory, expected = pristine_store
  cases = _cases(directory)
  assert len({rel for rel, _ in cases}) >= 6  # manifest, array metadata and chunks of each kind
  for rel, fault in cases:
    bad = str(tmp_path / f"{fault}-{rel.replace(os.sep, '_')}")
    shutil.copytree(directory, bad)
    FAULTS[fault](os.path.join(bad, rel))
    try:
      got = _read_all(bad)
    except ValueError as e:  # store.CorruptChunkError, store.ManifestError
      _refusal(e, rel)
      continue
    assert got.keys() == expected.keys(), (rel, fault)
    for name in expected:
      np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{rel} {fault}")


# ---------------------------------------------------------------------------------------------
# A finished digits job: its workdir and its teacher cache.
# ---------------------------------------------------------------------------------------------
def _config(cache):
  config = configs.load(CONFIG + ":small")
  config.update(
    num_teachers=2,
    teacher_hidden=((16,), (24,)),
    teacher_keep_fractions=(0.5, 0.5),
    teacher_noises=(0.1, 0.0),
    teacher_train_fractions=(0.6, 0.6),
    temperatures=(1.0, 1.0),
    weights=(0.5, 0.5),
    compare_operators=(),
    single_teacher_students=False,
    teacher_steps=12,
    num_steps=12,
    checkpoint_every=6,
    log_every=3,
    batch_size=32,
    progress=False,
    teacher_cache=cache,
  )
  return config


def _launch(root):
  """What `python -m mtkd_jax.main` does with a config and a workdir, in this process."""
  workdir, config = os.path.join(root, "workdir"), _config(os.path.join(root, "cache"))
  digits.validate_config(config)
  checkpoints.check_workdir(workdir, config)
  with checkpoints.WorkdirLock(workdir):
    return digits.run(config, workdir)


@pytest.fixture(scope="module")
def pristine_job(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("job"))
  return root, json.loads(json.dumps(_launch(root)))


def _job_cases(root):
  """Each kind of file of the workdir and the cache (run names blanked too), one fault each in
  turn; all three faults for the files whose loss matters most (checkpoint data, config)."""
  kinds = {}
  for top in ("workdir", "cache"):
    for kind, rel in _kinds(os.path.join(root, top)).items():
      kind = re.sub(r"(teacher_|student_)\w+?(?=/|-H|$)", "RUN", kind)
      kinds.setdefault(f"{top}/{kind}", os.path.join(top, rel))
  cases = []
  for i, (kind, rel) in enumerate(sorted(kinds.items())):
    heavy = kind.endswith(("config.json", "default/d/H"))
    faults = list(FAULTS) if heavy else [list(FAULTS)[i % len(FAULTS)]]
    cases += [(rel, fault) for fault in faults]
  return cases


@pytest.mark.slow
def test_every_kind_of_job_file_damaged_reruns_the_same_or_is_refused_by_name(
  pristine_job, tmp_path
):
  root, expected = pristine_job
  cases = _job_cases(root)
  assert len(cases) >= 20, cases
  outcomes = {}
  for n, (rel, fault) in enumerate(cases):
    copy = str(tmp_path / str(n))
    shutil.copytree(root, copy)
    FAULTS[fault](os.path.join(copy, rel))
    try:
      got = json.loads(json.dumps(_launch(copy)))
    except ValueError as e:  # checkpoints.CheckpointError, a refused workdir
      _refusal(e, rel)
      outcomes[rel, fault] = "refused"
      continue
    assert got == expected, (rel, fault)  # the same numbers, bit for bit
    outcomes[rel, fault] = "same"
  print("\n".join(f"{o:8s} {f:9s} {r}" for (r, f), o in sorted(outcomes.items())))
