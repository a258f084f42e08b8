"""Operator families on digits: distilled students against each single teacher (Cor IV.10).

Runs the digits job (`mtkd_jax.main.run`) once per seed with every operator family as a
multi-teacher student (`compare_operators`, parameterised specs such as "power(0.5)" registered as
operator names) and one student per single teacher. Reports per operator the student's test
accuracy and log-loss, the aggregate q's own, and whether the student beats the weighted average
teacher log-loss (Cor IV.10, meta-teacher) and the best single-teacher student.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from mtkd_jax.experiments import common


def validate_config(config) -> None:
  """Raises ValueError("config.<field>: ...") for the first invalid field."""
  common.check_operators("operators", config.operators)
  if not config.seeds:
    raise ValueError("config.seeds: need at least one seed")
  common.validate_digits(digits_config(config, config.seeds[0]))


def digits_config(config, seed: int):
  """The digits job config of one seed: every operator a student, plus single-teacher students."""
  digits = copy.deepcopy(config.digits)
  digits.seed = seed
  digits.operator = config.operators[0]
  digits.operator_kwargs = {}
  digits.compare_operators = tuple(config.operators[1:])
  digits.single_teacher_students = True
  digits.progress = config.progress
  return digits


def run(config, workdir: str) -> dict:
  """One digits job per seed in `<workdir>/seed_<s>`; returns per-seed results and summaries."""
  common.register_operators(config.operators)
  per_seed = {}
  for seed in config.seeds:
    per_seed[str(seed)] = common.digits_job().run(
      digits_config(config, seed), os.path.join(workdir, f"seed_{seed}")
    )
  k = config.digits.num_teachers
  models = (
    [f"teacher_{i}" for i in range(k)]
    + [f"student_from_teacher_{i}" for i in range(k)]
    + [f"student_{s}" for s in config.operators]
    + [f"ensemble_q_{s}" for s in config.operators]
    + ["average teacher"]
  )
  summary = {}
  for name in models:
    acc = [per_seed[s][name]["accuracy"] for s in per_seed]
    loss = [per_seed[s][name]["log_loss"] for s in per_seed]
    summary[name] = {
      "accuracy": float(np.mean(acc)),
      "accuracy_std": float(np.std(acc)),
      "log_loss": float(np.mean(loss)),
      "log_loss_std": float(np.std(loss)),
    }
  best_single = min(summary[f"student_from_teacher_{i}"]["log_loss"] for i in range(k))
  for spec in config.operators:
    s = summary[f"student_{spec}"]
    s["beats_average_teacher"] = s["log_loss"] < summary["average teacher"]["log_loss"]
    s["beats_best_single_teacher_student"] = s["log_loss"] < best_single
  return {
    "operators": list(config.operators),
    "num_teachers": k,
    "seeds": list(config.seeds),
    "summary": summary,
    "per_seed": per_seed,
  }


def format_table(results: dict) -> str:
  """Test accuracy and log-loss (mean ± std over seeds) of every model."""
  s = results["summary"]
  lines = [
    f"Digits, {len(results['seeds'])} seed(s): test accuracy and log-loss (mean ± std)",
    f"{'model':<34} {'accuracy':>16} {'log-loss':>16}",
  ]
  for name, r in s.items():
    lines.append(
      f"{name:<34} {r['accuracy']:>8.4f} ± {r['accuracy_std']:.4f} "
      f"{r['log_loss']:>8.4f} ± {r['log_loss_std']:.4f}"
    )
  lines.append(
    "Cor IV.10 (student beats the average teacher log-loss) / beats the best "
    "single-teacher student:"
  )
  for spec in results["operators"]:
    r = s[f"student_{spec}"]
    lines.append(
      f"  student_{spec:<26} {'yes' if r['beats_average_teacher'] else 'NO':>4} / "
      f"{'yes' if r['beats_best_single_teacher_student'] else 'no'}"
    )
  return "\n".join(lines)


def make_figure(results: dict, png_path: str) -> None:
  """Bars of test accuracy and log-loss: teachers, single-teacher students, operator students."""
  plt = common.pyplot()
  s = results["summary"]
  k = results["num_teachers"]
  colors = common.operator_colors(results["operators"])
  groups = [(f"teacher_{i}", f"teacher {i}", "#bbbbbb") for i in range(k)]
  groups += [(f"student_from_teacher_{i}", f"student ← teacher {i}", "#777777") for i in range(k)]
  groups += [(f"student_{o}", f"student ← {o}", colors[o]) for o in results["operators"]]
  fig, axes = plt.subplots(1, 2, figsize=(14, 4.6))
  for ax, key, label in (
    (axes[0], "accuracy", "test accuracy"),
    (axes[1], "log_loss", "test log-loss"),
  ):
    values = [s[n][key] for n, _, _ in groups]
    errors = [s[n][f"{key}_std"] for n, _, _ in groups]
    bars = ax.bar(
      range(len(groups)), values, yerr=errors, color=[c for _, _, c in groups], capsize=2
    )
    ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=2)
    ax.set_xticks(
      range(len(groups)), [g for _, g, _ in groups], rotation=35, ha="right", fontsize=7
    )
    ax.set_ylabel(label)
    if key == "accuracy":
      ax.set_ylim(min(values) - 0.1, 1.0)
    else:
      ax.axhline(
        s["average teacher"]["log_loss"],
        color="k",
        ls=":",
        lw=1,
        label="Σ_k w_k teacher log-loss (Cor IV.10)",
      )
      ax.legend(fontsize=7)
  fig.suptitle(
    f"Digits: students distilled from each operator's q vs from each single teacher "
    f"({len(results['seeds'])} seed(s))",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
