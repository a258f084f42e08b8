"""Checkpoints and workdirs: verified orbax checkpoints, the config record and a workdir lock.

Orbax writes a checkpoint step atomically but does not checksum the arrays it restores: a few
flipped bytes in a file restore as other numbers. So every save also records, per array, a
fingerprint computed on the devices (a position-weighted sum of the raw bits, modulo 2³²: the same
for any sharding of the array, and no host copy of the state); a restore recomputes it and
compares. A step that is corrupted, truncated, deleted or unreadable is reported and the previous
kept step is tried; when none is intact, `CheckpointError` names each step and why.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

# Fields of a config that change how a run is observed or where it caches, not what it computes.
RESUMABLE_FIELDS = (
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "progress",
  "mesh",
  "teacher_cache",
)
# Fields that may grow in a trained workdir: its runs continue from their last checkpoint.
CONTINUABLE_FIELDS = ("num_steps",)
_GLOB = "[]*?{}"  # orbax's OCDBT merge treats these as patterns: such a path never restores


class CheckpointError(ValueError):
  """No intact checkpoint could be restored (each step's problem is in the message)."""


# --------------------------------------------------------------------------------------------
# Fingerprints of a state.
# --------------------------------------------------------------------------------------------
def _fingerprint(x: jax.Array) -> jax.Array:
  """[2] uint32: Σ bits and Σ bits·(2i + 1) over the flat index i, modulo 2³².

  Sums modulo 2³² are exact and associative, so the value does not depend on the sharding.
  """
  x = jnp.asarray(x)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  index = jax.lax.broadcasted_iota(jnp.uint32, x.shape, 0) if x.ndim else jnp.uint32(0)
  for axis in range(1, x.ndim):  # flat index of every element
    index = index * jnp.uint32(x.shape[axis]) + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis)
  weights = 2 * index + 1
  return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])


_fingerprints_jit = jax.jit(lambda tree: jax.tree.map(_fingerprint, tree))


def fingerprints(state) -> dict[str, list[int]]:
  """{array path: [two uint32]} of every array of `state` (computed on its devices)."""
  values = jax.device_get(_fingerprints_jit(state))
  leaves = jax.tree_util.tree_flatten_with_path(values)[0]
  return {jax.tree_util.keystr(path): [int(v) for v in np.asarray(f)] for path, f in leaves}


# --------------------------------------------------------------------------------------------
# Verified checkpoints of one run.
# --------------------------------------------------------------------------------------------
class Checkpointer:
  """An orbax `CheckpointManager` whose steps are fingerprinted on save and verified on restore.

  The fingerprints of step s are `<directory>/fingerprints/<s>.json` (written by process 0).
  """

  def __init__(self, directory: str, *, every: int, keep: int):
    if every < 1:
      raise ValueError(f"checkpoint_every: must be >= 1, got {every}")
    if keep < 1:
      raise ValueError(f"keep_checkpoints: must be >= 1 (a run must be resumable), got {keep}")
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._sidecars = os.path.join(self.directory, "fingerprints")

  def save(self, step: int, state, *, force: bool = False) -> None:
    if not force and not self.manager.should_save(step):
      return
    prints = fingerprints(state)
    if jax.process_index() == 0:
      os.makedirs(self._sidecars, exist_ok=True)
      _write_json(os.path.join(self._sidecars, f"{step}.json"), prints)
    self.manager.save(step, args=ocp.args.StandardSave(state), force=force)
    if jax.process_index() == 0:  # drop the fingerprints of steps orbax no longer keeps
      kept = set(self.manager.all_steps()) | {step}
      for name in os.listdir(self._sidecars):
        if name.endswith(".json") and int(name.split(".")[0]) not in kept:
          os.remove(os.path.join(self._sidecars, name))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, target, name: str):
    """The newest intact step restored into `target` (abstract arrays with shardings), or None.

    Raises:
      CheckpointError: steps exist but none is intact.
    """
    problems = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      problem = None
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(target))
      except Exception as e:  # truncated, deleted or unreadable files: tensorstore/orbax errors
        problem = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
      if problem is None:
        problem = self._verify(step, state)
      if problem is None:
        if problems:
          print(
            f"warning: {name}: restored step {step}; newer steps: {'; '.join(problems)}",
            file=sys.stderr,
          )
        return state
      problems.append(f"step {step} in {self.directory} is {problem}")
      print(f"warning: {name}: checkpoint {problems[-1]}; trying an older one", file=sys.stderr)
    if problems:
      raise CheckpointError(f"{name}: no intact checkpoint: {'; '.join(problems)}")
    return None

  def _verify(self, step: int, state) -> str | None:
    path = os.path.join(self._sidecars, f"{step}.json")
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, json.JSONDecodeError):
      return f"without readable fingerprints ({path})"
    current = fingerprints(state)
    bad = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if bad:
      return f"corrupted (arrays {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} differ)"
    return None

  def finish(self, step: int, state) -> None:
    """Saves the final step unless it is saved already; waits for the writes; closes."""
    if self.manager.latest_step() != step:
      self.save(step, state, force=True)
    self.manager.wait_until_finished()
    self.manager.close()


