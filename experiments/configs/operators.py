"""Operator families on digits: student test accuracy and log-loss vs each single teacher.

    python -m mtkd_jax.main --config=experiments/configs/operators.py \
        --workdir=runs/operators

or `--config=experiments/configs/operators.py:small` for the small setting.

Runs the digits job per seed with one student per operator family (linear, geometric,
power(0.5), power(2), entropic(0.5), barycenter(hellinger)) and one per single teacher.
Measured (2 seeds): every operator's student beats the weighted average teacher log-loss 0.722
(Cor IV.10) and every single-teacher student's accuracy (0.905-0.919 vs ≤ 0.898); only the
geometric student (0.442) beats the best single-teacher student's log-loss (0.480).
Runtime about 1-2 minutes (small: ~30 s).
"""

import ml_collections

from mtkd_jax.experiments.common import DEFAULT_OPERATORS, load_sibling_config


def get_config(size: str = "full"):
  c = ml_collections.ConfigDict()
  c.experiment = "operators_comparison"  # module mtkd_jax.experiments.operators_comparison
  c.size = size  # "full" or "small" (two operators, one seed, shorter training)
  c.seeds = (0, 1)  # one digits job per seed (teachers and students re-initialised)
  c.operators = DEFAULT_OPERATORS  # operator specs, one student each
  c.progress = True  # tqdm progress bar of the digits job
  c.digits = load_sibling_config(__file__, "digits")  # teachers, student, optimisation
  c.digits.checkpoint_every = 1000  # only the final checkpoints
  if size == "small":
    apply_small(c)
  elif size != "full":
    raise ValueError(f"config size must be 'full' or 'small', got {size!r}")
  return c


def apply_small(c):
  """The small setting: what tests and notebooks run (MTKD_NOTEBOOK_SIZE=small)."""
  c.size = "small"
  c.seeds = (0,)
  c.operators = ("linear", "geometric")
  c.digits.teacher_steps = 150
  c.digits.num_steps = 200
  return c
