"""Anchored recursive meta-distillation on digits: contraction toward q_base (paper §IX).

Generation 0 is a hard-label student; generation t distils a fresh student from q_t = α q_base +
(1 − α) p_{S_{t−1}} (`mtkd_jax.meta`), q_base the teachers' linear aggregate. Per α and
generation: the KLs to q_base and the fitting error against the per-step bound (1 − α)
KL(p_{S_{t−1}} ‖ q_base) and the geometric bound (1 − α)^t KL(p_{S_0} ‖ q_base); then the same
chains from other starts (the fixed point). All students share initialisation and batches.
"""

import sys

import jax
import numpy as np

from mtkd_jax import losses, meta, objectives, operators, train
from mtkd_jax.experiments import common, digits, tables

STARTS = ("hard_label", "uniform", "random_network", "adversarial")


def validate_config(config) -> None:
  common.check_numbers(
    config,
    positive_ints="num_teachers teacher_steps num_generations s0_steps num_steps batch_size",
    non_negative_ints="seed data_seed warmup_steps",
    positive="teacher_learning_rate learning_rate",
    non_negative="weight_decay teacher_noises",
    fractions="teacher_keep_fractions teacher_train_fractions",
    unit="alphas",
  )
  common.require(config.alphas, "alphas", "need at least one α")
  common.check_lengths(config, digits.PER_TEACHER_FIELDS, config.num_teachers)
  for name in config.starts:
    common.require(name in STARTS, "starts", f"unknown start {name!r}; valid: {STARTS}")
  unique = len(set(config.starts)) == len(config.starts)
  common.require(unique, "starts", f"duplicates in {config.starts}")


def _starting_students(config, student, x, log_p0, log_q_base) -> dict[str, np.ndarray]:
  """Log-probabilities [N, V] of the generation-0 students of `config.starts`: hard_label (S_0),
  uniform, random_network (a random student's logits × 5: confidently arbitrary), adversarial
  (0.9 on the class q_base finds least likely: about the largest KL to q_base)."""
  n, v = log_q_base.shape
  random_params = student.init(jax.random.key(config.seed + 1000))
  adversarial = np.full((n, v), 0.1 / (v - 1))
  adversarial[np.arange(n), np.argmin(log_q_base, -1)] = 0.9
  every = {
    "hard_label": log_p0,
    "uniform": np.full((n, v), -np.log(v)),
    "random_network": jax.nn.log_softmax(5.0 * student.apply(random_params, x), -1),
    "adversarial": np.log(adversarial),
  }
  return {name: np.asarray(every[name], np.float32) for name in config.starts}


def _start_record(log_q_base, targets, students) -> dict:
  """Per generation t (index 0: the start): KL(p_{S_t} ‖ q_base) and the drift KL(p_{S_0} ‖
  p_{S_t}); per t ≥ 1 the fitting error KL(q_t ‖ p_{S_t}) and its running sum."""
  fit = [meta.mean_kl(q, p) for q, p in zip(targets, students[1:], strict=True)]
  return {
    "kl_student_base": [meta.mean_kl(p, log_q_base) for p in students],
    "kl_start_student": [meta.mean_kl(students[0], p) for p in students],
    "kl_target_student": [float("nan"), *fit],
    "cumulative_fit_error": [0.0, *np.cumsum(fit).tolist()],
  }


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
  student = common.digits_model(config.student_hidden)
  predict = jax.jit(student.apply)
  xy = {"x": train_split.x, "y": train_split.y}

  # Generation 0: hard labels only.
  opt0 = common.optimizer(config, config.learning_rate, config.s0_steps)
  step0 = train.make_supervised_step(student.apply, opt0)
  s0_params = _fit_one(config, step0, student.init, opt0, xy, config.s0_steps)
  log_p0 = np.asarray(jax.nn.log_softmax(predict(s0_params, train_split.x), -1))  # [N, V]

  # Generations 1..T: the same init and batches, a new target each.
  opt = common.optimizer(config, config.learning_rate, config.num_steps)
  objective = objectives.mixture(operators.linear, temperatures=[1.0])
  step = train.make_train_step(student.apply, opt, objective=objective, weights=[1.0])
  init = train.init_params(student.init)
  total = len(config.alphas) * config.num_generations * len({*config.starts, "hard_label"})
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

  def chain(alpha, log_start, tests):
    """One chain from `log_start`: the record, and the targets and students per generation."""
    targets, students = [], [np.asarray(log_start)]

    def train_student(t, log_q_t):
      arrays = {**xy, "teacher_logits": np.asarray(log_q_t)[None]}  # [1, N, V]
      params = _fit_one(config, step, init, opt, arrays, config.num_steps)["student"]
      tests.append(test_of(params))
      bar.update()
      targets.append(np.asarray(log_q_t))
      students.append(np.asarray(jax.nn.log_softmax(predict(params, train_split.x), -1)))
      return students[-1]

    generations = {"alpha": float(alpha), "num_generations": config.num_generations}
    record = meta.recursive_distillation(train_student, log_q_base, log_start, **generations)
    return record, targets, students

  finals = {}  # alpha -> start -> (targets, students)
  for alpha in config.alphas:
    tests = [results["base"]["test_s0"]]
    record, targets, students = chain(alpha, log_p0, tests)
    finals[f"{alpha:g}"] = {"hard_label": (targets, students)}
    chain_record = {key: np.asarray(v).tolist() for key, v in record.items()}
    chain_record["test_accuracy"] = [r["accuracy"] for r in tests]
    chain_record["test_log_loss"] = [r["log_loss"] for r in tests]
    results["chains"][f"{alpha:g}"] = chain_record

  # The fixed point: the same chains from other starting students.
  starts = _starting_students(config, student, train_split.x, log_p0, log_q_base)
  results["starts"] = {name: {} for name in starts}
  for name, log_start in starts.items():
    for alpha in config.alphas:
      if name != "hard_label":
        finals[f"{alpha:g}"][name] = chain(alpha, log_start, [])[1:]
      record = _start_record(log_q_base, *finals[f"{alpha:g}"][name])
      results["starts"][name][f"{alpha:g}"] = record
  results["fixed_point"] = {
    a: meta.fixed_point_agreement(float(a), log_q_base, by_start) for a, by_start in finals.items()
  }
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
  lines += tables.lines(header, rows, indent="", rule=True)
  if "fixed_point" in results:
    starts = ", ".join(next(iter(results["fixed_point"].values()))["starts"])
    lines += [
      "",
      f"Fixed point: chains from {starts}; TV between chains' students (max over pairs) per",
      "generation, the measured per-generation contraction against 1 − α, and the largest KL",
      "between two chains' final targets and students (and between their starts).",
      f"{'α':>5} {'TV_0':>7} {'TV_T':>8} {'rate':>6} {'1−α':>5} {'KL q_T':>9} {'KL S_T':>9} "
      f"{'KL S_0':>8}  drift KL(S_0‖S_T) per start",
      "-" * 100,
    ]
    for alpha, f in results["fixed_point"].items():
      drift = ", ".join(
        f"{n} {results['starts'][n][alpha]['kl_start_student'][-1]:.3f}" for n in f["starts"]
      )
      lines.append(
        f"{alpha:>5} {f['student_distance'][0]:>7.4f} {f['student_distance'][-1]:>8.5f} "
        f"{f['contraction_rate']:>6.3f} {f['rate_bound']:>5.2f} "
        f"{f['max_kl_final_targets']:>9.2e} {f['max_kl_final_students']:>9.2e} "
        f"{f['max_kl_initial_students']:>8.3f}  {drift}"
      )
  return "\n".join(lines)
