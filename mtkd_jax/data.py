"""Data: scikit-learn's bundled digits, heterogeneous teacher views, pure batch iterators.

Everything here is host-side numpy and deterministic: a split is a function of its seed, a
teacher view is a function of (seed, teacher index), and a batch is a function of
(seed, step), so a run restarted from a checkpoint at step s sees exactly the batches it would
have seen without the interruption.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_PIXELS = 64
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Split:
  """Arrays of one split: `x` float32 [N, 64] in [0, 1], `y` int32 [N], `index` int [N]."""

  x: np.ndarray
  y: np.ndarray
  index: np.ndarray  # row of each example in the full 1797-example set (keys corruptions)

  def __len__(self) -> int:
    return len(self.y)


def load_digits(*, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2):
  """Deterministic train/val/test split of the 1797 8x8 digits (bundled, no download).

  Args:
    seed: seed of the shuffling permutation.
    val_fraction: fraction of examples in the validation split.
    test_fraction: fraction of examples in the test split.

  Returns:
    dict {"train", "val", "test"} of `Split`; pixels are scaled to [0, 1].

  >>> splits = load_digits()
  >>> [len(splits[k]) for k in ("train", "val", "test")]
  [1079, 359, 359]
  """
  if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
    raise ValueError(f"data: bad split fractions {val_fraction=} {test_fraction=}")
  from sklearn import datasets  # 1.5 s to import: only where the data is read

  digits = datasets.load_digits()
  x = (digits.data / 16.0).astype(np.float32)  # [N, 64]
  y = digits.target.astype(np.int32)  # [N]
  n = len(y)
  perm = np.random.default_rng(seed).permutation(n)
  n_val, n_test = round(val_fraction * n), round(test_fraction * n)
  parts = {
    "test": perm[:n_test],
    "val": perm[n_test : n_test + n_val],
    "train": perm[n_test + n_val :],
  }
  return {k: Split(x=x[idx], y=y[idx], index=idx) for k, idx in parts.items()}


# --------------------------------------------------------------------------------------------
# Teacher views: each teacher sees a different pixel subset, a different corruption and a
# different subset of the training set (and, in the config, has a different width).
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TeacherView:
  """How one teacher sees the data.

  Attributes:
    pixel_mask: bool [64], the pixels the teacher sees (others are zeroed).
    noise: std of the fixed Gaussian corruption added to the seen pixels.
    train_rows: int [M], rows of the train split the teacher is trained on.
    seed: seed of the corruption (a function of the example's global index, so the same
      image is corrupted the same way in every epoch and every split).
  """

  pixel_mask: np.ndarray
  noise: float
  train_rows: np.ndarray
  seed: int

  def apply(self, split: Split) -> np.ndarray:
    """Returns the teacher's inputs for `split`: float32 [N, 64]."""
    rng = np.random.default_rng([self.seed, 1797])
    table = rng.standard_normal((1797, NUM_PIXELS)).astype(np.float32)  # [1797, 64]
    x = split.x + self.noise * table[split.index]
    return np.where(self.pixel_mask, x, 0.0).astype(np.float32)


def make_teacher_views(
  num_train: int,
  *,
  keep_fractions: tuple[float, ...],
  noises: tuple[float, ...],
  train_fractions: tuple[float, ...],
  seed: int = 0,
) -> list[TeacherView]:
  """K teacher views with different random pixel subsets, noises and training subsets.

  Args:
    num_train: size of the training split.
    keep_fractions: [K] fraction of the 64 pixels teacher k sees.
    noises: [K] corruption std of teacher k.
    train_fractions: [K] fraction of the training split teacher k is trained on.
    seed: base seed; teacher k uses seed (seed, k).

  Returns:
    K `TeacherView`s.

  >>> views = make_teacher_views(100, keep_fractions=(0.5, 0.25), noises=(0.0, 0.1),
  ...                            train_fractions=(1.0, 0.5))
  >>> [int(v.pixel_mask.sum()) for v in views], [len(v.train_rows) for v in views]
  ([32, 16], [100, 50])
  """
  k = len(keep_fractions)
  if len(noises) != k or len(train_fractions) != k:
    raise ValueError(
      f"teacher views: keep_fractions, noises and train_fractions must have one entry per "
      f"teacher, got {len(keep_fractions)=} {len(noises)=} {len(train_fractions)=}"
    )
  views = []
  for i in range(k):
    rng = np.random.default_rng([seed, i])
    mask = np.zeros(NUM_PIXELS, bool)
    mask[rng.permutation(NUM_PIXELS)[: max(1, round(keep_fractions[i] * NUM_PIXELS))]] = True
    rows = np.sort(rng.permutation(num_train)[: max(1, round(train_fractions[i] * num_train))])
    views.append(TeacherView(pixel_mask=mask, noise=noises[i], train_rows=rows, seed=seed + i))
  return views


