"""Thm IV.7 Jensen bound: L_mix ≤ L_multi along a digits student's training, gap = teachers' JS.

    python -m mtkd_jax.main --config=experiments/configs/jensen_bound.py \
        --workdir=runs/jensen_bound

`:small` runs three operators and shorter training. Runtime 30 s (small) to a few minutes; writes
the digits runs to `<workdir>/sum_of_kls` and `<workdir>/mixture_kd`, results.json to the workdir.
"""

import os

import ml_collections

from mtkd_jax import configs
from mtkd_jax.experiments.common import DEFAULT_OPERATORS


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.experiment = "jensen_bound"  # module mtkd_jax.experiments.jensen_bound
  c.seed = 0  # seed of the random search
  c.operators = DEFAULT_OPERATORS  # operator specs; the first must be "linear"
  c.num_random = 20000  # random problems (teachers, weights, student) in the search
  c.random_num_teachers = 3  # K of the random problems
  c.random_vocab_size = 5  # V of the random problems
  c.progress = True  # tqdm progress bars of the digits runs
  c.digits = configs.load(os.path.join(os.path.dirname(__file__), "digits.py"))  # the digits job
  c.digits.log_every = 5  # steps between logged batch values of L_mix, L_multi, JS
  c.digits.checkpoint_every = 1000  # only the final checkpoints
  if arg.small:
    c.operators = ("linear", "geometric", "entropic(beta=0.5)")
    c.num_random = 2000
    c.digits.teacher_steps = 60
    c.digits.num_steps = 60
  return c
