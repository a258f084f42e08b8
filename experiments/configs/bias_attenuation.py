"""Supervisory bias attenuation: class-shifted digits teachers vs their aggregate, per operator.

    python -m mtkd_jax.main --config=experiments/configs/bias_attenuation.py \
        --workdir=runs/bias_attenuation

`:small` trains the teachers for fewer steps. Runtime 10-30 s; writes the teacher checkpoints and
results.json to the workdir. Expected: every aggregate's bias below the best teacher's.
"""

import os

import ml_collections

from mtkd_jax import configs
from mtkd_jax.experiments.common import DEFAULT_OPERATORS


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.experiment = "bias_attenuation"  # module mtkd_jax.experiments.bias_attenuation
  c.operators = DEFAULT_OPERATORS  # operator specs
  c.window = 6  # classes each teacher sees in full (consecutive digits, shifted by 10/K)
  c.out_fraction = 0.1  # fraction of the other classes' examples each teacher also sees
  c.progress = True  # tqdm progress bars of the teacher training
  c.digits = configs.load(os.path.join(os.path.dirname(__file__), "digits.py"))  # the teachers
  c.digits.teacher_keep_fractions = (1.0, 1.0, 1.0)  # all pixels: bias comes from the classes
  c.digits.teacher_noises = (0.0, 0.0, 0.0)  # no corruption
  c.digits.teacher_train_fractions = (1.0, 1.0, 1.0)  # before the class shift
  if arg.small:
    c.digits.teacher_steps = 80
  return c