def _write_json(path: str, value) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------------------------
# Workdirs: the config record and the lock.
# --------------------------------------------------------------------------------------------
def check_workdir(workdir: str, config: Mapping) -> None:
  """Refuses an unusable workdir, or one whose checkpoints come from an incompatible config;
  records the config (`config.json`) when the workdir holds no checkpoints yet.

  Raises:
    ValueError with one line naming the problem, before anything is trained.
  """
  if not workdir:
    raise ValueError("workdir: needs a directory (--workdir=...)")
  if any(c in workdir for c in _GLOB):
    raise ValueError(
      f"workdir {workdir!r}: characters {_GLOB!r} are not allowed in the path "
      "(orbax would write checkpoints it cannot read back)"
    )
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} exists and is not a directory")
  path = os.path.join(workdir, "config.json")
  current = json.loads(json.dumps(dict(config), default=_jsonable))
  current = {k: v for k, v in current.items() if k not in RESUMABLE_FIELDS}
  trained = os.path.isdir(os.path.join(workdir, "checkpoints"))
  if os.path.exists(path) and trained:
    try:
      with open(path) as f:
        saved = json.load(f)
    except ValueError as e:  # a damaged record: refuse rather than guess what was trained
      raise ValueError(f"workdir {workdir!r}: config.json is unreadable ({e}); refusing") from None
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    grown = [k for k in diff if k in CONTINUABLE_FIELDS and _grows(saved.get(k), current.get(k))]
    diff = [k for k in diff if k not in grown]
    if diff:
      shown = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:3])
      raise ValueError(
        f"workdir {workdir!r} holds checkpoints of an incompatible config ({shown}); "
        "use a fresh --workdir or delete it"
      )
    if grown and jax.process_index() == 0:
      shown = ", ".join(f"{k} {saved[k]} -> {current[k]}" for k in grown)
      print(
        f"note: workdir {workdir!r}: continuing its runs from their last checkpoints ({shown}); "
        "the learning-rate schedule is the new one from there on",
        file=sys.stderr,
      )
      _write_json(path, current)
    return
  if trained:
    raise ValueError(f"workdir {workdir!r} holds checkpoints but no config.json; refusing to mix")
  if jax.process_index() == 0:  # nothing trained yet: (re)record the config
    try:
      os.makedirs(workdir, exist_ok=True)
      _write_json(path, current)
    except OSError as e:
      raise ValueError(f"workdir {workdir!r}: cannot write there ({e.strerror})") from None


def _grows(old, new) -> bool:
  return isinstance(old, int) and isinstance(new, int) and new > old


