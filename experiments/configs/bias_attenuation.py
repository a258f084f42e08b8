"""Supervisory bias attenuation: class-shifted digits teachers vs their aggregate, per operator.

    python -m mtkd_jax.main --config=experiments/configs/bias_attenuation.py \
        --workdir=runs/bias_attenuation

or `--config=experiments/configs/bias_attenuation.py:small` (shorter teacher training).
Each of the three teachers is trained on all digits of its own window of 6 classes and 10% of the
rest, so it over-predicts its window. On the test set the bias b = E[p(·|x) − e_y] of every
aggregate is compared with each teacher's. Expected: every aggregate's ‖b‖₂ below the best single
teacher's (the windows' biases cancel), with b_q = Σ_k w_k b_k exactly for linear. Teacher
checkpoints and results.json go to the workdir; runtime 10-30 s.
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
