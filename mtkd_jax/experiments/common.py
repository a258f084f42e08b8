"""Shared pieces of the experiments (paper §IV–VI): config checks, digits teachers (trained or
restored from the teacher cache) and students, seed summaries, random counterexample searches."""

import copy
import hashlib
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import checkpoints, models, registry, train
from mtkd_jax import data as data_lib
from mtkd_jax import sharding as sharding_lib

# The operator families every guarantee experiment sweeps, by registry spec.
DEFAULT_OPERATORS = (
  "linear",
  "geometric",
  "power(alpha=0.5)",
  "power(alpha=2)",
  "entropic(beta=0.5)",
  "barycenter(divergence='hellinger')",
)


def require(ok, field: str, message: str) -> None:
  """Raises `ValueError("config.<field>: <message>")` unless `ok`."""
  if not ok:
    raise ValueError(f"config.{field}: {message}")


def check_lengths(config, fields, k: int, what: str = "one entry per teacher") -> None:
  """Each of `fields` holds `k` entries, else `ValueError("config.<field>: need <what> ...")`."""
  for field in fields:
    require(len(config[field]) == k, field, f"need {what} (K={k}), got {config[field]}")


def check_field(field: str, fn: Callable) -> None:
  """Runs `fn()`; a ValueError or TypeError becomes `ValueError("config.<field>: ...")`."""
  try:
    fn()
  except (ValueError, TypeError) as e:
    raise ValueError(f"config.{field}: {str(e).splitlines()[0]}") from None


