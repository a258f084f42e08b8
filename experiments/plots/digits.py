"""Training curves of a digits job: `python experiments/plots/digits.py WORKDIR` -> curves.png.

Teachers and students are drawn on separate panels, since they optimise different quantities
(the teachers' cross-entropy on labels; the students' T_S²·KL(q ‖ p_S) to the target).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import style


def read_metrics(path: str) -> dict[str, dict[int, dict]]:
  """metrics.jsonl -> {run: {step: row}}; a resumed run's rows overwrite its steps, and a cut-off
  last line (a full disk, a killed process) is skipped with a warning."""
  runs: dict[str, dict[int, dict]] = {}
  with open(path) as f:
    lines = f.read().splitlines()
  for i, line in enumerate(lines):
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      print(f"warning: {path}:{i + 1}: skipping a cut-off line", file=sys.stderr)
      continue
    runs.setdefault(row["run"], {})[row["step"]] = row
  return runs


def plot_curves(metrics_path: str, png_path: str) -> None:
  """Loss, batch accuracy, KL(q ‖ p_S) and gradient norm per run, with labelled axes."""
  plt = style.pyplot()
  runs = read_metrics(metrics_path)
  teachers = {n: r for n, r in runs.items() if n.startswith("teacher_")}
  students = {n: r for n, r in runs.items() if not n.startswith("teacher_")}
  panels = [
    (teachers, "log_loss", "teachers: training cross-entropy (nats)", "log"),
    (students, "loss", "students: training loss T_S²·KL(q ‖ p_S) (nats)", "log"),
    (runs, "accuracy", "batch accuracy", "linear"),
    (runs, "grad_norm", "gradient norm", "linear"),
  ]
  fig, axes = plt.subplots(2, 2, figsize=(11, 7))
  colors = {name: f"C{i % 10}" for i, name in enumerate(runs)}
  for ax, (group, key, label, scale) in zip(axes.ravel(), panels, strict=True):
    for name, rows in group.items():
      steps = sorted(s for s in rows if key in rows[s])
      if steps:
        ax.plot(steps, [rows[s][key] for s in steps], label=name, lw=1, color=colors[name])
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.set_yscale(scale)
    ax.legend(fontsize=7)
  style.save(fig, png_path)


if __name__ == "__main__":
  workdir = sys.argv[1]
  out = os.path.join(workdir, "curves.png")
  plot_curves(os.path.join(workdir, "metrics.jsonl"), out)
  print(f"curves: {out}")
