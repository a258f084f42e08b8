"""Anchored recursive meta-distillation on digits: KL(q_t ‖ q_base) against (1 − α)^t per α.

    python -m mtkd_jax.main --config=experiments/configs/meta_distillation.py \
        --workdir=runs/meta_distillation

`:small` (16 students instead of 96) is the quick setting of the tests and notebook. Runtime about
7 min on 2 busy CPU cores; writes results.json, metrics.jsonl and the teachers' checkpoints to
the workdir.
"""

import ml_collections

from mtkd_jax import configs


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False, seed=0)
  c = ml_collections.ConfigDict()
  c.experiment = "meta_distillation"  # module mtkd_jax.experiments.meta_distillation
  c.seed = arg.seed  # seed of every student's initialisation and of the batch order
  c.data_seed = 0  # seed of the split and of the teacher views
  c.progress = True  # tqdm progress bars on stderr

  c.num_teachers = 3  # K
  c.teacher_hidden = ((32,), (48,), (64,))  # hidden widths of teacher k's MLP
  c.teacher_keep_fractions = (0.4, 0.4, 0.4)  # fraction of pixels teacher k sees
  c.teacher_noises = (0.3, 0.15, 0.0)  # pixel corruption std of teacher k
  c.teacher_train_fractions = (0.6, 0.6, 0.6)  # fraction of the train split teacher k sees
  c.teacher_steps = 300  # update steps per teacher
  c.teacher_learning_rate = 3e-3  # AdamW peak learning rate of the teachers

  c.alphas = (0.0, 0.2, 0.5, 0.8)  # anchor weights α (0: plain recursive self-distillation)
  c.num_generations = 6  # generations t = 1..T after the hard-label student S_0
  c.starts = ("hard_label", "uniform", "random_network", "adversarial")  # S_0 of compared chains

  c.student_hidden = (64,)  # hidden widths of every student MLP
  c.s0_steps = 400  # update steps of the hard-label student S_0
  c.num_steps = 400  # update steps of each generation's student
  c.batch_size = 64  # batch size
  c.learning_rate = 3e-3  # AdamW peak learning rate
  c.weight_decay = 1e-4  # AdamW weight decay
  c.warmup_steps = 20  # linear warm-up steps

  c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})  # -1: all devices
  c.partition_rules = ((r".*", ()),)  # replicate everything (tiny models)

  if arg.small:
    c.teacher_steps = 60
    c.s0_steps = 60
    c.num_steps = 60
    c.alphas = (0.0, 0.5)
    c.num_generations = 2
  return c
