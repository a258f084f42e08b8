"""Multi-teacher distillation on a byte-level LM over the Python standard library's `.py` files.

    python -m mtkd_jax.main --config=experiments/configs/stdlib_lm.py --workdir=runs/stdlib_lm

Three specialised teachers, larger and trained longer than the student (cached: trained once per
machine), and a smaller student with a fixed budget of steps, trained from each target over
`num_seeds` seeds. The teachers' specialisation (`teacher.own_fraction`) and the blend
(`label_weight`) were chosen with `--config.eval_split=validation` (files carved from the training
files), never on the test split; sizes and budgets were set by the time budget. Runtime 8-20
min on 2 shared CPU cores with the teachers cached (about 5 min more to train them); `:small`, the
smoke test of the tests and notebook, 2-5 min. Writes results.json, the teachers' top-k store,
metrics.jsonl and checkpoints to the workdir (the store as `python -m mtkd_jax.teachers dump`
would write it).
"""

import ml_collections

from mtkd_jax import configs


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False, seed=0)
  c = ml_collections.ConfigDict()
  c.experiment = "stdlib_lm"  # module mtkd_jax.experiments.stdlib_lm
  c.seed = arg.seed  # seed of the teachers' initialisations; students: seed + 100 + s
  c.data_seed = 0  # seed of the training windows
  c.num_seeds = 3  # students per target (initialisation and batch order), mean ± s.e.

  # (family name, top-level packages/modules); "*" takes every file not listed elsewhere.
  tools = ("idlelib", "tkinter", "turtledemo", "turtle.py", "lib2to3", "distutils", "pydoc.py")
  tools += ("ensurepip", "venv", "curses")
  c.families = (("tests", ("test", "unittest")), ("tools", tools), ("core", ("*",)))
  c.exclude = ("encodings", "pydoc_data")  # top-level names left out (data tables, not code)
  c.test_fraction = 0.1  # fraction of files held out for the test split (CRC-32 of the path)
  c.validation_fraction = 0.1  # fraction of the other files carved off for validation
  c.eval_split = "test"  # "validation" (choosing sizes, budgets, blend) or "test" (reporting)
  c.seq_len = 64  # bytes per training/eval window (the models' context)
  c.eval_windows = 512  # held-out windows per family (evenly spaced over its bytes)

  # The teachers: one per family, trained on `own_fraction` of its windows from its family.
  c.teacher = ml_collections.ConfigDict()
  c.teacher.depth = 2  # Transformer blocks
  c.teacher.width = 96  # model width
  c.teacher.num_heads = 4  # attention heads
  c.teacher.steps = 400  # update steps per teacher
  c.teacher.batch_size = 32  # windows per step
  c.teacher.own_fraction = 0.9  # share of its own family in a teacher's windows
  c.teacher.learning_rate = 3e-3  # AdamW peak learning rate

  # The student: smaller, trained on every family with a fixed budget of steps.
  c.depth = 1  # Transformer blocks
  c.width = 32  # model width
  c.num_heads = 2  # attention heads
  c.student_steps = 200  # update steps per student
  c.batch_size = 16  # windows per step (divisible by mesh.data)
  c.learning_rate = 3e-3  # AdamW peak learning rate of the students

  c.store = ml_collections.ConfigDict()
  c.store.k = 64  # stored top-k (smaller k are its prefixes)
  c.store.dtype = "bfloat16"  # log-probs: "bfloat16", "float16" or "log8" (8-bit codes)
  c.store.generation_temperature = 1.0  # T_g of the stored log-probs (all teachers)
  c.store.batch_size = 32  # rows per teacher call while dumping
  c.store.windows = 3198  # student windows, an equal share per family (~1 epoch of steps)

  # Where the distilled students' teachers come from: "online" (run inside the step; students
  # without a label blend or adaptive weights, with the linear or geometric operator, take the
  # teachers' hidden states and heads: the output projections are fused with the loss, token
  # chunk by token chunk) or "store" (the top-store.k of the store, tail mode store.tail_mode;
  # needs adaptive = ""). The top-k rows (k_values x tail_modes) always read the store.
  c.teachers = "online"
  c.store.tail_mode = "bucket"  # tail mode of the students with teachers = "store"

  # Students (every one over num_seeds seeds; same init and batches per seed).
  c.label_student = True  # hard labels (cross-entropy only)
  c.single_teacher_students = True  # one student per teacher alone (online)
  c.dense_operators = ("linear", "geometric")  # K-teacher mixtures of the online teachers
  c.divergences = ("reverse_kl", "jsd(beta=0.5)")  # linear mixture, against forward KL
  c.label_weight = 0.25  # a label/KD blend a·CE + (1 − a)·KD (linear mixture); 0: none
  c.adaptive = "label_aware(tau=1.0)"  # adaptive weighting (mtkd_jax.weighting); "": none
  c.k_values = (4, 16, 64)  # top-k of the store students (≤ store.k)
  c.tail_modes = ("drop", "uniform", "bucket")  # sparse.TAIL_MODES to compare
  c.operator = "linear"  # operator of the store students
  c.temperatures = (1.0, 1.0, 1.0)  # training temperatures T_k (re-tempered from T_g)
  c.weights = (1 / 3, 1 / 3, 1 / 3)  # teacher weights w_k
  c.student_temperature = 1.0  # T_S

  c.weight_decay = 1e-4  # AdamW weight decay
  c.warmup_steps = 20  # linear warm-up steps before the cosine decay

  c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})  # -1: all remaining devices
  c.partition_rules = ((r".*", ()),)  # replicate parameters (small models; data parallel)
  c.log_every = 25  # steps between host metric fetches
  c.checkpoint_every = 1000  # steps between orbax checkpoints (and always at the end)
  c.keep_checkpoints = 1  # checkpoints kept per run
  c.progress = True  # tqdm progress bar on stderr

  if arg.small:
    c.num_seeds = 2
    c.seq_len = 32
    c.eval_windows = 16
    c.teacher.depth = 1
    c.teacher.width = 32
    c.teacher.num_heads = 2
    c.teacher.steps = 12
    c.teacher.batch_size = 8
    c.depth = 1
    c.width = 16
    c.num_heads = 2
    c.student_steps = 8
    c.batch_size = 8
    c.warmup_steps = 2
    c.log_every = 4
    c.dense_operators = ("linear",)
    c.divergences = ("jsd(beta=0.5)",)
    c.k_values = (4,)
    c.tail_modes = ("drop", "bucket")
    c.store.k = 16
    c.store.windows = 48
    c.store.batch_size = 48
  return c
