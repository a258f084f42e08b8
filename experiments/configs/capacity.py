"""Prop V.2 capacity: final KL(q ‖ p_S) on N fixed points as the student MLP widens.

    python -m mtkd_jax.main --config=experiments/configs/capacity.py --workdir=runs/capacity

`:small` runs three widths, fewer steps and seeds. Runtime 10 s (small) to about a minute; writes
results.json to the workdir. Expected: the KL collapses once the parameters pass N·(V − 1).
"""

import ml_collections

from mtkd_jax import configs


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.experiment = "capacity"  # module mtkd_jax.experiments.capacity
  c.seed = 0  # seed of the targets and of the student initialisations
  c.num_points = 128  # N fixed training points (first N digits of the train split)
  c.num_teachers = 3  # K random teachers per point, mixed linearly with uniform weights
  c.teacher_scale = 2.0  # std of the random teacher logits (larger: peakier targets)
  c.widths = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # hidden widths of the student MLP
  c.num_steps = 2000  # full-batch AdamW steps
  c.learning_rate = 1e-2  # peak learning rate (warm-up then cosine decay)
  c.num_seeds = 3  # initialisation seeds, vmapped
  c.progress = True  # tqdm progress bar over widths
  if arg.small:
    c.widths = (2, 32, 256)
    c.num_steps = 600
    c.num_seeds = 2
  return c