def check_numbers(config, **kinds: str) -> None:
  """Checks the fields named (space-separated, dotted for nested ones) under each kind:
  positive_ints, non_negative_ints, positive, non_negative, fractions (in (0, 1]), unit (in
  [0, 1]); each field is a finite number of its kind (a sequence: each entry), else
  `ValueError("config.<field>: must be ..., got ...")`.

  >>> check_numbers({"lr": 0.0}, positive="lr")
  Traceback (most recent call last):
  ValueError: config.lr: must be a finite number > 0, got 0.0
  """
  rules = {
    "positive_ints": (lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
    "non_negative_ints": (lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
    "positive": (lambda v: np.isfinite(v) and v > 0, "a finite number > 0"),
    "non_negative": (lambda v: np.isfinite(v) and v >= 0, "a finite number >= 0"),
    "fractions": (lambda v: np.isfinite(v) and 0 < v <= 1, "a fraction in (0, 1]"),
    "unit": (lambda v: np.isfinite(v) and 0 <= v <= 1, "a number in [0, 1]"),
  }
  for kind, fields in kinds.items():
    ok, what = rules[kind]
    for field in fields.split():
      value = config
      for key in field.split("."):
        value = value[key]
      for v in value if isinstance(value, list | tuple) else [value]:
        if isinstance(v, bool) or not isinstance(v, int | float) or not ok(v):
          raise ValueError(f"config.{field}: must be {what}, got {value!r}")


def check_random_search(config, **kinds: str) -> None:
  """`check_numbers` of a random search's seed, num_random and random_* sizes (and `kinds`)."""
  sizes = "num_random random_num_teachers random_vocab_size"
  check_numbers(config, positive_ints=sizes, non_negative_ints="seed", **kinds)


def check_operators(field: str, specs: Sequence[str], *, allow_empty: bool = False) -> None:
  """Raises ValueError("config.<field>: ...") if a spec does not name an operator."""
  require(specs or allow_empty, field, "need at least one operator")
  for spec in specs:
    check_field(field, lambda spec=spec: registry.check("operator", spec))


def check_mesh(config, num_devices: int) -> None:
  """`config.mesh` against the devices, and `config.batch_size` against its data axis."""
  check_field(
    "mesh", lambda: sharding_lib.check_mesh_config(config.mesh.data, config.mesh.model, num_devices)
  )
  data = num_devices // config.mesh.model if config.mesh.data == -1 else config.mesh.data
  ok = config.batch_size >= 1 and not config.batch_size % data
  require(ok, "batch_size", f"{config.batch_size} must be a positive multiple of mesh data={data}")
  for regex, _ in config.get("partition_rules", ()):
    check_field("partition_rules", lambda regex=regex: re.compile(regex))


def read_metrics(path: str) -> dict[str, dict[str, list]]:
  """A job's metrics.jsonl → {run: {field: [values by step, None where unlogged]}} (last row per
  step); a cut-off or damaged line is skipped with a warning (`checkpoints.read_rows`)."""
  runs: dict[str, dict[int, dict]] = {}
  for row in checkpoints.read_rows(path):
    runs.setdefault(row["run"], {})[row["step"]] = row
  out = {}
  for name, by_step in runs.items():
    steps = sorted(by_step)
    fields = {k for s in steps for k in by_step[s]} - {"run"}
    out[name] = {k: [by_step[s].get(k) for s in steps] for k in sorted(fields)}
  return out


def optimizer(config, learning_rate: float, num_steps: int):
  """AdamW (warm-up, cosine decay) with the config's `weight_decay` and `warmup_steps`."""
  schedule = {"weight_decay": config.weight_decay, "warmup_steps": config.warmup_steps}
  return train.make_optimizer(learning_rate, num_steps, **schedule)


def digits_model(hidden, name: str = "mlp") -> models.FunctionalModel:
  """Registry model `name` from the 64 digits pixels to the 10 classes."""
  shape = {"in_features": data_lib.NUM_PIXELS, "num_classes": data_lib.NUM_CLASSES}
  return models.build(name, hidden=tuple(hidden), **shape)


def digits_job(config, specs, **fields):
  """A copy of the embedded `config.digits` with one student per operator spec and `fields`."""
  c = copy.deepcopy(config.digits)
  c.operator, c.compare_operators, c.progress = specs[0], tuple(specs[1:]), config.progress
  c.update(fields)
  return c


def seed_summary(evals) -> dict[str, float]:
  """Mean and std over seeds of `train.evaluate` dicts: accuracy(_std), log_loss(_std)."""
  out = {}
  for key in ("accuracy", "log_loss"):
    values = np.array([e[key] for e in evals])
    out[key], out[f"{key}_std"] = float(values.mean()), float(values.std())
  return out


def average_teacher(teacher_logits, labels, weights) -> dict[str, float]:
  """The average teacher of Cor IV.10 under per-example weights [K, N]: Σ_k w_k accuracy_k and
  Σ_k w_k log-loss_k per example, averaged over the N examples (teacher logits [K, N, V])."""
  log_p = np.asarray(jax.nn.log_softmax(jnp.asarray(teacher_logits, jnp.float32), -1))
  nll = -np.take_along_axis(log_p, np.asarray(labels)[None, :, None], -1)[..., 0]  # [K, N]
  correct = log_p.argmax(-1) == labels  # [K, N]
  w = np.asarray(weights, np.float64)
  return {
    "accuracy": float((w * correct).sum(0).mean()),
    "log_loss": float((w * nll).sum(0).mean()),
  }


def teacher_views(config, num_examples: int) -> list[data_lib.TeacherView]:
  """The K teachers' views (pixels, noise, training rows) of a digits config."""
  return data_lib.make_teacher_views(
    num_examples,
    keep_fractions=tuple(config.teacher_keep_fractions),
    noises=tuple(config.teacher_noises),
    train_fractions=tuple(config.teacher_train_fractions),
    seed=config.data_seed,
  )


def train_teachers(config, loop: train.Loop, views: Sequence[data_lib.TeacherView] | None = None):
  """Trains the digits teachers of `config` (a digits config), or restores them from the teacher
  cache (`train.cached_run`: each teacher keyed by its own data, model, optimizer and seed, so
  jobs and workdirs that share a teacher train it once).

  Args:
    config: fields of experiments/configs/digits.py (teacher_*, batch_size, seed, data_seed, ...).
    loop: the job's `train.Loop`.
    views: the teachers' views; default `data.make_teacher_views` from the config. Pass views
      with other `train_rows` to train biased teachers.

  Returns:
    `(splits, views, train_logits [K, N_train, V], test_logits [K, N_test, V])`.
  """
  splits = data_lib.load_digits(seed=config.data_seed)
  train_split, test_split = splits["train"], splits["test"]
  if views is None:
    views = teacher_views(config, len(train_split))
  opt = optimizer(config, config.teacher_learning_rate, config.teacher_steps)
  fields = ("teacher_learning_rate", "teacher_steps", "weight_decay", "warmup_steps", "batch_size")
  train_logits, test_logits = [], []
  for k, view in enumerate(views):
    model = digits_model(config.teacher_hidden[k])
    x_train = view.apply(train_split)  # [N, 64] the teacher's view of every training image
    arrays = {"x": x_train[view.train_rows], "y": train_split.y[view.train_rows]}
    data = b"".join(np.ascontiguousarray(a).data for a in arrays.values())
    key = {  # all that determines the teacher: its data, model, optimizer, steps and seed
      "data": hashlib.sha256(data).hexdigest(),
      "hidden": list(config.teacher_hidden[k]),
      **{f: config[f] for f in fields},
      "seed": config.seed + k,
    }
    with train.cached_run(loop, f"teacher_{k}", key) as teacher_loop:
      state, _ = train.train(
        f"teacher_{k}",
        init_params=model.init,
        train_step=train.make_supervised_step(model.apply, opt),
        optimizer=opt,
        arrays=arrays,
        num_steps=config.teacher_steps,
        batch_size=config.batch_size,
        seed=config.seed + k,
        loop=teacher_loop,
        checkpoint_every=config.teacher_steps,  # teachers are cached, not resumed mid-way
      )
    train_logits.append(train.predict(model.apply, state.params, x_train, loop.mesh))
    test_logits.append(train.predict(model.apply, state.params, view.apply(test_split), loop.mesh))
  return splits, list(views), np.stack(train_logits), np.stack(test_logits)


def random_teachers(seed: int, num: int, num_teachers: int, vocab_size: int):
  """`num` random problems of K teachers over V tokens, from flat to very peaked: rows are
  Dirichlet(c) draws, c ∈ {0.1, 0.3, 1, 5} per teacher and problem, floored at 1e-6; weights
  Dirichlet(1). Returns `(log_probs [K, num, V], weights [K, num], rng)` (float32; the generator
  continues the stream).

  >>> lp, w, _ = random_teachers(0, 4, 3, 5)
  >>> lp.shape, w.shape
  ((3, 4, 5), (3, 4))
  """
  rng = np.random.default_rng(seed)
  conc = rng.choice(np.array([0.1, 0.3, 1.0, 5.0]), size=(num_teachers, num, 1))
  p = rng.gamma(np.broadcast_to(conc, (num_teachers, num, vocab_size)))  # [K, N, V]
  p = p / p.sum(-1, keepdims=True)
  p = np.maximum(p, 1e-6)
  p = p / p.sum(-1, keepdims=True)
  weights = rng.dirichlet(np.ones(num_teachers), size=num).T  # [K, N]
  return np.log(p).astype(np.float32), weights.astype(np.float32), rng


def worst_case(violation: np.ndarray, tol: float, inputs: Callable[[int], dict]) -> dict:
  """A bound check over N problems, violation [N] = lhs − rhs (> tol: a counterexample):
  the `fraction` violating, `max_violation`, and `counterexample`, the rounded `inputs(j)` of the
  worst problem j (None when none violates)."""
  violation = np.asarray(violation, np.float64)
  j = int(np.argmax(violation))
  bad = violation > tol
  example = None
  if bad.any():
    sig4 = np.vectorize(lambda x: float(f"{x:.4g}"))  # 4 significant digits: tiny p stay visible
    example = {k: sig4(np.asarray(v, np.float64)).tolist() for k, v in inputs(j).items()}
  return {
    "fraction": float(bad.mean()),
    "max_violation": float(violation[j]),
    "counterexample": example,
  }
