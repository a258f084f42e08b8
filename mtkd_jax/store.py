"""Teacher store v2: top-k teacher outputs as compressed, per-chunk checksummed zarr v3 arrays.

    DIR/manifest.json               settings, shapes, dtypes, temperatures, teachers' configs,
                                    a SHA-256 per array and of the manifest itself (written last)
    DIR/tokens/                     uint8|uint16|int32 [N, L + 1] input windows
    DIR/teacher_<j>/indices/        uint8|uint16|int32 [N, L, k], the smallest dtype holding V
    DIR/teacher_<j>/log_probs/      bfloat16 [N, L, k], or "log8": uint8 codes of −log p
    DIR/teacher_<j>/tail_log_mass/  float32 [N, L] log of the mass outside the top-k
    DIR/dump.json, DIR/dump.lock    the running dump's settings and its lock

Every array is chunked along rows (`rows_per_chunk` windows a chunk), each chunk zstd-compressed
and followed by its CRC-32C (zarr v3 codecs `bytes`, `zstd`, `crc32c`, read and written by
tensorstore), so a read checks exactly the chunks it decodes. `open_store` reads the manifest
and each array's zarr.json only (no chunk); `TeacherStore.verify` reads every chunk. A dump
writes whole chunks, each process those with `chunk % process_count == process_index`, skips
chunks already on disk (a killed dump resumes), and holds an exclusive lock on the directory.
See docs/store.md.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import operator
import os
import shutil
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import tensorstore as ts

from mtkd_jax import data as data_lib
from mtkd_jax import sparse

FORMAT = "mtkd_jax.teachers/2"
MANIFEST = "manifest.json"
LOG_PROB_DTYPES = ("bfloat16", "float16", "log8")
LOG8_RANGE = 16.0  # "log8" codes −log p ∈ [0, 16] in 255 steps: |error| ≤ 16 / 510 nats
_ZARR_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "int32": np.int32, "float32": np.float32}
_ZARR_DTYPES |= {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CorruptChunkError(ValueError):
  """A chunk is missing, truncated or fails its CRC-32C; the message names where."""


class ManifestError(ValueError):
  """The manifest is missing, edited, damaged, or does not match the arrays or the request."""


def index_dtype(vocab_size: int) -> str:
  """The smallest dtype holding token ids < V: uint8 (V ≤ 256), uint16 (≤ 65,536), int32."""
  return "uint8" if vocab_size <= 256 else "uint16" if vocab_size <= 65536 else "int32"


def log8_encode(log_probs: np.ndarray, log_range: float = LOG8_RANGE) -> np.ndarray:
  """uint8 codes round(−log p · 255 / R), clipped: |decode(code) − log p| ≤ R / 510 for
  log p ≥ −R; smaller log p decode to −R."""
  x = np.clip(-np.asarray(log_probs, np.float32), 0.0, log_range)
  return np.round(x * (255.0 / log_range)).astype(np.uint8)


def log8_decode(codes: np.ndarray, log_range: float = LOG8_RANGE) -> np.ndarray:
  return (codes.astype(np.float32) * np.float32(-log_range / 255.0)).astype(ml_dtypes.bfloat16)


@dataclasses.dataclass(frozen=True)
class TeacherSource:
  """What a dump needs from an experiment.

  Attributes:
    names: K teacher names.
    tokens: int [N, L + 1] input windows.
    logits_fn: `logits_fn(x int32 [B, L]) -> [K, B, L, V]` teacher logits.
    vocab_size: V.
    configs: K JSON-able teacher configs recorded in the manifest (optional).
  """

  names: tuple[str, ...]
  tokens: np.ndarray
  logits_fn: Callable[[np.ndarray], jax.Array]
  vocab_size: int
  configs: tuple = ()


# ---------------------------------------------------------------------------------------------
# Arrays on disk.
# ---------------------------------------------------------------------------------------------
def _spec(path: str, shape=None, dtype=None, chunk_rows=None, level=3) -> dict:
  spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}
  if shape is not None:
    spec["metadata"] = {
      "shape": list(shape),
      "chunk_grid": {
        "name": "regular",
        "configuration": {"chunk_shape": [chunk_rows, *shape[1:]]},
      },
      "data_type": dtype,
      "codecs": [
        {"name": "bytes", "configuration": {"endian": "little"}},
        {"name": "zstd", "configuration": {"level": level}},
        {"name": "crc32c"},
      ],
    }
  return spec


def _chunk_file(path: str, ndim: int, chunk: int) -> str:
  return os.path.join(path, "c", str(chunk), *["0"] * (ndim - 1))


def _array_layout(manifest: dict) -> list[tuple[str, str, list, str]]:
  """(label, relative path, shape, stored dtype) of every array of a store."""
  n, length, k = manifest["num_rows"], manifest["row_shape"][0], manifest["k"]
  out = [("tokens", "tokens", [n, length + 1], manifest["tokens"]["dtype"])]
  for j, t in enumerate(manifest["teachers"]):
    lp = t["log_probs"]["storage"]
    out += [
      (f"teacher {t['name']!r} indices", f"teacher_{j}/indices", [n, length, k], t["indices"]),
      (f"teacher {t['name']!r} log_probs", f"teacher_{j}/log_probs", [n, length, k], lp),
      (
        f"teacher {t['name']!r} tail_log_mass",
        f"teacher_{j}/tail_log_mass",
        [n, length],
        "float32",
      ),
    ]
  return out


# ---------------------------------------------------------------------------------------------
# Manifest: checksummed, cross-checked.
# ---------------------------------------------------------------------------------------------
def _digest(body: dict) -> str:
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write_manifest(directory: str, body: dict) -> dict:
  manifest = {**body, "manifest_sha256": _digest(body)}
  path = os.path.join(directory, MANIFEST)
  with open(path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(path + ".tmp", path)
  return manifest


def _read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise ManifestError(
      f"no teacher store at {directory!r}: {MANIFEST} is missing (incomplete dump?)"
    )
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise ManifestError(f"{path}: unreadable manifest ({e})") from None
  if manifest.get("format") != FORMAT:
    raise ManifestError(
      f"{path}: field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}"
    )
  body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
  if manifest.get("manifest_sha256") != _digest(body):
    raise ManifestError(f"{path}: field 'manifest_sha256' does not match: edited or damaged")
  return manifest


def _cross_check(directory: str, manifest: dict, context=None) -> dict[str, ts.TensorStore]:
  """Opens every array (metadata only) and checks it against the manifest; returns them."""
  v = manifest["vocab_size"]
  for j, t in enumerate(manifest["teachers"]):
    where = f"{MANIFEST}: field 'teachers[{j}]"
    if not (t["generation_temperature"] > 0 and math.isfinite(t["generation_temperature"])):
      raise ManifestError(
        f"{where}.generation_temperature' must be > 0, got {t['generation_temperature']}"
      )
    if not 0 <= t["max_index"] < v:
      raise ManifestError(f"{where}.max_index' = {t['max_index']} is not < vocab_size = {v}")
    if t["indices"] != index_dtype(v):
      raise ManifestError(
        f"{where}.indices' = {t['indices']!r}, expected {index_dtype(v)!r} for V={v}"
      )
  if not 1 <= manifest["k"] <= v:
    raise ManifestError(f"{MANIFEST}: field 'k' = {manifest['k']} not in [1, vocab_size={v}]")
  arrays = {}
  for label, rel, shape, dtype in _array_layout(manifest):
    try:
      spec = _spec(os.path.join(directory, rel))
      arr = ts.open(spec, open=True, read=True, context=context).result()
    except Exception as e:
      raise CorruptChunkError(f"{label}: array metadata {rel}/zarr.json unreadable ({e})") from None
    got_dtype = arr.dtype.name
    if list(arr.shape) != shape or got_dtype != dtype:
      raise ManifestError(
        f"{MANIFEST} says {label} is {dtype}{shape}, "
        f"the array {rel} is {got_dtype}{list(arr.shape)}"
      )
    if arr.chunk_layout.read_chunk.shape[0] != manifest["rows_per_chunk"]:
      raise ManifestError(f"{MANIFEST}: field 'rows_per_chunk' does not match the array {rel}")
    arrays[rel] = arr
  return arrays


# ---------------------------------------------------------------------------------------------
# Writing: whole chunks, per process, resumable, locked.
# ---------------------------------------------------------------------------------------------
class _Lock:
  """An exclusive lock on DIR/dump.lock (released by the kernel if the dump is killed)."""

  def __init__(self, directory):
    self.f = open(os.path.join(directory, "dump.lock"), "a+")
    try:
      fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.f.close()
      raise RuntimeError(f"another dump is writing {directory!r} (dump.lock is held)") from None

  def release(self):
    fcntl.flock(self.f, fcntl.LOCK_UN)
    self.f.close()


def _sync(name):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _file_sha256(paths) -> str:
  digest = hashlib.sha256()
  for p in paths:
    with open(p, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def write_store(
  directory: str,
  source: TeacherSource,
  *,
  k: int,
  generation_temperatures,
  dtype: str = "bfloat16",
  batch_size: int = 32,
  rows_per_chunk: int | None = None,
  progress: bool = False,
  after_chunk: Callable[[int], None] | None = None,
) -> dict:
  """Runs the teachers over `source.tokens` and writes their top-k to `directory` (v2).

  Every process of a `jax.distributed` run calls it with the same arguments and writes the
  chunks `c % process_count == process_index`; process 0 then writes the manifest. A directory
  holding a dump of the same settings and tokens is resumed (finished chunks are skipped);
  one holding anything else is replaced.

  Args:
    directory: output directory.
    source: a `TeacherSource`.
    k: tokens kept per position, 1 ≤ k ≤ V.
    generation_temperatures: `[K]` or scalar T_g > 0; log-probs are log_softmax(z / T_g).
    dtype: "bfloat16", "float16" or "log8" (uint8, |error| ≤ `LOG8_RANGE` / 510 nats).
    batch_size: rows per teacher call (a chunk is cut into calls of at most this many rows).
    rows_per_chunk: rows per chunk (default `batch_size`).
    progress: tqdm bar on stderr.
    after_chunk: called with each chunk index written (tests).

  Returns:
    The manifest dict (also in `directory/manifest.json`); {} on processes other than 0.
  """
  if dtype not in LOG_PROB_DTYPES:
    raise ValueError(f"dtype must be one of {LOG_PROB_DTYPES}, got {dtype=!r}")
  v = int(source.vocab_size)
  if not 1 <= k <= v:
    raise ValueError(f"k must be in [1, {v}], got {k=}")
  tokens = np.asarray(source.tokens)
  n, length = tokens.shape[0], tokens.shape[1] - 1
  num_teachers = len(source.names)
  t_g = np.broadcast_to(np.asarray(generation_temperatures, np.float32), (num_teachers,))
  if not np.all(t_g > 0):
    raise ValueError(f"generation_temperatures must be > 0, got {t_g}")
  rows_per_chunk = int(rows_per_chunk or batch_size)
  num_chunks = -(-n // rows_per_chunk)
  pid, nproc = jax.process_index(), jax.process_count()
  storage = "uint8" if dtype == "log8" else dtype
  body = {
    "format": FORMAT,
    "vocab_size": v,
    "k": int(k),
    "sorted": True,
    "num_rows": int(n),
    "row_shape": [int(length)],
    "rows_per_chunk": rows_per_chunk,
    "num_chunks": num_chunks,
    "codecs": "bytes, zstd(level=3), crc32c",
    "tokens": {"dtype": index_dtype(v)},
    "teachers": [
      {
        "name": name,
        "config": source.configs[j] if source.configs else None,
        "generation_temperature": float(t_g[j]),
        "indices": index_dtype(v),
        "log_probs": {
          "dtype": dtype,
          "storage": storage,
          **({"log_range": LOG8_RANGE, "max_error": LOG8_RANGE / 510} if dtype == "log8" else {}),
        },
      }
      for j, name in enumerate(source.names)
    ],
  }
  intent = {**body, "tokens_sha256": hashlib.sha256(np.ascontiguousarray(tokens)).hexdigest()}

  # ---- Lock, then resume or start afresh -----------------------------------------------------
  os.makedirs(directory, exist_ok=True)
  lock = _Lock(directory) if pid == 0 else None
  try:
    intent_path = os.path.join(directory, "dump.json")
    if pid == 0:
      previous = None
      if os.path.exists(intent_path):
        with open(intent_path) as f:
          previous = json.load(f)
      if previous != intent:
        for name in os.listdir(directory):  # a store's own entries only (v2, or v1 shards)
          if name in (MANIFEST, "dump.json", "tokens", "tokens.bin") or name.startswith("teacher_"):
            p = os.path.join(directory, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        with open(intent_path + ".tmp", "w") as f:
          json.dump(intent, f)
        os.replace(intent_path + ".tmp", intent_path)
      elif os.path.exists(os.path.join(directory, MANIFEST)):
        os.remove(os.path.join(directory, MANIFEST))
    _sync("mtkd_store_start")
    layout = _array_layout(body)
    arrays = {}
    for _, rel, shape, dt in layout:
      spec = _spec(os.path.join(directory, rel), shape, dt, rows_per_chunk)
      arrays[rel] = ts.open(spec, create=pid == 0, open=True).result() if pid == 0 else None
    _sync("mtkd_store_created")
    if pid != 0:
      arrays = {
        rel: ts.open(_spec(os.path.join(directory, rel)), open=True).result() for rel in arrays
      }

    # ---- This process's chunks ----------------------------------------------------------------
    top_k = jax.jit(lambda z: (*_top_k_with_tail(z, k, t_g), non_finite_positions(z)))
    mine = [c for c in range(num_chunks) if c % nproc == pid]
    todo = [
      c
      for c in mine
      if not all(
        os.path.exists(_chunk_file(os.path.join(directory, rel), len(s), c))
        for _, rel, s, _ in layout
      )
    ]
    if progress:
      import tqdm

      todo = tqdm.tqdm(todo, desc=f"dump top-{k}", file=sys.stderr, leave=False)
    for c in todo:
      lo, hi = c * rows_per_chunk, min(n, (c + 1) * rows_per_chunk)
      outs = [
        top_k(source.logits_fn(tokens[a : min(hi, a + batch_size), :-1].astype(np.int32)))
        for a in range(lo, hi, batch_size)
      ]
      idx, lp, tail, bad = (
        np.concatenate([np.asarray(o[i]) for o in outs], axis=1) for i in range(4)
      )
      refuse_non_finite(bad, source.names, lo)  # before anything of the chunk is written
      futures = []
      for j in range(num_teachers):
        lp_j = log8_encode(lp[j]) if dtype == "log8" else lp[j].astype(_ZARR_DTYPES[dtype])
        futures += [
          arrays[f"teacher_{j}/indices"][lo:hi].write(idx[j].astype(index_dtype(v))),
          arrays[f"teacher_{j}/log_probs"][lo:hi].write(lp_j),
          arrays[f"teacher_{j}/tail_log_mass"][lo:hi].write(tail[j].astype(np.float32)),
        ]
      for fut in futures:
        fut.result()
      # tokens last: a chunk counts as finished when every array has it
      arrays["tokens"][lo:hi].write(tokens[lo:hi].astype(index_dtype(v))).result()
      if after_chunk is not None:
        after_chunk(c)
    _sync("mtkd_store_chunks")
    if pid != 0:
      return {}

    # ---- Manifest (process 0, after every chunk is on disk) ----------------------------------
    per_teacher = {}
    for label, rel, shape, _ in layout:
      files = [_chunk_file(os.path.join(directory, rel), len(shape), c) for c in range(num_chunks)]
      missing = [c for c, f in enumerate(files) if not os.path.exists(f)]
      if missing:
        raise CorruptChunkError(f"{label}: chunks {missing[:8]} missing after the dump")
      per_teacher.setdefault(rel.split("/")[0], []).extend(files)
    for j, t in enumerate(body["teachers"]):
      files = per_teacher[f"teacher_{j}"]
      t["max_index"] = int(
        max(np.asarray(arrays[f"teacher_{j}/indices"][...].read().result()).max(initial=0), 0)
      )
      t["bytes"] = int(sum(os.path.getsize(f) for f in files))
      t["sha256"] = _file_sha256(files)
    body["tokens"]["sha256"] = _file_sha256(per_teacher["tokens"])
    body["tokens"]["bytes"] = int(sum(os.path.getsize(f) for f in per_teacher["tokens"]))
    return _write_manifest(directory, body)
  finally:
    if lock is not None:
      lock.release()


def _top_k_with_tail(logits, k, t_g):
  """Top-k indices and log-probs at T_g, and the log of the mass outside the top-k, computed
  from the logits (not as 1 − Σ top-k, which rounds to 0 when the top-k holds nearly all).
  A teacher row that is entirely −inf (absent) is stored as −inf log-probs and tail."""
  out = sparse.from_dense(logits, k, generation_temperatures=t_g)
  v = logits.shape[-1]
  if k == v:
    return out.indices, out.log_probs, jnp.full(out.log_probs.shape[:-1], -jnp.inf)
  z = logits.astype(jnp.float32) / jnp.asarray(t_g).reshape((-1,) + (1,) * (logits.ndim - 1))
  ranked = -jnp.sort(-z, axis=-1)  # [K, ..., V] decreasing
  lse = jax.nn.logsumexp(z, axis=-1)
  tail = jax.nn.logsumexp(ranked[..., k:], axis=-1) - jnp.where(lse == -jnp.inf, 0.0, lse)
  return out.indices, out.log_probs, tail


def non_finite_positions(logits) -> jax.Array:
  """bool [K, ...]: where a teacher's logits `[K, ..., V]` hold NaN or +inf (−inf is a masked
  token, which a store keeps)."""
  return jnp.any(jnp.isnan(logits) | (logits == jnp.inf), axis=-1)


def refuse_non_finite(bad: np.ndarray, names, first_row: int) -> None:
  """ValueError naming the teacher and the (row, position) of the first NaN or +inf output in
  `bad [K, B, L]` (rows counted from `first_row`): a store never holds a corrupt target."""
  if not bad.any():
    return
  j, b, *pos = (int(i) for i in np.argwhere(bad)[0])
  raise ValueError(
    f"teacher {names[j]!r} (teacher {j}) output NaN or +inf logits at row {first_row + b}, "
    f"position {tuple(pos)}: refusing to store them ({int(bad[j].sum())} such positions in "
    f"rows {first_row}..{first_row + bad.shape[1] - 1})"
  )


# ---------------------------------------------------------------------------------------------
# Reading: lazy columns, chunks checked as they are read.
# ---------------------------------------------------------------------------------------------
class Column:
  """A lazy `[N, ...]` view of one stored array: `np.take(col, rows, axis=0)` (what
  `data.get_batch` calls) and `np.asarray(col)` read only the chunks they need, each checked
  for presence and CRC-32C; a failure names the teacher, the array and the chunk."""

  def __init__(self, array, label, path, rows_per_chunk, decode=None, k=None, tail_of=None):
    self._array, self.label, self.path = array, label, path
    self._rows, self._decode, self._k, self._tail_of = rows_per_chunk, decode, k, tail_of
    shape = list(array.shape)
    if k is not None and len(shape) == 3:
      shape[-1] = k
    self.shape = tuple(shape)
    stored = array.dtype.numpy_dtype
    decoded = self._decode(np.zeros(0, stored)).dtype if decode is not None else stored
    self.dtype = np.dtype(np.float32) if tail_of is not None else decoded
    self.ndim = len(self.shape)

  def __len__(self):
    return self.shape[0]

  def _read(self, rows):
    """Stored rows as on disk (all rows when `rows` is None), every chunk checked."""
    n = self._array.shape[0]
    chunks = range(-(-n // self._rows)) if rows is None else np.unique(rows // self._rows)
    for c in chunks:
      if not os.path.exists(_chunk_file(self.path, self._array.ndim, int(c))):
        raise CorruptChunkError(f"{self.label}: chunk {int(c)} is missing ({self.path})")
    view = self._array if rows is None else self._array[np.asarray(rows, np.int64)]
    try:
      return np.asarray(view.read().result())
    except Exception:
      for c in chunks:
        try:
          self._array[int(c) * self._rows : min(n, (int(c) + 1) * self._rows)].read().result()
        except Exception as e:
          raise CorruptChunkError(
            f"{self.label}: chunk {int(c)} is corrupted or truncated ({self.path}: {e})"
          ) from None
      raise

  def _get(self, rows):
    block = self._read(rows)
    if self._tail_of is not None:  # the mass outside a top-k prefix: stored tail + dropped
      lp = np.asarray(self._tail_of._get(rows), np.float32)  # [B, L, K]
      with np.errstate(divide="ignore"):
        dropped = np.log(np.exp(lp[..., self._k :]).sum(-1))
      return np.logaddexp(block.astype(np.float32), dropped)
    if self._decode is not None:
      block = self._decode(block)
    return block[..., : self._k] if self._k is not None and block.ndim == 3 else block

  def take(self, rows, axis=0, out=None, mode="raise"):
    del out, mode  # np.take passes them; rows out of range raise in tensorstore
    if axis != 0:
      raise ValueError(f"{self.label}: a store column is indexed along rows (axis 0), {axis=}")
    return self._get(np.asarray(rows))

  def __getitem__(self, key):
    rows = np.arange(self.shape[0])[key if isinstance(key, tuple) is False else key[0]]
    out = self._get(np.atleast_1d(rows))
    out = out if np.ndim(rows) else out[0]
    return out[(slice(None), *key[1:])] if isinstance(key, tuple) and np.ndim(rows) else out

  def __array__(self, dtype=None, copy=None):
    out = self._get(None)
    return out if dtype is None else out.astype(dtype)


class ManifestFields:
  """What a store's manifest says (v1 and v2 stores alike): names, k, V, T_g."""

  manifest: dict

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(t["name"] for t in self.manifest["teachers"])

  @property
  def k(self) -> int:
    return self.manifest["k"]

  @property
  def vocab_size(self) -> int:
    return self.manifest["vocab_size"]

  @property
  def generation_temperatures(self) -> np.ndarray:
    return np.array([t["generation_temperature"] for t in self.manifest["teachers"]], np.float32)

  def _check_teachers(self, teachers) -> tuple[int, ...]:
    """`teachers` (indices into `names`; None: all) as a checked tuple."""
    num = len(self.names)
    try:
      chosen = tuple(range(num)) if teachers is None else tuple(operator.index(j) for j in teachers)
    except TypeError:
      chosen = ()
    if not chosen or any(not 0 <= j < num for j in chosen) or len(set(chosen)) < len(chosen):
      raise ValueError(
        f"teachers: distinct indices in [0, {num}) of the store's {self.names}, got {teachers}"
      )
    return chosen


