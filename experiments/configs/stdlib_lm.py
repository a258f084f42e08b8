"""Sparse / offline teachers on a byte-level LM over the Python standard library's `.py` files.

    python -m mtkd_jax.main --config=experiments/configs/stdlib_lm.py --workdir=runs/stdlib_lm

`:small` is the smoke test of the tests and notebook. Runtime 11-14 min on 2 CPU cores (small:
1-4 min); writes results.json, the teachers' top-k store, metrics.jsonl and checkpoints to the
workdir (the store as `python -m mtkd_jax.teachers dump` would write it).
"""

import ml_collections

from mtkd_jax import configs


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False, seed=0)
  c = ml_collections.ConfigDict()
  c.experiment = "stdlib_lm"  # module mtkd_jax.experiments.stdlib_lm
  c.seed = arg.seed  # seed of initialisations and batch orders
  c.data_seed = 0  # seed of the training windows

  # (family name, top-level packages/modules); "*" takes every file not listed elsewhere.
  tools = ("idlelib", "tkinter", "turtledemo", "turtle.py", "lib2to3", "distutils", "pydoc.py")
  tools += ("ensurepip", "venv", "curses")
  c.families = (("tests", ("test", "unittest")), ("tools", tools), ("core", ("*",)))
  c.exclude = ("encodings", "pydoc_data")  # top-level names left out (data tables, not code)
  c.test_fraction = 0.1  # fraction of files held out (CRC-32 of the path)
  c.seq_len = 128  # bytes per training/eval window (the model's context)
  c.eval_windows = 256  # held-out windows per family (evenly spaced over its test bytes)

  c.depth = 2  # Transformer blocks
  c.width = 128  # model width
  c.num_heads = 4  # attention heads

  c.teacher_steps = 400  # update steps per teacher (on its own family)
  c.teacher_learning_rate = 3e-3  # AdamW peak learning rate

  c.store = ml_collections.ConfigDict()
  c.store.k = 64  # stored top-k (smaller k are its prefixes)
  c.store.dtype = "bfloat16"  # log-probs: "bfloat16", "float16" or "log8" (8-bit codes)
  c.store.generation_temperature = 1.0  # T_g of the stored log-probs (all teachers)
  c.store.batch_size = 32  # rows per teacher call while dumping
  c.store.windows = 3072  # student training windows (an equal share from each family)

  c.k_values = (4, 16, 64)  # top-k of the sparse students (≤ store.k)
  c.tail_modes = ("drop", "uniform", "bucket")  # sparse.TAIL_MODES to compare
  c.operator = "linear"  # sparse/dense aggregation: "linear" or "geometric"
  c.dense_student = True  # also distil from the dense teachers (run inside the step)
  c.label_student = True  # also train a hard-label (cross-entropy only) baseline student
  c.temperatures = (1.0, 1.0, 1.0)  # training temperatures T_k (re-tempered from T_g)
  c.weights = (1 / 3, 1 / 3, 1 / 3)  # teacher weights w_k
  c.student_temperature = 1.0  # T_S
  c.student_steps = 400  # update steps per student (about 2 epochs of store.windows)
  c.learning_rate = 3e-3  # AdamW peak learning rate of the students

  c.batch_size = 16  # global batch size (windows per step; divisible by mesh.data)
  c.weight_decay = 1e-4  # AdamW weight decay
  c.warmup_steps = 20  # linear warm-up steps before the cosine decay

  c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})  # -1: all remaining devices
  c.partition_rules = ((r".*", ()),)  # replicate parameters (small models; data parallel)
  c.log_every = 25  # steps between host metric fetches
  c.checkpoint_every = 1000  # steps between orbax checkpoints (and always at the end)
  c.keep_checkpoints = 1  # checkpoints kept per run
  c.progress = True  # tqdm progress bar on stderr

  if arg.small:
    c.seq_len = 32
    c.eval_windows = 16
    c.depth = 1
    c.width = 32
    c.num_heads = 2
    c.teacher_steps = 12
    c.student_steps = 8
    c.batch_size = 8
    c.warmup_steps = 2
    c.log_every = 4
    c.k_values = (4, 16)
    c.store.k = 16
    c.store.windows = 48
    c.store.batch_size = 48
  return c
