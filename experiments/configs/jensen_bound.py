"""Thm IV.7 Jensen bound: L_mix ≤ L_multi along a digits student's training, gap = teachers' JS.

    python -m mtkd_jax.main --config=experiments/configs/jensen_bound.py \
        --workdir=runs/jensen_bound

or `--config=experiments/configs/jensen_bound.py:small` for the small setting.

Trains the digits teachers, then one student per operator on L_multi (same init and batches, so
one trajectory) logging each operator's L_mix, plus a twin trained on L_mix; then searches random
teachers/students for violations. Measured (full): linear max |L_multi − L_mix − JS| = 6e-7 over
80 logged steps, the twin's L_mix within 6e-7 (relative) of the L_multi-trained student's; random
violations: linear 0%, geometric 40%, entropic(0.5) 18%, power(0.5) 7%, power(2) 0.6%; on digits
the geometric target exceeds L_multi in the first 5 logged steps. Runtime about 30-60 s.
"""

import ml_collections

from mtkd_jax.experiments.common import DEFAULT_OPERATORS, load_sibling_config


def get_config(size: str = "full"):
  c = ml_collections.ConfigDict()
  c.experiment = "jensen_bound"  # module mtkd_jax.experiments.jensen_bound
  c.size = size  # "full" or "small" (fewer steps and random problems; tests and notebooks)
  c.seed = 0  # seed of the random search
  c.operators = DEFAULT_OPERATORS  # operator specs; the first must be "linear"
  c.num_random = 20000  # random problems (teachers, weights, student) in the search
  c.random_num_teachers = 3  # K of the random problems
  c.random_vocab_size = 5  # V of the random problems
  # a workdir whose checkpoints/teacher_<k> hold this digits config's trained teachers (e.g. a
  # log_loss_bound or digits run with the same teacher fields), or "" to train them here
  c.teachers_from = ""
  c.progress = True  # tqdm progress bar of the digits job
  c.digits = load_sibling_config(__file__, "digits")  # the digits job (teachers, students)
  c.digits.log_every = 5  # steps between logged batch values of L_mix, L_multi, JS
  c.digits.checkpoint_every = 1000  # only the final checkpoints
  if size == "small":
    apply_small(c)
  elif size != "full":
    raise ValueError(f"config size must be 'full' or 'small', got {size!r}")
  return c


def apply_small(c):
  """The small setting: what tests and notebooks run (MTKD_NOTEBOOK_SIZE=small)."""
  c.size = "small"
  c.operators = ("linear", "geometric", "entropic(0.5)")
  c.num_random = 2000
  c.digits.teacher_steps = 60
  c.digits.num_steps = 60
  return c
