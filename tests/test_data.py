"""Tests for mtkd_jax.data: deterministic splits, teacher views, pure batch iterators."""

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from mtkd_jax import data


def test_split_is_deterministic_disjoint_and_complete():
  a, b = data.load_digits(seed=0), data.load_digits(seed=0)
  for k in ("train", "val", "test"):
    np.testing.assert_array_equal(a[k].index, b[k].index)
    np.testing.assert_array_equal(a[k].x, b[k].x)
  idx = np.concatenate([a[k].index for k in ("train", "val", "test")])
  assert len(idx) == 1797 and len(np.unique(idx)) == 1797
  assert a["train"].x.shape == (len(a["train"]), 64) and a["train"].x.dtype == np.float32
  assert 0.0 <= a["train"].x.min() and a["train"].x.max() <= 1.0
  assert set(np.unique(a["train"].y)) == set(range(10))
  c = data.load_digits(seed=1)
  assert not np.array_equal(a["test"].index, c["test"].index)


def test_bad_split_fractions():
  with pytest.raises(ValueError, match="split fractions"):
    data.load_digits(val_fraction=0.6, test_fraction=0.5)


def test_teacher_views_are_heterogeneous_and_deterministic():
  splits = data.load_digits()
  n = len(splits["train"])
  kw = dict(keep_fractions=(0.5, 0.25, 0.75), noises=(0.0, 0.1, 0.3), train_fractions=(1, 0.5, 0.3))
  views = data.make_teacher_views(n, **kw, seed=3)
  again = data.make_teacher_views(n, **kw, seed=3)
  assert [int(v.pixel_mask.sum()) for v in views] == [32, 16, 48]
  assert [len(v.train_rows) for v in views] == [n, round(0.5 * n), round(0.3 * n)]
  assert not np.array_equal(views[0].pixel_mask, views[2].pixel_mask)
  for v, w in zip(views, again, strict=True):
    np.testing.assert_array_equal(v.apply(splits["test"]), w.apply(splits["test"]))
  x1 = views[1].apply(splits["test"])
  assert np.all(x1[:, ~views[1].pixel_mask] == 0)
  noise = x1[:, views[1].pixel_mask] - splits["test"].x[:, views[1].pixel_mask]
  assert 0.05 < noise.std() < 0.15  # the corruption is there, with the requested size
  np.testing.assert_array_equal(
    views[0].apply(splits["val"])[:, views[0].pixel_mask], splits["val"].x[:, views[0].pixel_mask]
  )


def test_teacher_views_reject_mismatched_lengths():
  with pytest.raises(ValueError, match="noises"):
    data.make_teacher_views(10, keep_fractions=(0.5, 0.5), noises=(0.0,), train_fractions=(1, 1))


def test_batches_are_pure_in_seed_and_step():
  b1 = data.batch_indices(100, 16, seed=0, step=7)
  np.testing.assert_array_equal(b1, data.batch_indices(100, 16, seed=0, step=7))
  assert not np.array_equal(b1, data.batch_indices(100, 16, seed=0, step=8))
  assert not np.array_equal(b1, data.batch_indices(100, 16, seed=1, step=7))
  # One epoch (100 // 16 = 6 steps) visits distinct examples.
  epoch = np.concatenate([data.batch_indices(100, 16, seed=0, step=s) for s in range(6)])
  assert len(np.unique(epoch)) == 96


def test_process_rows_partition_the_global_batch():
  arrays = {"x": np.arange(50)[:, None] * 1.0, "y": np.arange(50)}
  full = data.get_batch(arrays, 8, seed=0, step=3)
  parts = [data.get_batch(arrays, 8, seed=0, step=3, rows=slice(4 * p, 4 * p + 4)) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([p["y"] for p in parts]), full["y"])
  np.testing.assert_array_equal(full["x"][:, 0], full["y"])


def test_batch_size_larger_than_data():
  with pytest.raises(ValueError, match="batch_size"):
    data.batch_indices(10, 11, seed=0, step=0)


def test_lm_batch_targets_are_shifted_inputs():
  corpus = data.byte_corpus()
  assert corpus.dtype == np.uint8 and len(corpus) > 10_000
  b = data.lm_batch(corpus, 4, 32, seed=0, step=5)
  assert b["x"].shape == b["y"].shape == (4, 32)
  np.testing.assert_array_equal(b["x"][:, 1:], b["y"][:, :-1])
  np.testing.assert_array_equal(b["x"], data.lm_batch(corpus, 4, 32, seed=0, step=5)["x"])


@hypothesis.given(
  n=st.integers(2, 300),
  b=st.integers(1, 64),
  seed=st.integers(0, 2**16),
  step=st.integers(0, 10_000),
  parts=st.sampled_from([1, 2, 4]),
)
def test_batch_properties(n, b, seed, step, parts):
  hypothesis.assume(b <= n)
  idx = data.batch_indices(n, b, seed=seed, step=step)
  assert idx.shape == (b,) and len(np.unique(idx)) == b and idx.min() >= 0 and idx.max() < n
  np.testing.assert_array_equal(idx, data.batch_indices(n, b, seed=seed, step=step))
  # Per-process slices of the global batch reassemble it, whatever the process count.
  if b % parts == 0:
    arrays = {"i": np.arange(n)}
    shards = [
      data.get_batch(
        arrays, b, seed=seed, step=step, rows=slice(p * b // parts, (p + 1) * b // parts)
      )
      for p in range(parts)
    ]
    np.testing.assert_array_equal(np.concatenate([s["i"] for s in shards]), idx)
