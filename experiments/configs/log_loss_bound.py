"""Thm IV.9 log-loss bound −log q(y) ≤ −Σ_k w_k log p_k(y): digits teachers and random inputs.

    python -m mtkd_jax.main --config=experiments/configs/log_loss_bound.py \
        --workdir=runs/log_loss_bound

or `--config=experiments/configs/log_loss_bound.py:small` for the small setting.

Trains (or restores from the workdir) the digits job's three teachers and checks the bound on
every train and test example for every operator, then on random teachers and labels. Expected:
no violation for linear, geometric, power(0.5) and barycenter(hellinger) (α ≤ 1 power means);
violations for power(2) and entropic(0.5). Runtime about 15 s (small: ~8 s).
"""

import ml_collections

from mtkd_jax.experiments.common import DEFAULT_OPERATORS, load_sibling_config


def get_config(size: str = "full"):
  c = ml_collections.ConfigDict()
  c.experiment = "log_loss_bound"  # module mtkd_jax.experiments.log_loss_bound
  c.size = size  # "full" or "small" (shorter teacher training, fewer random problems)
  c.seed = 0  # seed of the random problems
  c.operators = DEFAULT_OPERATORS  # operator specs
  c.num_random = 20000  # random problems (teachers, weights, label)
  c.random_num_teachers = 3  # K of the random problems
  c.random_vocab_size = 5  # V of the random problems
  c.digits = load_sibling_config(__file__, "digits")  # teachers, weights, temperatures
  if size == "small":
    apply_small(c)
  elif size != "full":
    raise ValueError(f"config size must be 'full' or 'small', got {size!r}")
  return c


def apply_small(c):
  """The small setting: what tests and notebooks run (MTKD_NOTEBOOK_SIZE=small)."""
  c.size = "small"
  c.num_random = 2000
  c.digits.teacher_steps = 60
  return c
