"""Default job (`make run`): three heterogeneous teachers on sklearn digits, distilled into MLPs.

    python -m mtkd_jax.main --config=experiments/configs/digits.py --workdir=runs/digits

`:small` is a quick check with fewer steps. Runtime: see the README. Writes results.json,
metrics.jsonl and checkpoints to the workdir. Override any field, e.g.
`--config.operator="power(alpha=0.5)"`, `--config.weights="(0.5,0.3,0.2)"`, `--config.mesh.model=2`.
"""

import ml_collections

from mtkd_jax import configs


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False, seed=0)
  c = ml_collections.ConfigDict()
  c.experiment = "digits"  # module mtkd_jax.experiments.digits
  c.seed = arg.seed  # seed of initialisations and batch order (each run offsets it by its index)
  c.data_seed = 0  # seed of the train/val/test split and of the teacher views

  c.num_teachers = 3  # K
  c.teacher_hidden = ((32,), (48,), (64,))  # hidden widths of teacher k's MLP
  c.teacher_keep_fractions = (0.4, 0.4, 0.4)  # fraction of pixels seen (random subset per k)
  c.teacher_noises = (0.3, 0.15, 0.0)  # std of the fixed pixel corruption of teacher k
  c.teacher_train_fractions = (0.6, 0.6, 0.6)  # fraction of train split used (subset per k)
  c.teacher_steps = 300  # update steps per teacher
  c.teacher_learning_rate = 3e-3  # AdamW peak learning rate of the teachers

  c.model = "mlp"  # registry name of the student model
  c.student_hidden = (64,)  # hidden widths of the student MLP (sees all 64 pixels)
  c.operator = "linear"  # aggregation operator spec, e.g. "power(alpha=0.5)"
  c.compare_operators = ("geometric",)  # further multi-teacher students, one per operator spec
  c.single_teacher_students = True  # also distil one student from each teacher alone
  c.loss = "mixture_kd"  # "mixture_kd" (D(q, p_S), fused kernel) or "sum_of_kls"
  c.divergence = "forward_kl"  # D of mixture_kd: "forward_kl", "reverse_kl" or "jsd(beta=0.5)"
  c.temperatures = (1.0, 1.0, 1.0)  # teacher temperatures T_k
  c.weights = (1 / 3, 1 / 3, 1 / 3)  # teacher weights w_k, summing to one
  c.student_temperature = 1.0  # T_S
  c.label_weight = 0.0  # weight a of the hard-label cross-entropy blend (0: pure KD)
  c.weighting = ""  # adaptive weighting spec of the K-teacher students, e.g. "confidence(tau=0.5)"
  c.implementation = "auto"  # "auto", "composed", or the fused kernel's "xla" / "pallas"

  c.num_steps = 400  # update steps per student
  c.batch_size = 64  # global batch size (divisible by mesh.data)
  c.learning_rate = 3e-3  # AdamW peak learning rate of the students
  c.weight_decay = 1e-4  # AdamW weight decay
  c.warmup_steps = 20  # linear warm-up steps before the cosine decay

  c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})  # -1: all remaining devices
  c.partition_rules = ((r".*/kernel$", (None, "model")), (r".*", ()))  # (path regex, spec dims)

  c.log_every = 10  # steps between host metric fetches (JSONL rows, progress bar)
  c.checkpoint_every = 100  # steps between orbax checkpoints (and always at the end)
  c.keep_checkpoints = 2  # checkpoints kept per run
  c.progress = True  # tqdm progress bar
  c.teacher_cache = ""  # teachers cached by their own config; "": $MTKD_TEACHER_CACHE or ~/.cache

  if arg.small:
    c.teacher_steps = 60
    c.num_steps = 60
  return c