@dataclasses.dataclass(frozen=True)
class TeacherStore(ManifestFields):
  """An opened v2 store: manifest checked, arrays opened (metadata only), nothing read yet."""

  directory: str
  manifest: dict
  _arrays: dict

  def _column(self, rel, k=None, tail_of=None):
    label = next(lab for lab, r, _, _ in _array_layout(self.manifest) if r == rel)
    decode = None
    if rel.endswith("log_probs"):
      spec = self.manifest["teachers"][int(rel.split("/")[0].split("_")[1])]["log_probs"]
      if spec["dtype"] == "log8":
        decode = lambda c, r=spec["log_range"]: log8_decode(c, r)
    return Column(
      self._arrays[rel],
      label,
      os.path.join(self.directory, rel),
      self.manifest["rows_per_chunk"],
      decode,
      k,
      tail_of,
    )

  @property
  def tokens(self) -> Column:
    """[N, L + 1] input windows (lazy)."""
    return self._column("tokens")

  @property
  def indices(self) -> tuple[Column, ...]:
    return tuple(self._column(f"teacher_{j}/indices") for j in range(len(self.names)))

  @property
  def log_probs(self) -> tuple[Column, ...]:
    return tuple(self._column(f"teacher_{j}/log_probs") for j in range(len(self.names)))

  @property
  def tail_log_mass(self) -> tuple[Column, ...]:
    return tuple(self._column(f"teacher_{j}/tail_log_mass") for j in range(len(self.names)))

  def _check_k(self, k):
    k = self.k if k is None else int(k)
    if not 1 <= k <= self.k:
      raise ValueError(f"k must be in [1, {self.k}] (the stored k), got {k=}")
    return k

  def arrays(self, k: int | None = None, teachers=None) -> dict[str, Column]:
    """Lazy columns for `train.train(arrays=...)`: "x", "y" [N, L] and, per teacher j,
    "teacher_indices_j", "teacher_log_probs_j" [N, L, k] (the top-k prefix) and
    "teacher_tail_log_mass_j" [N, L] (the mass outside that prefix), for j in `teachers`
    (indices; None: all). A batch reads only its rows' chunks."""
    k = self._check_k(k)
    tok = self._column("tokens")
    out = {"x": _Shifted(tok, 0), "y": _Shifted(tok, 1)}
    for j in self._check_teachers(teachers):
      out[f"teacher_indices_{j}"] = self._column(f"teacher_{j}/indices", k)
      out[f"teacher_log_probs_{j}"] = self._column(f"teacher_{j}/log_probs", k)
      lp_all = self._column(f"teacher_{j}/log_probs")
      tail = f"teacher_{j}/tail_log_mass"
      out[f"teacher_tail_log_mass_{j}"] = (
        self._column(tail, k, lp_all) if k < self.k else self._column(tail)
      )
    return out

  def batch(self, batch_size: int, *, seed: int, step: int, rows: slice = slice(None), k=None):
    """This process's `rows` of the global batch at `step` (a pure function of seed, step)."""
    local = data_lib.get_batch(self.arrays(k), batch_size, seed=seed, step=step, rows=rows)
    local["x"], local["y"] = local["x"].astype(np.int32), local["y"].astype(np.int32)
    return local

  def teacher_apply(self, teachers=None) -> Callable:
    """`teacher_apply(teacher_params, batch) -> SparseTeacherOutputs` for `make_train_step`:
    stacks the `[B, L, k]` entries of `teachers` (indices, in that order; None: all) into
    `[K, B, L, k]`, with the stored tail."""
    chosen, vocab_size = self._check_teachers(teachers), self.vocab_size
    t_g = self.generation_temperatures[list(chosen)]

    def apply(teacher_params, batch):
      del teacher_params
      stack = lambda name: jnp.stack([batch[f"{name}_{j}"] for j in chosen])
      return sparse.SparseTeacherOutputs(
        stack("teacher_indices").astype(jnp.int32),
        stack("teacher_log_probs"),
        jnp.asarray(t_g),
        vocab_size,
        stack("teacher_tail_log_mass").astype(jnp.float32),
      )

    return apply

  def verify(self) -> None:
    """Reads every chunk of every array (CRC-32C and decompression) and checks the manifest's
    per-array SHA-256 and largest index; raises naming what fails."""
    for _, rel, _, _ in _array_layout(self.manifest):
      self._column(rel)._read(None)
    for j, t in enumerate(self.manifest["teachers"]):
      files = [
        _chunk_file(os.path.join(self.directory, rel), len(shape), c)
        for _, rel, shape, _ in _array_layout(self.manifest)[1 + 3 * j : 4 + 3 * j]
        for c in range(self.manifest["num_chunks"])
      ]
      if _file_sha256(files) != t["sha256"]:
        raise CorruptChunkError(f"teacher {t['name']!r}: chunks do not match the manifest's sha256")
      got = int(np.asarray(self._column(f"teacher_{j}/indices")._read(None)).max(initial=0))
      if got != t["max_index"]:
        raise ManifestError(
          f"{MANIFEST}: field 'teachers[{j}].max_index' = {t['max_index']}, the array holds {got}"
        )

  def check_matches(self, **want) -> None:
    """Refuses a store whose settings differ from the request, naming the field: `k` (at
    least), `vocab_size`, `names`, `generation_temperatures`, `dtype`, `num_rows`."""
    have = {
      "vocab_size": self.vocab_size,
      "names": tuple(self.names),
      "generation_temperatures": tuple(float(t) for t in self.generation_temperatures),
      "dtype": self.manifest["teachers"][0]["log_probs"]["dtype"],
      "num_rows": self.manifest["num_rows"],
    }
    for field, value in want.items():
      if field == "k":
        if value > self.k:
          raise ManifestError(f"field 'k': the store holds top-{self.k}, top-{value} was asked for")
      elif field == "generation_temperatures":
        value = np.broadcast_to(np.asarray(value, np.float32), (len(self.names),))
        if not np.allclose(value, have[field]):
          raise ManifestError(
            f"field 'generation_temperature': the store has {have[field]}, asked {tuple(value)}"
          )
      elif (tuple(value) if isinstance(value, list | tuple) else value) != have[field]:
        raise ManifestError(f"field {field!r}: the store has {have[field]!r}, asked {value!r}")