# --------------------------------------------------------------------------------------------
# Batches: a pure function of (seed, step); each process takes its rows of the global batch.
# --------------------------------------------------------------------------------------------
def _feistel(x: np.ndarray, bits: int, keys: np.ndarray) -> np.ndarray:
  """A bijection of [0, 2^bits), bits even: a balanced Feistel network (one round per key,
  splitmix64 round function) on uint64 values."""
  half = np.uint64(bits // 2)
  mask = np.uint64((1 << (bits // 2)) - 1)
  left, right = x >> half, x & mask
  for key in keys:
    z = (right ^ key) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(32)
    left, right = right, (left ^ z) & mask
  return (left << half) | right


def batch_indices(
  num_examples: int, batch_size: int, *, seed: int, step: int, rows: slice = slice(None)
) -> np.ndarray:
  """This process's `rows` of the global batch at `step`: int [batch_size] for all rows, in
  O(batch), without a permutation of all N examples.

  Epoch e = step // (N // B) permutes [0, N) by a keyed Feistel bijection of [0, 2^b) ⊇ [0, N)
  (keys from (seed, e)), walking out of range values back in ("cycle walking", at most ~4
  steps on average since 2^b < 4N); the last partial batch of an epoch is dropped, so every
  batch has the same shape (no retracing). A pure function of (seed, step): a resumed run sees
  the same batches.

  >>> batch_indices(10, 4, seed=0, step=0).shape
  (4,)
  >>> sorted(np.concatenate([batch_indices(8, 2, seed=1, step=s) for s in range(4)]).tolist())
  [0, 1, 2, 3, 4, 5, 6, 7]
  """
  if not 0 < batch_size <= num_examples:
    raise ValueError(f"batch_size: must be in [1, {num_examples}], got {batch_size}")
  epoch, i = divmod(step, num_examples // batch_size)
  bits = max(2, int(num_examples - 1).bit_length())
  bits += bits % 2  # balanced halves
  keys = np.random.default_rng([seed, epoch, 0xFE15]).integers(0, 2**63, 4, dtype=np.uint64)
  x = np.arange(i * batch_size, (i + 1) * batch_size, dtype=np.uint64)[rows]
  x = _feistel(x, bits, keys)
  while (out := x >= num_examples).any():  # cycle walking: stays a bijection of [0, N)
    x[out] = _feistel(x[out], bits, keys)
  return x.astype(np.int64)


def get_batch(
  arrays: dict[str, np.ndarray],
  batch_size: int,
  *,
  seed: int,
  step: int,
  rows: slice = slice(None),
) -> dict[str, np.ndarray]:
  """This process's part of the global batch at `step`.

  Args:
    arrays: dict of arrays with a common example axis [N, ...], the second for
      "teacher_logits" [K, N, ..., V] (`example_axis`).
    batch_size: global batch size B.
    seed: data seed.
    step: training step.
    rows: the rows of the global batch this process feeds (from
      `sharding.process_batch_rows`); all rows by default.

  Returns:
    dict of arrays [B_local, ...].
  """
  key = next(iter(arrays))
  n = arrays[key].shape[example_axis(key)]
  idx = batch_indices(n, batch_size, seed=seed, step=step, rows=rows)
  return {k: np.take(v, idx, axis=example_axis(k)) for k, v in arrays.items()}


def example_axis(key: str) -> int:
  """The example axis of a data array: 1 for "teacher_logits" [K, N, ..., V] (teachers first,
  as everywhere in the library), 0 for every other array [N, ...]."""
  return 1 if key == "teacher_logits" else 0


# --------------------------------------------------------------------------------------------
# A tiny byte-level corpus for the Transformer LM (bundled text, no download).
# --------------------------------------------------------------------------------------------
def byte_corpus() -> np.ndarray:
  """uint8 [N] bytes of the scikit-learn bundled data set descriptions (~25 kB of English)."""
  from sklearn import datasets

  loaders = (
    datasets.load_digits,
    datasets.load_iris,
    datasets.load_wine,
    datasets.load_breast_cancer,
    datasets.load_diabetes,
  )
  text = "\n\n".join(load().DESCR for load in loaders)
  return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def lm_batch(
  corpus: np.ndarray, batch_size: int, seq_len: int, *, seed: int, step: int
) -> dict[str, np.ndarray]:
  """Random windows of the corpus at `step`: x = bytes[t:t+L], y = bytes[t+1:t+L+1].

  Returns:
    {"x": int32 [B, L], "y": int32 [B, L]}, a pure function of (seed, step).
  """
  starts = np.random.default_rng([seed, step]).integers(0, len(corpus) - seq_len - 1, batch_size)
  win = corpus[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)  # [B, L + 1]
  return {"x": win[:, :-1], "y": win[:, 1:]}
