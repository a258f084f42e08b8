"""Prop V.2, finite-sample approximation: with enough capacity, KL(q ‖ p_S) → 0 on N points.

Targets q from K random teachers (nothing to learn but memorisation); one-hidden-layer students
of growing width, full-batch, seeds vmapped; the final KL should collapse once the parameter
count passes the N·(V − 1) numbers that define the targets.
"""

import jax
import numpy as np
from tqdm import tqdm

from mtkd_jax import data as data_lib
from mtkd_jax import losses, models, objectives, operators, train
from mtkd_jax.experiments import common, tables


def validate_config(config) -> None:
  common.check_numbers(
    config,
    positive_ints="widths num_points num_teachers num_steps num_seeds",
    non_negative_ints="seed",
    positive="teacher_scale learning_rate",
  )
  common.require(config.widths, "widths", "need at least one hidden width")
  ok = config.num_points <= 1079
  common.require(ok, "num_points", f"at most 1079 (digits train split), got {config.num_points}")


def problem(config):
  """The N fixed points: inputs x [N, 64], teacher logits [K, N, V], target log q [N, V]."""
  x = data_lib.load_digits(seed=config.seed)["train"].x[: config.num_points]  # [N, 64]
  rng = np.random.default_rng([config.seed, 5])
  shape = (config.num_points, config.num_teachers, data_lib.NUM_CLASSES)
  teacher_logits = (config.teacher_scale * rng.standard_normal(shape)).astype(np.float32)
  teacher_logits = np.moveaxis(teacher_logits, 1, 0)  # [K, N, V], drawn [N, K, V]
  weights = np.full(config.num_teachers, 1.0 / config.num_teachers, np.float32)
  ones = np.ones(config.num_teachers)
  log_q = operators.linear(teacher_logits, temperatures=ones, weights=weights)  # [N, V]
  return x, teacher_logits, weights, np.asarray(log_q)


def fit(config, width: int, x, teacher_logits, weights, log_q) -> dict:
  """Trains `num_seeds` students of one width (`train.train_seeds`) for `num_steps` full-batch
  steps; the final KL is measured on the returned parameters."""
  mlp = {"in_features": x.shape[1], "num_classes": data_lib.NUM_CLASSES}
  model = models.build("mlp", hidden=(width,), **mlp)
  optimizer = train.make_optimizer(config.learning_rate, config.num_steps, warmup_steps=20)
  temperatures = np.ones(config.num_teachers)
  objective = objectives.mixture(operators.linear, temperatures=temperatures, implementation="xla")
  step = train.make_train_step(model.apply, optimizer, objective=objective, weights=weights)
  arrays = {"x": x, "y": log_q.argmax(-1).astype(np.int32), "teacher_logits": teacher_logits}
  keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
  init, logged = train.init_params(model.init), ("kl_q_student",)
  params, metrics = train.train_seeds(
    step, init, optimizer, arrays, keys=keys, num_steps=config.num_steps, metrics=logged
  )
  final_kl = jax.jit(jax.vmap(lambda p: losses.mixture_kd(model.apply(p, x), log_q)))
  final = final_kl(params["student"])  # [S, N]
  num_params = sum(p.size for p in jax.tree.leaves(jax.eval_shape(model.init, keys[0])))
  every = max(1, config.num_steps // 100)
  return {
    "width": width,
    "num_params": int(num_params),
    "final_kl": np.asarray(final.mean(axis=1)).tolist(),  # [seeds] mean over the N points
    "final_max_kl": np.asarray(final.max(axis=1)).tolist(),  # [seeds] worst point
    "curve_steps": list(range(0, config.num_steps, every)),
    # batch KL(q ‖ p_S) before each step, mean over seeds
    "curve": metrics["kl_q_student"][:, ::every].mean(axis=0).tolist(),
  }


def run(config, workdir: str) -> dict:
  """Sweeps the student width; returns the final KL per width and seed."""
  del workdir
  x, teacher_logits, weights, log_q = problem(config)
  rows = []
  for width in tqdm(config.widths, disable=not config.progress, desc="widths"):
    rows.append(fit(config, width, x, teacher_logits, weights, log_q))
  return {
    "num_points": config.num_points,
    "vocab_size": data_lib.NUM_CLASSES,
    "target_dof": config.num_points * (data_lib.NUM_CLASSES - 1),  # N·(V − 1)
    "target_entropy": float(-(np.exp(log_q) * log_q).sum(-1).mean()),
    "rows": rows,
  }


def format_table(results: dict) -> str:
  """Final KL(q ‖ p_S) per width."""
  columns = [("width", ">6"), ("params", ">8"), ("mean KL(q‖p_S)", ">15.3e")]
  columns += [("± over seeds", ">12.1e"), ("worst point", ">12.3e")]
  kl = lambda r: np.asarray(r["final_kl"])
  rows = [
    (r["width"], r["num_params"], kl(r).mean(), kl(r).std(), max(r["final_max_kl"]))
    for r in results["rows"]
  ]
  title = (
    f"Prop V.2: N={results['num_points']} points, V={results['vocab_size']}, "
    f"N·(V−1)={results['target_dof']} target degrees of freedom; mean H(q) = "
    f"{results['target_entropy']:.3f} nats"
  )
  return "\n".join([title, *tables.lines(columns, rows, indent="")])
