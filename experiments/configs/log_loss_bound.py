"""Thm IV.9 log-loss bound −log q(y) ≤ −Σ_k w_k log p_k(y): digits teachers and random inputs.

    python -m mtkd_jax.main --config=experiments/configs/log_loss_bound.py \
        --workdir=runs/log_loss_bound

`:small` trains the teachers for fewer steps and draws fewer random problems. Runtime 10-30 s;
writes the teacher checkpoints and results.json to the workdir.
"""

import os

import ml_collections

from mtkd_jax import configs
from mtkd_jax.experiments.common import DEFAULT_OPERATORS


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.experiment = "log_loss_bound"  # module mtkd_jax.experiments.log_loss_bound
  c.seed = 0  # seed of the random problems
  c.operators = DEFAULT_OPERATORS  # operator specs
  c.num_random = 20000  # random problems (teachers, weights, label)
  c.random_num_teachers = 3  # K of the random problems
  c.random_vocab_size = 5  # V of the random problems
  c.progress = True  # tqdm progress bars of the teacher training
  c.digits = configs.load(os.path.join(os.path.dirname(__file__), "digits.py"))  # the teachers
  if arg.small:
    c.num_random = 2000
    c.digits.teacher_steps = 60
  return c
