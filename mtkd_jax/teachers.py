"""Offline teacher store: the `dump` and `verify` commands, and the v1 store reader.

    python -m mtkd_jax.teachers dump --config=experiments/configs/stdlib_lm.py[:small] \
        --out=DIR [--workdir=W]
    python -m mtkd_jax.teachers verify --out=DIR

Stores are written in format v2 (`mtkd_jax.store`: compressed zarr v3 arrays with a CRC-32C per
chunk, written in parallel and resumably; docs/store.md). `open_store` reads v2 and, through the
same interface, the v1 format below (`write_store_v1` still writes it, for tests).

`dump` asks the experiment named by `config.experiment` for its teachers and input windows
(`teacher_source(config, workdir)` of `mtkd_jax.experiments.<name>`, training or restoring the
teachers in `workdir`, by default `DIR/teachers_workdir`) and writes the store of the config's
`store.*` settings; in a multi-process run every process writes its own chunks. `verify` reads
every chunk (v2) or shard (v1) and names the first that fails.

The v1 format: `DIR/tokens.bin` (the input windows [N, L + 1]), `DIR/teacher_<j>.bin` (int32
indices [N, L, k], then log-probs [N, L, k] in bfloat16, float16 or float32) and
`DIR/manifest.json` (format `mtkd_jax.teachers/1`: shapes, dtypes, byte offsets, generation
temperatures and a SHA-256 per shard); its reader checks every shard's size and checksum before
memory-mapping it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import data as data_lib
from mtkd_jax import sparse
from mtkd_jax import store as store_v2

FORMAT = "mtkd_jax.teachers/1"
MANIFEST = "manifest.json"
DTYPES = {"bfloat16": jnp.bfloat16, "float16": np.float16, "float32": np.float32, "int32": np.int32}
LOG_PROB_DTYPES = ("bfloat16", "float16", "float32")


class CorruptShardError(ValueError):
  """A shard is missing, truncated or fails its checksum."""


TeacherSource = store_v2.TeacherSource


# ---------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------
def _sha256(path: str, chunk: int = 1 << 24) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      digest.update(block)
  return digest.hexdigest()


def _shard_layout(num_rows, row_shape, k, dtype_name):
  shape = [num_rows, *row_shape, k]
  count = int(np.prod(shape))
  idx_bytes = count * 4
  lp_bytes = count * np.dtype(DTYPES[dtype_name]).itemsize
  return shape, idx_bytes, lp_bytes


def write_store_v1(
  directory: str,
  source: TeacherSource,
  *,
  k: int,
  generation_temperatures,
  dtype: str = "bfloat16",
  batch_size: int = 32,
  progress: bool = False,
) -> dict:
  """Runs the teachers over `source.tokens` and writes their top-k to `directory` (format v1).

  Args:
    directory: output directory (created; existing shards are overwritten).
    source: a `TeacherSource`.
    k: tokens kept per position, 1 ≤ k ≤ V.
    generation_temperatures: `[K]` or scalar T_g; stored log-probs are log_softmax(z / T_g).
    dtype: "bfloat16" or "float16" (or "float32") for the log-probs.
    batch_size: rows per teacher call.
    progress: tqdm bar on stderr.

  Returns:
    The manifest dict (also written to `directory/manifest.json`).
  """
  if dtype not in LOG_PROB_DTYPES:
    raise ValueError(f"dtype must be one of {LOG_PROB_DTYPES}, got {dtype=!r}")
  if not 1 <= k <= source.vocab_size:
    raise ValueError(f"k must be in [1, {source.vocab_size}], got {k=}")
  tokens = np.asarray(source.tokens)
  num_rows, row_shape = tokens.shape[0], (tokens.shape[1] - 1,)
  num_teachers = len(source.names)
  t_g = np.broadcast_to(np.asarray(generation_temperatures, np.float32), (num_teachers,))
  os.makedirs(directory, exist_ok=True)
  manifest_path = os.path.join(directory, MANIFEST)
  if os.path.exists(manifest_path):
    os.remove(manifest_path)  # the store is incomplete until the new manifest is written

  tokens_file = os.path.join(directory, "tokens.bin")
  tokens.tofile(tokens_file)
  shape, idx_bytes, lp_bytes = _shard_layout(num_rows, row_shape, k, dtype)
  shards = []
  for j in range(num_teachers):
    path = os.path.join(directory, f"teacher_{j}.bin")
    with open(path, "wb") as f:
      f.truncate(idx_bytes + lp_bytes)
    shards.append(
      (
        np.memmap(path, np.int32, "r+", offset=0, shape=tuple(shape)),
        np.memmap(path, DTYPES[dtype], "r+", offset=idx_bytes, shape=tuple(shape)),
      )
    )

  top_k = jax.jit(
    lambda z: (
      sparse.from_dense(z, k, generation_temperatures=t_g),
      store_v2.non_finite_positions(z),
    )
  )
  starts = range(0, num_rows, batch_size)
  if progress:
    import tqdm

    starts = tqdm.tqdm(starts, desc=f"dump top-{k}", file=sys.stderr, leave=False)
  for lo in starts:
    x = tokens[lo : lo + batch_size, :-1].astype(np.int32)
    out, bad = top_k(source.logits_fn(x))  # [K, B, L, k], [K, B, L]
    store_v2.refuse_non_finite(np.asarray(bad), source.names, lo)
    indices = np.asarray(out.indices)
    log_probs = np.asarray(out.log_probs.astype(DTYPES[dtype]))
    for j, (idx_map, lp_map) in enumerate(shards):
      idx_map[lo : lo + len(x)] = indices[j]
      lp_map[lo : lo + len(x)] = log_probs[j]
  for idx_map, lp_map in shards:
    idx_map.flush()
    lp_map.flush()
  del shards

  manifest = {
    "format": FORMAT,
    "vocab_size": int(source.vocab_size),
    "k": int(k),
    "sorted": True,
    "num_rows": int(num_rows),
    "row_shape": list(row_shape),
    "tokens": {
      "file": "tokens.bin",
      "dtype": str(tokens.dtype),
      "shape": list(tokens.shape),
      "sha256": _sha256(tokens_file),
    },
    "teachers": [
      {
        "name": name,
        "generation_temperature": float(t_g[j]),
        "file": f"teacher_{j}.bin",
        "indices": {"dtype": "int32", "shape": shape, "offset": 0},
        "log_probs": {"dtype": dtype, "shape": shape, "offset": idx_bytes},
        "bytes": idx_bytes + lp_bytes,
        "sha256": _sha256(os.path.join(directory, f"teacher_{j}.bin")),
      }
      for j, name in enumerate(source.names)
    ],
  }
  with open(manifest_path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(manifest_path + ".tmp", manifest_path)
  return manifest


# ---------------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------------
def _check_shard(path: str, expected_bytes: int, sha256: str, verify: bool) -> None:
  name = os.path.basename(path)
  if not os.path.exists(path):
    raise CorruptShardError(f"shard {name} is missing: {path}")
  size = os.path.getsize(path)
  if size != expected_bytes:
    raise CorruptShardError(
      f"shard {name} is truncated or padded: {size} bytes on disk, the manifest says "
      f"{expected_bytes} ({path})"
    )
  if verify and _sha256(path) != sha256:
    raise CorruptShardError(f"shard {name} fails its SHA-256 checksum: corrupted ({path})")


@dataclasses.dataclass(frozen=True)
class TeacherStore(store_v2.ManifestFields):
  """A verified store, memory-mapped read-only (see the module docstring)."""

  directory: str
  manifest: dict
  tokens: np.ndarray  # [N, L + 1]
  indices: tuple[np.ndarray, ...]  # K × [N, L, k] int32
  log_probs: tuple[np.ndarray, ...]  # K × [N, L, k] bf16/f16

  def _check_k(self, k):
    k = self.k if k is None else int(k)
    if not 1 <= k <= self.k:
      raise ValueError(f"k must be in [1, {self.k}] (the stored k), got {k=}")
    return k

  def arrays(self, k: int | None = None, teachers=None) -> dict[str, np.ndarray]:
    """Host arrays for `train.train(arrays=...)`, all `[N, ...]` memmap views.

    "x", "y" int [N, L] and, per teacher j (of `teachers`, indices; None: all),
    "teacher_indices_j" / "teacher_log_probs_j" [N, L, k] (the top-k prefix of the stored
    top-K). Nothing is read until a batch is taken.
    """
    k = self._check_k(k)
    out = {"x": self.tokens[:, :-1], "y": self.tokens[:, 1:]}
    for j in self._check_teachers(teachers):
      out[f"teacher_indices_{j}"] = self.indices[j][..., :k]
      out[f"teacher_log_probs_{j}"] = self.log_probs[j][..., :k]
    return out

  def batch(self, batch_size: int, *, seed: int, step: int, rows: slice = slice(None), k=None):
    """This process's `rows` of the global batch at `step` (a pure function of seed, step).

    Only those rows are read from disk. x and y are cast to int32.
    """
    local = data_lib.get_batch(self.arrays(k), batch_size, seed=seed, step=step, rows=rows)
    local["x"], local["y"] = local["x"].astype(np.int32), local["y"].astype(np.int32)
    return local

  def teacher_apply(self, teachers=None) -> Callable:
    """`teacher_apply(teacher_params, batch) -> SparseTeacherOutputs` for `make_train_step`.

    Stacks the batch entries `[B, L, k]` of `teachers` (indices, in that order; None: all) into
    `[K, B, L, k]`; `teacher_params` is unused (the teachers are data here).
    """
    chosen, vocab_size = self._check_teachers(teachers), self.vocab_size
    t_g = self.generation_temperatures[list(chosen)]

    def apply(teacher_params, batch):
      del teacher_params
      idx = jnp.stack([batch[f"teacher_indices_{j}"] for j in chosen])
      lp = jnp.stack([batch[f"teacher_log_probs_{j}"] for j in chosen])
      return sparse.SparseTeacherOutputs(idx.astype(jnp.int32), lp, jnp.asarray(t_g), vocab_size)

    return apply


def _open_store_v1(directory: str, *, verify: bool = True) -> TeacherStore:
  """Opens a store after checking every shard's size and (if `verify`) SHA-256 checksum.

  Raises:
    CorruptShardError naming the shard that is missing, truncated or corrupted;
    ValueError if there is no manifest or it has another format.
  """
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise ValueError(f"no teacher store at {directory!r}: {MANIFEST} is missing (incomplete dump?)")
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
  tok = manifest["tokens"]
  tok_path = os.path.join(directory, tok["file"])
  expected = int(np.prod(tok["shape"])) * np.dtype(tok["dtype"]).itemsize
  _check_shard(tok_path, expected, tok["sha256"], verify)
  tokens = np.memmap(tok_path, np.dtype(tok["dtype"]), "r", shape=tuple(tok["shape"]))
  indices, log_probs = [], []
  for t in manifest["teachers"]:
    shard = os.path.join(directory, t["file"])
    _check_shard(shard, t["bytes"], t["sha256"], verify)
    for spec, out in ((t["indices"], indices), (t["log_probs"], log_probs)):
      out.append(
        np.memmap(
          shard, DTYPES[spec["dtype"]], "r", offset=spec["offset"], shape=tuple(spec["shape"])
        )
      )
  return TeacherStore(directory, manifest, tokens, tuple(indices), tuple(log_probs))


write_store = store_v2.write_store


def open_store(directory: str, *, verify: bool | None = None):
  """Opens a v2 store (metadata only; chunks are checked as they are read, everything when
  `verify`) or a v1 store (every shard's SHA-256 checked unless `verify=False`); both give
  `names`, `k`, `manifest`, `tokens`, `arrays(k)`, `batch(...)` and `teacher_apply()`.

  Raises:
    ValueError (`store.ManifestError`, `store.CorruptChunkError`, `CorruptShardError`) naming
    what is missing, damaged or inconsistent.
  """
  path = os.path.join(directory, MANIFEST)
  fmt = None
  if os.path.exists(path):
    try:
      with open(path) as f:
        fmt = json.load(f).get("format")
    except ValueError:
      pass
  if fmt == FORMAT:
    return _open_store_v1(directory, verify=True if verify is None else verify)
  return store_v2.open_store(directory, verify=bool(verify))


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------
def write_config_store(directory: str, source: TeacherSource, store, *, progress=False) -> dict:
  """`write_store` with the settings of an experiment config's `store` block (`k`, `dtype`,
  `generation_temperature`, `batch_size`), as `dump` and the experiments write it."""
  return write_store(
    directory,
    source,
    k=store.k,
    dtype=store.dtype,
    generation_temperatures=store.generation_temperature,
    batch_size=store.batch_size,
    progress=progress,
  )


def dump(config, out: str, workdir: str | None = None, *, progress: bool = True) -> dict:
  """Writes the top-k store of `config`'s teachers (`config.store.*`) to `out`."""
  from mtkd_jax import experiments  # the CLI's dependency; the store itself needs none

  if config is None:
    raise ValueError("dump needs --config=<experiment config file>[:arg]")
  if not config.get("experiment"):
    raise ValueError("config.experiment: the config names no experiment module")
  module = experiments.get(config.experiment)
  if not hasattr(module, "teacher_source"):
    raise ValueError(f"config.experiment: {config.experiment!r} defines no teacher_source")
  workdir = os.path.join(out, "teachers_workdir") if workdir is None else workdir
  source = module.teacher_source(config, workdir)
  return write_config_store(out, source, config.store, progress=progress)  # every process


def _main(argv):
  from absl import flags, logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  if len(argv) != 2 or argv[1] not in ("dump", "verify"):
    print(
      "usage: python -m mtkd_jax.teachers {dump --config=... | verify} --out=DIR", file=sys.stderr
    )
    return 2
  out = flags.FLAGS.out
  try:
    if argv[1] == "dump":
      manifest = dump(flags.FLAGS.config, out, flags.FLAGS.workdir)
    else:
      manifest = open_store(out, verify=True).manifest
  except (ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not manifest:
    return 0  # not process 0
  shards = ", ".join(f"{t['name']} ({t['bytes'] / 2**20:.1f} MiB)" for t in manifest["teachers"])
  print(
    f"{out}: {manifest['num_rows']} rows of {manifest['row_shape']}, top-{manifest['k']} "
    f"of V={manifest['vocab_size']}; shards ok: {shards}"
  )
  return 0


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (for dump: file.py[:arg])."
  )
  flags.DEFINE_string("out", None, "Store directory.")
  flags.DEFINE_string("workdir", None, "Where the teachers are trained/restored (dump).")
  flags.mark_flag_as_required("out")
  app.run(lambda argv: sys.exit(_main(argv)))