class _Shifted:
  """x = w[:, :-1] or y = w[:, 1:] of the token windows, lazily (int32)."""

  def __init__(self, tokens: Column, offset: int):
    self._tokens, self._offset = tokens, offset
    self.shape = (tokens.shape[0], tokens.shape[1] - 1)
    self.dtype, self.ndim = np.dtype(np.int32), 2

  def __len__(self):
    return self.shape[0]

  def _cut(self, w):
    return w[:, self._offset : self._offset + self.shape[1]].astype(np.int32)

  def take(self, rows, axis=0, out=None, mode="raise"):
    return self._cut(self._tokens.take(rows, axis, out, mode))

  def __array__(self, dtype=None, copy=None):
    out = self._cut(np.asarray(self._tokens))
    return out if dtype is None else out.astype(dtype)


def open_store(directory: str, *, verify: bool = False, cache_bytes: int = 1 << 30) -> TeacherStore:
  """Opens a v2 store reading metadata only: the manifest (its own SHA-256 checked) and every
  array's zarr.json, cross-checked; `verify=True` also reads every chunk (`TeacherStore.verify`).

  Raises:
    ManifestError naming the manifest field that is missing, edited or inconsistent;
    CorruptChunkError naming the teacher, array and chunk that is missing or damaged.
  """
  manifest = _read_manifest(directory)
  try:
    context = ts.Context({"cache_pool": {"total_bytes_limit": int(cache_bytes)}})
    arrays = _cross_check(directory, manifest, context)
  except KeyError as e:
    raise ManifestError(f"{MANIFEST}: field {e} is missing") from None
  store = TeacherStore(directory, manifest, arrays)
  if verify:
    store.verify()
  return store
