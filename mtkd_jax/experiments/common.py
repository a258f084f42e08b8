"""Shared pieces of the guarantee experiments (paper §IV–V): operator specs, digits teachers, plots.

- `parse_operator("power(0.5)")` turns a config string into an operator, so configs can list
  parameterised families; `register_operators(specs)` makes such strings valid registry names for
  the digits job (`mtkd_jax.main.run`), which looks operators up by name.
- `train_teachers(config, workdir)` trains (or restores, from the same checkpoint names as the
  digits job) the K digits teachers of a digits config and returns their logits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

import numpy as np

from mtkd_jax import data as data_lib
from mtkd_jax import models, operators, train
from mtkd_jax import sharding as sharding_lib

# The operator families every guarantee experiment sweeps, by spec string.
DEFAULT_OPERATORS = (
  "linear",
  "geometric",
  "power(0.5)",
  "power(2)",
  "entropic(0.5)",
  "barycenter(hellinger)",
)

_PARAMETER = {"power": "alpha", "entropic": "beta", "barycenter": "divergence"}
_SPEC = re.compile(r"^([a-z_]+)(?:\((.*)\))?$")


def parse_operator(spec: str) -> Callable:
  """The operator named by `spec`: "linear", "power(0.5)", "entropic(1)", "barycenter(kl)".

  >>> parse_operator("power(2)").__name__
  'power(2)'
  """
  match = _SPEC.match(spec.replace(" ", ""))
  if match is None:
    raise ValueError(f"operator spec must look like 'name' or 'name(arg)', got {spec!r}")
  name, arg = match.groups()
  if arg is None or arg == "":
    return operators.get(name)
  if name not in _PARAMETER:
    raise ValueError(f"operator {name!r} takes no argument, got {spec!r}")
  value = arg if name == "barycenter" else float(arg)
  return operators.get(name, **{_PARAMETER[name]: value})


def check_operators(field: str, specs: Sequence[str]) -> None:
  """Raises ValueError("config.<field>: ...") if a spec does not name an operator."""
  if not specs:
    raise ValueError(f"config.{field}: need at least one operator")
  for spec in specs:
    try:
      parse_operator(spec)
    except ValueError as e:
      raise ValueError(f"config.{field}: {e}") from None


def register_operators(specs: Sequence[str]) -> None:
  """Registers each spec string as an operator name (once), so the digits job can use it."""
  for spec in specs:
    if spec not in operators.names():
      operators.register(spec, parse_operator(spec))


def load_sibling_config(config_file: str, name: str):
  """`get_config()` of experiments/configs/<name>.py, found next to `config_file`.

  Lets an experiment config embed the digits job config (`c.digits = ...`) without copying it.
  """
  import importlib.util

  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_mtkd_config_{name}", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"no config file {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def digits_job():
  """The module `mtkd_jax.main` (the digits job), also when it is the running `__main__`.

  Under `python -m mtkd_jax.main` the module runs as `__main__`; importing `mtkd_jax.main` again
  would execute its absl flag definitions a second time (DuplicateFlagError), so the running
  module is returned instead.
  """
  import importlib
  import sys

  running = sys.modules.get("__main__")
  spec = getattr(running, "__spec__", None)
  if spec is not None and spec.name == "mtkd_jax.main":
    return running
  return importlib.import_module("mtkd_jax.main")


def validate_digits(digits) -> None:
  """The digits job's own config checks (`mtkd_jax.main.validate_config`) on `config.digits`.

  Raises ValueError("config.digits.<field>: ...").
  """
  import jax

  main_lib = digits_job()
  register_operators([digits.operator, *digits.compare_operators])
  try:
    main_lib.validate_config(digits, jax.device_count())
  except ValueError as e:
    raise ValueError(str(e).replace("config.", "config.digits.", 1)) from None


def read_metrics(path: str) -> dict[str, dict[str, list]]:
  """metrics.jsonl of the digits job → {run: {field: [values by step]}} (last row per step)."""
  import json

  runs: dict[str, dict[int, dict]] = {}
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      runs.setdefault(row["run"], {})[row["step"]] = row
  out = {}
  for name, by_step in runs.items():
    steps = sorted(by_step)
    fields = {k for s in steps for k in by_step[s]} - {"run"}
    out[name] = {k: [by_step[s].get(k) for s in steps] for k in sorted(fields)}
  return out


# --------------------------------------------------------------------------------------------
# Digits teachers (the same runs, names and checkpoints as the teachers of `mtkd_jax.main.run`).
# --------------------------------------------------------------------------------------------
def train_teachers(config, workdir: str, views: Sequence[data_lib.TeacherView] | None = None):
  """Trains the digits teachers of `config` (a digits-job config) or restores them from workdir.

  Args:
    config: fields of experiments/configs/digits.py (teacher_*, batch_size, seed, data_seed, ...).
    workdir: checkpoints go to `<workdir>/checkpoints/teacher_<k>` (a rerun restores them).
    views: the teachers' views; default `data.make_teacher_views` from the config. Pass views
      with other `train_rows` to train biased teachers.

  Returns:
    `(splits, views, train_logits [K, N_train, V], test_logits [K, N_test, V])`.
  """
  mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.model)
  rules = tuple((r, tuple(s)) for r, s in config.partition_rules)
  splits = data_lib.load_digits(seed=config.data_seed)
  train_split, test_split = splits["train"], splits["test"]
  if views is None:
    views = data_lib.make_teacher_views(
      len(train_split),
      keep_fractions=tuple(config.teacher_keep_fractions),
      noises=tuple(config.teacher_noises),
      train_fractions=tuple(config.teacher_train_fractions),
      seed=config.data_seed,
    )
  train_logits, test_logits = [], []
  for k, view in enumerate(views):
    model = models.build(
      "mlp",
      in_features=data_lib.NUM_PIXELS,
      hidden=tuple(config.teacher_hidden[k]),
      num_classes=data_lib.NUM_CLASSES,
    )
    optimizer = train.make_optimizer(
      config.teacher_learning_rate,
      config.teacher_steps,
      weight_decay=config.weight_decay,
      warmup_steps=config.warmup_steps,
    )
    x_train = view.apply(train_split)  # [N, 64] the teacher's view of every training image
    state, _ = train.train(
      name=f"teacher_{k}",
      init_params=model.init,
      train_step=train.make_supervised_step(model.apply, optimizer),
      optimizer=optimizer,
      arrays={"x": x_train[view.train_rows], "y": train_split.y[view.train_rows]},
      mesh=mesh,
      partition_rules=rules,
      num_steps=config.teacher_steps,
      batch_size=config.batch_size,
      seed=config.seed + k,
      checkpoint_dir=os.path.join(workdir, "checkpoints", f"teacher_{k}"),
      checkpoint_every=config.teacher_steps,
    )
    train_logits.append(train.predict(model.apply, state.params, x_train, mesh))
    test_logits.append(train.predict(model.apply, state.params, view.apply(test_split), mesh))
  return splits, list(views), np.stack(train_logits), np.stack(test_logits)


# --------------------------------------------------------------------------------------------
# Random teachers for counterexample searches.
# --------------------------------------------------------------------------------------------
def random_teachers(seed: int, num: int, num_teachers: int, vocab_size: int):
  """`num` random problems of K teachers over V tokens, from flat to very peaked.

  Each teacher row is a Dirichlet(c) draw with c ∈ {0.1, 0.3, 1, 5} picked per teacher and
  problem (small c: near one-hot, large c: near uniform), floored at 1e-6 and renormalised so
  every log-probability is finite; weights are Dirichlet(1) per problem.

  Returns:
    `(teacher_log_probs [K, num, V] float32, weights [K, num] float32, rng)`; the numpy
    generator continues the stream (for labels or students).

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
  """Summary of a bound check over N problems, with violation = lhs − rhs per problem.

  Args:
    violation: [N] lhs − rhs; > tol is a counterexample (tol absorbs float32 rounding).
    tol: tolerance.
    inputs: `inputs(j) -> dict of arrays`, the inputs of problem j (shown for the worst one).

  Returns:
    dict with `fraction` of problems violating, `max_violation`, and `counterexample` (the
    rounded inputs of the worst problem) or None when no problem violates.
  """
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


# --------------------------------------------------------------------------------------------
# Plot helpers.
# --------------------------------------------------------------------------------------------
def pyplot():
  """matplotlib.pyplot with the Agg backend (figures are written to files, never shown)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def operator_colors(specs: Sequence[str]) -> dict[str, str]:
  """A fixed colour per operator spec, the same in every figure (whatever subset it shows)."""
  palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
  extra = ["#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
  fixed = dict(zip(DEFAULT_OPERATORS, palette, strict=True))
  others = [s for s in specs if s not in fixed]
  fixed.update({s: extra[i % len(extra)] for i, s in enumerate(others)})
  return {s: fixed[s] for s in specs}