def _jsonable(x):
  if hasattr(x, "to_dict"):
    return x.to_dict()
  if isinstance(x, np.ndarray | jax.Array):
    return np.asarray(x).tolist()
  return repr(x)


class WorkdirLock:
  """An exclusive lock on `<workdir>/.lock` (process 0), so two jobs never share a workdir.

  >>> with WorkdirLock("runs/x"):  # doctest: +SKIP
  ...   ...
  """

  def __init__(self, workdir: str, *, wait: bool = False):
    self.path = os.path.join(workdir, ".lock")
    self.wait = wait  # block until the holder is done (shared caches) instead of refusing
    self.file = None

  def __enter__(self):
    if jax.process_index() != 0:
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self.file = open(self.path, "a+")
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self.file.seek(0)
      holder = self.file.read().strip() or "another process"
      if self.wait:
        print(f"waiting for {os.path.dirname(self.path)} (pid {holder})", file=sys.stderr)
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self._own()
      self.file.close()
      raise ValueError(
        f"workdir {os.path.dirname(self.path)!r} is in use by pid {holder}"
      ) from None
    return self._own()

  def _own(self):
    self.file.seek(0)
    self.file.truncate()
    self.file.write(str(os.getpid()))
    self.file.flush()
    return self

  def __exit__(self, *exc):
    if self.file is not None:
      fcntl.flock(self.file, fcntl.LOCK_UN)
      self.file.close()


# --------------------------------------------------------------------------------------------
# A cache of runs keyed by their own config (teachers shared by every job that trains the same).
# --------------------------------------------------------------------------------------------
def user_cache(name: str) -> str:
  """`$XDG_CACHE_HOME/mtkd_jax/<name>` (~/.cache/mtkd_jax/<name> when it is unset)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "mtkd_jax", name)


def default_cache() -> str:
  """`$MTKD_TEACHER_CACHE`, else `user_cache("teachers")`."""
  return os.environ.get("MTKD_TEACHER_CACHE") or user_cache("teachers")


def cache_entry(root: str, name: str, key: Mapping) -> str:
  """`<root>/<name>-<16 hex digits of sha256(key)>`, created with `key.json` (what it holds).

  Two runs with equal keys (JSON-equal) share one entry; any changed field gives another.
  """
  text = json.dumps(key, sort_keys=True, default=_jsonable)
  entry = os.path.join(root, f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}")
  if any(c in entry for c in _GLOB):
    raise ValueError(f"teacher_cache {root!r}: characters {_GLOB!r} are not allowed in the path")
  if jax.process_index() == 0 and not os.path.exists(os.path.join(entry, "key.json")):
    try:
      os.makedirs(entry, exist_ok=True)
      _write_json(os.path.join(entry, "key.json"), json.loads(text))
    except OSError as e:
      raise ValueError(f"teacher_cache {root!r}: cannot write there ({e.strerror})") from None
  return entry


def read_rows(path: str) -> list[dict]:
  """The rows of a `metrics.jsonl`; a cut-off line (a full disk, a kill) is skipped with a
  warning."""
  rows = []
  with open(path, errors="replace") as f:  # damaged bytes make a line unparsable, not the file
    for i, line in enumerate(f):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        print(f"warning: {path}:{i + 1}: skipping a cut-off line", file=sys.stderr)
  return rows


def copy_metric_rows(source: str, target: str, run: str) -> None:
  """Appends `run`'s rows of `<source>/metrics.jsonl` to `<target>/metrics.jsonl` unless the
  target has rows of that run already (so a cached run's curve shows in every job using it)."""
  src, dst = os.path.join(source, "metrics.jsonl"), os.path.join(target, "metrics.jsonl")
  if jax.process_index() != 0 or not os.path.exists(src):
    return
  rows = lambda path: [r for r in read_rows(path) if r.get("run") == run]
  if os.path.exists(dst) and rows(dst):
    return
  os.makedirs(target, exist_ok=True)
  with open(dst, "a") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows(src))
