"""Anchored recursive meta-distillation on digits: contraction toward q_base (SPEC §7).

q_base is the linear aggregate of the digits teachers on the training inputs. Generation 0 is a
student trained on hard labels only (over-confident, far from q_base). Generation t ≥ 1 distils a
fresh student from q_t = α q_base + (1 − α) p_{S_{t−1}} (`mtkd_jax.meta`). For several α we
record, per generation, KL(q_t ‖ q_base), the student's KL(p_{S_t} ‖ q_base), its fitting error
KL(q_t ‖ p_{S_t}), the per-step bound (1 − α) KL(p_{S_{t−1}} ‖ q_base) (which holds for any
student) and the geometric bound (1 − α)^t KL(p_{S_0} ‖ q_base) (exact students only), plus test
accuracy and log-loss. Every student of every chain uses the same initialisation and batches,
and one compiled training program (the targets are arguments).
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from mtkd_jax import data as data_lib
from mtkd_jax import losses, meta, models, operators, train
from mtkd_jax.experiments import adaptive, common


def validate_config(config) -> None:
  """Raises ValueError("config.<field>: ...") for the first invalid field."""
  if not config.alphas or any(not 0.0 <= a <= 1.0 for a in config.alphas):
    raise ValueError(f"config.alphas: need values in [0, 1], got {config.alphas}")
  if config.num_generations < 1:
    raise ValueError(f"config.num_generations: must be ≥ 1, got {config.num_generations}")
  k = config.num_teachers
  for field in (
    "teacher_hidden",
    "teacher_keep_fractions",
    "teacher_noises",
    "teacher_train_fractions",
  ):
    if len(config[field]) != k:
      raise ValueError(f"config.{field}: need one entry per teacher (K={k}), got {config[field]}")
  if config.num_steps < 1 or config.s0_steps < 1:
    raise ValueError("config.num_steps and config.s0_steps: must be ≥ 1")


def run(config, workdir: str) -> dict:
  """Trains the teachers, S_0, and `num_generations` students per α; returns the records."""
  from tqdm import tqdm

  splits, _, train_logits, test_logits = common.train_teachers(config, workdir)
  train_split, test_split = splits["train"], splits["test"]
  k = config.num_teachers
  log_q_base = np.asarray(
    operators.linear(train_logits, temperatures=np.ones(k), weights=np.ones(k) / k)
  )  # [N, V]
  log_q_base_test = np.asarray(
    operators.linear(test_logits, temperatures=np.ones(k), weights=np.ones(k) / k)
  )
  student = models.build(
    "mlp",
    in_features=data_lib.NUM_PIXELS,
    hidden=tuple(config.student_hidden),
    num_classes=data_lib.NUM_CLASSES,
  )
  predict = jax.jit(student.apply)
  n = len(train_split)
  fit_kw = dict(batch_size=config.batch_size, data_seed=config.seed, num_examples=n)

  # ---- Generation 0: hard labels only -------------------------------------------------------
  opt0 = train.make_optimizer(
    config.learning_rate,
    config.s0_steps,
    weight_decay=config.weight_decay,
    warmup_steps=config.warmup_steps,
  )
  fit0 = adaptive.make_fitter(
    train.make_supervised_step(student.apply, opt0),
    student.init,
    opt0,
    num_steps=config.s0_steps,
    **fit_kw,
  )
  s0 = fit0([config.seed], {"x": train_split.x, "y": train_split.y})
  s0_params = jax.tree.map(lambda p: p[0], s0.params)
  log_p0 = np.asarray(jax.nn.log_softmax(predict(s0_params, train_split.x), -1))  # [N, V]

  # ---- Generations 1..T: one compiled program, targets as arguments --------------------------
  opt = train.make_optimizer(
    config.learning_rate,
    config.num_steps,
    weight_decay=config.weight_decay,
    warmup_steps=config.warmup_steps,
  )
  step = train.make_train_step(
    student.apply,
    opt,
    operator=operators.linear,
    loss=losses.mixture_kd,
    temperatures=[1.0],
    weights=[1.0],
  )
  fitter = adaptive.make_fitter(step, student.init, opt, num_steps=config.num_steps, **fit_kw)
  bar = tqdm(
    total=len(config.alphas) * config.num_generations,
    desc="meta-distillation",
    file=sys.stderr,
    disable=not config.progress,
  )
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
    tests = []

    def train_student(t, log_q_t, tests=tests):
      fit = fitter(
        [config.seed],
        {"x": train_split.x, "y": train_split.y, "teacher_logits": np.asarray(log_q_t)[:, None, :]},
      )
      params = jax.tree.map(lambda p: p[0], fit.params)
      tests.append(test_of(params))
      bar.update()
      return jax.nn.log_softmax(predict(params, train_split.x), -1)

    record = meta.recursive_distillation(
      train_student, log_q_base, log_p0, alpha=float(alpha), num_generations=config.num_generations
    )
    chain = {key: np.asarray(v).tolist() for key, v in record.items()}
    chain["test_accuracy"] = [results["base"]["test_s0"]["accuracy"]] + [
      r["accuracy"] for r in tests
    ]
    chain["test_log_loss"] = [results["base"]["test_s0"]["log_loss"]] + [
      r["log_loss"] for r in tests
    ]
    results["chains"][f"{alpha:g}"] = chain
  bar.close()
  if config.figure:
    make_figure(results, os.path.join(workdir, "meta_distillation.png"))
  return results


def format_table(results: dict) -> str:
  b = results["base"]
  lines = [
    f"Anchored recursive meta-distillation: KL(p_S0 ‖ q_base) = {b['train_kl_s0_base']:.4f} "
    f"(train); test acc/log-loss: q_base {b['test_q_base']['accuracy']:.4f}/"
    f"{b['test_q_base']['log_loss']:.4f}, S_0 {b['test_s0']['accuracy']:.4f}/"
    f"{b['test_s0']['log_loss']:.4f}",
    f"{'α':>5} {'t':>2} {'KL(q_t‖q_b)':>12} {'(1−α)KL(S_t−1)':>15} {'(1−α)^t KL0':>12} "
    f"{'KL(S_t‖q_b)':>12} {'KL(q_t‖S_t)':>12} {'step ok':>7} {'geo ok':>6} {'geo(mean)':>9} "
    f"{'test acc':>9} {'test LL':>8}",
    "-" * 122,
  ]
  for alpha, c in results["chains"].items():
    for t in range(1, len(c["kl_target_base"])):
      lines.append(
        f"{alpha:>5} {t:>2} {c['kl_target_base'][t]:>12.5f} {c['step_bound'][t]:>15.5f} "
        f"{c['geometric_bound'][t]:>12.5f} {c['kl_student_base'][t]:>12.5f} "
        f"{c['kl_target_student'][t]:>12.5f} {c['step_bound_holds'][t]!s:>7} "
        f"{c['geometric_bound_holds'][t]!s:>6} {c['geometric_bound_holds_mean'][t]!s:>9} "
        f"{c['test_accuracy'][t]:>9.4f} {c['test_log_loss'][t]:>8.4f}"
      )
  return "\n".join(lines)


def make_figure(results: dict, png_path: str) -> None:
  """KL(q_t ‖ q_base) and KL(p_{S_t} ‖ q_base) per generation against (1 − α)^t KL_0, per α."""
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
  colors = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b"]
  kl0 = results["base"]["train_kl_s0_base"]
  for i, (alpha, c) in enumerate(results["chains"].items()):
    color = colors[i % len(colors)]
    t = np.arange(len(c["kl_target_base"]))
    bound = np.asarray(c["geometric_bound"])
    axes[0].plot(t[1:], c["kl_target_base"][1:], "o-", color=color, label=f"α = {alpha}")
    axes[0].plot(t, bound, "--", color=color, lw=1)
    axes[1].plot(t, c["kl_student_base"], "o-", color=color, label=f"α = {alpha}")
    axes[1].plot(t, bound, "--", color=color, lw=1)
    axes[2].plot(t, c["test_log_loss"], "o-", color=color, label=f"α = {alpha}")
  for ax, title in zip(
    axes[:2], ("target: KL(q_t ‖ q_base)", "student: KL(p_{S_t} ‖ q_base)"), strict=True
  ):
    ax.set_yscale("log")
    ax.set_xlabel("generation t")
    ax.set_title(title)
    ax.legend(fontsize=8)
  axes[2].axhline(
    results["base"]["test_q_base"]["log_loss"], color="k", lw=1, ls=":", label="q_base itself"
  )
  axes[2].set_xlabel("generation t")
  axes[2].set_title("student test log-loss")
  axes[2].legend(fontsize=8)
  fig.suptitle(
    f"anchored recursive distillation; dashed: the bound (1 − α)^t · KL(p_S0 ‖ q_base), "
    f"KL(p_S0 ‖ q_base) = {kl0:.3f} (a bound when every student fits its target exactly)",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
