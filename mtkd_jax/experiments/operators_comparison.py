"""Operator families on digits: distilled students against each single teacher (Cor IV.10).

The digits job once per seed, one student per operator and per single teacher; per operator,
whether its student beats the weighted average teacher log-loss and the best single-teacher one.
"""

import os

from mtkd_jax.experiments import common, digits, tables
from mtkd_jax.experiments.tables import mean_std


def validate_config(config) -> None:
  common.check_numbers(config, non_negative_ints="seeds")
  common.check_operators("operators", config.operators)
  common.require(config.seeds, "seeds", "need at least one seed")
  digits.validate_embedded(digits_config(config, config.seeds[0]))


def digits_config(config, seed: int):
  """The digits job config of one seed: every operator a student, plus single-teacher students."""
  return common.digits_job(config, config.operators, seed=seed, single_teacher_students=True)


def run(config, workdir: str) -> dict:
  """One digits job per seed in `<workdir>/seed_<s>`; returns per-seed results and summaries."""
  per_seed = {}
  for seed in config.seeds:
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    per_seed[str(seed)] = digits.run(digits_config(config, seed), seed_dir)
  k = config.digits.num_teachers
  models = (
    [f"teacher_{i}" for i in range(k)]
    + [f"student_from_teacher_{i}" for i in range(k)]
    + [f"student_{s}" for s in config.operators]
    + [f"ensemble_q_{s}" for s in config.operators]
    + ["average teacher"]
  )
  summary = {n: common.seed_summary([r[n] for r in per_seed.values()]) for n in models}
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
  columns = [("model", "<34"), ("accuracy", ">17"), ("log-loss", ">17")]
  rows = [(n, mean_std(r, "accuracy"), mean_std(r, "log_loss")) for n, r in s.items()]
  lines = [f"Digits, {len(results['seeds'])} seed(s): test accuracy and log-loss (mean ± std)"]
  lines += tables.lines(columns, rows, indent="")
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
