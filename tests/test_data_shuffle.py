"""Tests for data.batch_indices: the O(batch) data order is a permutation per epoch."""

import numpy as np
import pytest

from mtkd_jax import data


@pytest.mark.parametrize("n,b", [(10, 4), (1000, 7), (4096, 64), (5, 5), (1, 1), (3, 1)])
def test_each_epoch_is_a_permutation(n, b):
  steps = n // b
  for seed, epoch in [(0, 0), (0, 1), (7, 3)]:
    rows = np.concatenate(
      [data.batch_indices(n, b, seed=seed, step=epoch * steps + s) for s in range(steps)]
    )
    assert len(np.unique(rows)) == steps * b and 0 <= rows.min() and rows.max() < n


def test_pure_in_seed_and_step_and_epochs_differ():
  a = data.batch_indices(1000, 10, seed=3, step=250)
  np.testing.assert_array_equal(a, data.batch_indices(1000, 10, seed=3, step=250))  # resume
  assert not np.array_equal(a, data.batch_indices(1000, 10, seed=4, step=250))
  assert not np.array_equal(a, data.batch_indices(1000, 10, seed=3, step=350))  # next epoch
  # not the identity, and every position equally likely to move
  assert not np.array_equal(data.batch_indices(1000, 1000, seed=0, step=0), np.arange(1000))


def test_huge_data_set_costs_one_batch():
  rows = data.batch_indices(10**12, 256, seed=0, step=10**9)
  assert rows.shape == (256,) and len(np.unique(rows)) == 256 and rows.max() < 10**12


def test_sharded_per_process_rows_concatenate_to_the_global_batch():
  full = data.batch_indices(100, 8, seed=1, step=5)
  halves = [data.batch_indices(100, 8, seed=1, step=5, rows=slice(a, a + 4)) for a in (0, 4)]
  np.testing.assert_array_equal(np.concatenate(halves), full)
