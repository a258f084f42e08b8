"""Operator families on digits: student test accuracy and log-loss vs each single teacher.

    python -m mtkd_jax.main --config=experiments/configs/operators.py --workdir=runs/operators

`:small` runs two operators, one seed and shorter training. Runtime 30 s (small) to a few
minutes; writes each seed's digits run to `<workdir>/seed_<s>`, results.json to the workdir.
"""

import os

import ml_collections

from mtkd_jax import configs
from mtkd_jax.experiments.common import DEFAULT_OPERATORS


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.experiment = "operators_comparison"  # module mtkd_jax.experiments.operators_comparison
  c.seeds = (0, 1)  # one digits job per seed (teachers and students re-initialised)
  c.operators = DEFAULT_OPERATORS  # operator specs, one student each
  c.progress = True  # tqdm progress bars of the digits job
  c.digits = configs.load(os.path.join(os.path.dirname(__file__), "digits.py"))  # the job
  c.digits.checkpoint_every = 1000  # only the final checkpoints
  if arg.small:
    c.seeds = (0,)
    c.operators = ("linear", "geometric")
    c.digits.teacher_steps = 150
    c.digits.num_steps = 200
  return c
