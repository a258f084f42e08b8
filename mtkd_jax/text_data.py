"""Byte-level corpora from the Python standard library's own source files, split by file.

Host-side numpy, deterministic: the file list is sorted, a file's split is a function of its
path (CRC-32 of the POSIX relative path, so it does not depend on the directory walk order or the
machine), and every window set is a function of a seed. A *family* is a named group of
top-level entries of the library (packages or modules); "*" takes everything not listed
elsewhere. Teachers specialise on one family each; the student sees them all.
"""

from __future__ import annotations

import dataclasses
import os
import sysconfig
import zlib
from collections.abc import Sequence

import numpy as np

# Never part of the standard library proper (third-party code, bytecode caches).
ALWAYS_EXCLUDED = ("site-packages", "dist-packages", "__pycache__")


def stdlib_root() -> str:
  """The directory of the running interpreter's standard library."""
  return sysconfig.get_paths()["stdlib"]


def list_source_files(root: str, exclude: Sequence[str] = ()) -> list[str]:
  """Sorted POSIX paths (relative to `root`) of the `.py` files under `root`.

  Args:
    root: library directory.
    exclude: top-level names (packages or `name.py` modules) to skip; `ALWAYS_EXCLUDED`
      directories are skipped at any depth.
  """
  skip_top = set(exclude)
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    top = None if rel_dir == "." else rel_dir.split(os.sep)[0]
    if top in skip_top:
      dirnames[:] = []
      continue
    dirnames[:] = sorted(d for d in dirnames if d not in ALWAYS_EXCLUDED)
    for name in filenames:
      if not name.endswith(".py") or (top is None and name in skip_top):
        continue
      rel = name if top is None else os.path.join(rel_dir, name)
      paths.append(rel.replace(os.sep, "/"))
  return sorted(paths)


def family_of(path: str, families: Sequence[tuple[str, Sequence[str]]]) -> str | None:
  """The family whose top-level names contain `path`'s first component ("*": the rest)."""
  top = path.split("/")[0]
  for name, members in families:
    if top in members:
      return name
  for name, members in families:
    if "*" in members:
      return name
  return None


def is_held_out(path: str, test_fraction: float) -> bool:
  """Deterministic file-level split: CRC-32 of the path modulo 10_000 below the fraction.

  >>> is_held_out("json/decoder.py", 0.1) == is_held_out("json/decoder.py", 0.1)
  True
  """
  return zlib.crc32(path.encode("utf-8")) % 10_000 < round(test_fraction * 10_000)


def is_validation(path: str, validation_fraction: float) -> bool:
  """Validation files among the training files: CRC-32 of "validation:" + the path, so the
  choice is independent of `is_held_out`'s.

  >>> is_validation("json/decoder.py", 0.1) == is_validation("json/decoder.py", 0.1)
  True
  """
  key = ("validation:" + path).encode("utf-8")
  return zlib.crc32(key) % 10_000 < round(validation_fraction * 10_000)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Per family and split: the files and their concatenated bytes.

  Attributes:
    families: family names, in order.
    files: {family: {"train" | "validation" | "test": [relative paths]}}.
    data: {family: {"train" | "validation" | "test": uint8 [N] bytes}}, files joined by one
      newline ("validation" only with a `validation_fraction`).
  """

  families: tuple[str, ...]
  files: dict
  data: dict

  def num_bytes(self, split: str) -> dict[str, int]:
    return {f: int(self.data[f][split].size) for f in self.families}


def load_stdlib(
  families: Sequence[tuple[str, Sequence[str]]],
  *,
  test_fraction: float = 0.1,
  exclude: Sequence[str] = (),
  root: str | None = None,
  validation_fraction: float = 0.0,
) -> Corpus:
  """Loads the library's `.py` files into per-family train/test byte arrays.

  Args:
    families: `((name, (top-level names...)), ...)`; a "*" member catches all other files.
    test_fraction: fraction of *files* held out (by `is_held_out`).
    validation_fraction: fraction of the remaining (training) files carved off as a
      "validation" split (`is_validation`, independent of the test split); 0: none.
    exclude: top-level names left out entirely.
    root: library directory (default: `stdlib_root()`).

  Returns:
    A `Corpus`. Raises ValueError if a family ends up with no train or no test file.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction=}")
  root = stdlib_root() if root is None else root
  names = tuple(name for name, _ in families)
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction=}")
  splits = ("train", "validation", "test") if validation_fraction else ("train", "test")
  files = {f: {s: [] for s in splits} for f in names}
  for path in list_source_files(root, exclude):
    fam = family_of(path, families)
    if fam is not None:
      if is_held_out(path, test_fraction):
        files[fam]["test"].append(path)
      elif validation_fraction and is_validation(path, validation_fraction):
        files[fam]["validation"].append(path)
      else:
        files[fam]["train"].append(path)
  data = {}
  for fam in names:
    data[fam] = {}
    for split, paths in files[fam].items():
      if not paths:
        raise ValueError(f"family {fam!r} has no {split} files under {root}")
      chunks = []
      for path in paths:
        with open(os.path.join(root, path), "rb") as f:
          chunks.append(f.read())
      data[fam][split] = np.frombuffer(b"\n".join(chunks), dtype=np.uint8)
  return Corpus(families=names, files=files, data=data)


def sample_windows(data: np.ndarray, num: int, length: int, *, seed) -> np.ndarray:
  """`num` random windows of `length + 1` bytes (x = w[:, :-1], y = w[:, 1:]): uint8."""
  if data.size < length + 2:
    raise ValueError(f"corpus of {data.size} bytes is shorter than a window of {length + 1}")
  starts = np.random.default_rng(seed).integers(0, data.size - length - 1, num)
  return data[starts[:, None] + np.arange(length + 1)]  # [num, L + 1]


def eval_windows(data: np.ndarray, num: int, length: int) -> np.ndarray:
  """`num` windows of `length + 1` bytes evenly spaced over the data (no randomness)."""
  if data.size < length + 2:
    raise ValueError(f"corpus of {data.size} bytes is shorter than a window of {length + 1}")
  starts = np.linspace(0, data.size - length - 1, num).astype(np.int64)
  return data[starts[:, None] + np.arange(length + 1)]  # [num, L + 1]
