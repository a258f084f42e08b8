"""Anchored recursive meta-distillation on digits: contraction toward q_base (paper §IX).

q_base is the linear aggregate of the digits teachers on the training inputs. Generation 0 is a
student trained on hard labels only (over-confident, far from q_base). Generation t ≥ 1 distils a
fresh student from q_t = α q_base + (1 − α) p_{S_{t−1}} (`mtkd_jax.meta`). For several α we
record, per generation, KL(q_t ‖ q_base), the student's KL(p_{S_t} ‖ q_base), its fitting error
KL(q_t ‖ p_{S_t}), the per-step bound (1 − α) KL(p_{S_{t−1}} ‖ q_base) (which holds for any
student) and the geometric bound (1 − α)^t KL(p_{S_0} ‖ q_base) (exact students only), plus test
accuracy and log-loss. Every student of every chain uses the same initialisation and batches
(`train.train_seeds` with one seed).
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from mtkd_jax import data as data_lib
from mtkd_jax import losses, meta, models, objectives, operators, train
from mtkd_jax.experiments import common, digits, tables


def validate_config(config) -> None:
  """Raises ValueError("config.<field>: ...") for the first invalid field."""
  if not config.alphas or any(not 0.0 <= a <= 1.0 for a in config.alphas):
    raise ValueError(f"config.alphas: need values in [0, 1], got {config.alphas}")
  if config.num_generations < 1:
    raise ValueError(f"config.num_generations: must be ≥ 1, got {config.num_generations}")
  k = config.num_teachers
  for field in digits.PER_TEACHER_FIELDS:
    if len(config[field]) != k:
      raise ValueError(f"config.{field}: need one entry per teacher (K={k}), got {config[field]}")
  if config.num_steps < 1 or config.s0_steps < 1:
    raise ValueError("config.num_steps and config.s0_steps: must be ≥ 1")


def _fit_one(config, step, init, optimizer, arrays, num_steps):
  """The params of one student (seed `config.seed`) trained by `step` on `arrays`."""
  keys = jax.random.key(config.seed)[None]
  batches = {"batch_size": config.batch_size, "data_seed": config.seed}
  params, _ = train.train_seeds(
    step, init, optimizer, arrays, keys=keys, num_steps=num_steps, metrics=("loss",), **batches
  )
  return jax.tree.map(lambda p: p[0], params)


def run(config, workdir: str) -> dict:
  """Trains the teachers, S_0, and `num_generations` students per α; returns the records."""
  from tqdm import tqdm

  loop = train.Loop.from_config(config, workdir)
  splits, _, train_logits, test_logits = common.train_teachers(config, loop)
  train_split, test_split = splits["train"], splits["test"]
  k = config.num_teachers
  uniform = dict(temperatures=np.ones(k), weights=np.ones(k) / k)
  log_q_base = np.asarray(operators.linear(train_logits, **uniform))  # [N, V]
  log_q_base_test = np.asarray(operators.linear(test_logits, **uniform))
  mlp = {"in_features": data_lib.NUM_PIXELS, "num_classes": data_lib.NUM_CLASSES}
  student = models.build("mlp", hidden=tuple(config.student_hidden), **mlp)
  predict = jax.jit(student.apply)
  xy = {"x": train_split.x, "y": train_split.y}

  schedule = {"weight_decay": config.weight_decay, "warmup_steps": config.warmup_steps}
  optimizer = lambda num_steps: train.make_optimizer(config.learning_rate, num_steps, **schedule)

  # ---- Generation 0: hard labels only -------------------------------------------------------
  opt0 = optimizer(config.s0_steps)
  step0 = train.make_supervised_step(student.apply, opt0)
  s0_params = _fit_one(config, step0, student.init, opt0, xy, config.s0_steps)
  log_p0 = np.asarray(jax.nn.log_softmax(predict(s0_params, train_split.x), -1))  # [N, V]

  # ---- Generations 1..T: the same init and batches, a new target each -----------------------
  opt = optimizer(config.num_steps)
  objective = objectives.mixture(operators.linear, temperatures=[1.0])
  step = train.make_train_step(student.apply, opt, objective=objective, weights=[1.0])
  init = train.init_params(student.init)
  total = len(config.alphas) * config.num_generations
  bar = tqdm(total=total, desc="meta-distillation", file=sys.stderr, disable=not config.progress)
  test_of = lambda params: train.evaluate(np.asarray(predict(params, test_split.x)), test_split.y)
  results = {
    "config": {"alphas": list(config.alphas), "num_generations": config.num_generations},
    "base": {
      "train_kl_s0_base": float(losses.kl_divergence(log_p0, log_q_base).mean()),
      "test_q_base": train.evaluate(log_q_base_test, test_split.y),
      "test_s0": test_of(s0_params),
    },
    "chains": {},
  }
  for alpha in config.alphas:
    tests = [results["base"]["test_s0"]]

    def train_student(t, log_q_t, tests=tests):
      arrays = {**xy, "teacher_logits": np.asarray(log_q_t)[None]}  # [1, N, V]
      params = _fit_one(config, step, init, opt, arrays, config.num_steps)["student"]
      tests.append(test_of(params))
      bar.update()
      return jax.nn.log_softmax(predict(params, train_split.x), -1)

    record = meta.recursive_distillation(
      train_student, log_q_base, log_p0, alpha=float(alpha), num_generations=config.num_generations
    )
    chain = {key: np.asarray(v).tolist() for key, v in record.items()}
    chain["test_accuracy"] = [r["accuracy"] for r in tests]
    chain["test_log_loss"] = [r["log_loss"] for r in tests]
    results["chains"][f"{alpha:g}"] = chain
  bar.close()
  return results


def format_table(results: dict) -> str:
  """Per α and generation: the target's and student's KL to q_base against both bounds."""
  b = results["base"]
  lines = [
    f"Anchored recursive meta-distillation: KL(p_S0 ‖ q_base) = {b['train_kl_s0_base']:.4f} "
    f"(train); test acc/log-loss: q_base {b['test_q_base']['accuracy']:.4f}/"
    f"{b['test_q_base']['log_loss']:.4f}, S_0 {b['test_s0']['accuracy']:.4f}/"
    f"{b['test_s0']['log_loss']:.4f}",
  ]
  columns = {  # header: (key of the chain, format)
    "KL(q_t‖q_b)": ("kl_target_base", ">12.5f"),
    "(1−α)KL(S_t−1)": ("step_bound", ">15.5f"),
    "(1−α)^t KL0": ("geometric_bound", ">12.5f"),
    "KL(S_t‖q_b)": ("kl_student_base", ">12.5f"),
    "KL(q_t‖S_t)": ("kl_target_student", ">12.5f"),
    "step ok": ("step_bound_holds", ">7"),
    "geo ok": ("geometric_bound_holds", ">6"),
    "geo(mean)": ("geometric_bound_holds_mean", ">9"),
    "test acc": ("test_accuracy", ">9.4f"),
    "test LL": ("test_log_loss", ">8.4f"),
  }
  rows = [
    (alpha, t, *(c[key][t] for key, _ in columns.values()))
    for alpha, c in results["chains"].items()
    for t in range(1, len(c["kl_target_base"]))
  ]
  header = [("α", ">5"), ("t", ">2")] + [(h, spec) for h, (_, spec) in columns.items()]
  return "\n".join(lines + tables.lines(header, rows, indent="", rule=True))
