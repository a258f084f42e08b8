"""Prop V.2 capacity: final KL(q ‖ p_S) on N fixed points as the student MLP widens.

    python -m mtkd_jax.main --config=experiments/configs/capacity.py \
        --workdir=runs/capacity

or `--config=experiments/configs/capacity.py:small` for the small setting.

N = 128 digits images with random-teacher mixture targets q (no learnable structure); one hidden
layer of width 1..256, full-batch Adam, 3 seeds vmapped. Measured: the final mean KL falls from
0.38 (width 1, 85 params) through 0.036 (width 16, 1210 params ≈ N·(V−1) = 1152) to 1.5e-4
(width 64) and 8e-6 (width 256). Runtime about 25-60 s (small: ~10 s).
"""

import ml_collections


def get_config(size: str = "full"):
  c = ml_collections.ConfigDict()
  c.experiment = "capacity"  # module mtkd_jax.experiments.capacity
  c.size = size  # "full" or "small" (three widths, fewer steps)
  c.seed = 0  # seed of the targets and of the student initialisations
  c.num_points = 128  # N fixed training points (first N digits of the train split)
  c.num_teachers = 3  # K random teachers per point, mixed linearly with uniform weights
  c.teacher_scale = 2.0  # std of the random teacher logits (larger: peakier targets)
  c.widths = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # hidden widths of the student MLP
  c.num_steps = 2000  # full-batch AdamW steps
  c.learning_rate = 1e-2  # peak learning rate (warm-up then cosine decay)
  c.num_seeds = 3  # initialisation seeds, vmapped
  c.progress = True  # tqdm progress bar over widths
  if size == "small":
    apply_small(c)
  elif size != "full":
    raise ValueError(f"config size must be 'full' or 'small', got {size!r}")
  return c


def apply_small(c):
  """The small setting: what tests and notebooks run (MTKD_NOTEBOOK_SIZE=small)."""
  c.size = "small"
  c.widths = (2, 32, 256)
  c.num_steps = 600
  c.num_seeds = 2
  return c
