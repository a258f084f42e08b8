"""Operator families on digits: student test accuracy and log-loss vs each single teacher.

    python -m mtkd_jax.main --config=experiments/configs/operators.py --workdir=runs/operators

or `--config=experiments/configs/operators.py:small` (two operators, one seed, shorter
training). Runs the digits job per seed with one student per operator family and one per single
teacher, and reports, per operator, whether its student beats the weighted average teacher
log-loss (Cor IV.10) and the best single-teacher student. Each seed's digits run goes to
`<workdir>/seed_<s>`, results.json to the workdir; runtime 30 s (small) to a few minutes.
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
