"""Training curves of a digits job: `python experiments/plots/digits.py WORKDIR` -> curves.png.

Teachers and students are drawn on separate panels, since they optimise different quantities
(the teachers' cross-entropy on labels; the students' T_S²·KL(q ‖ p_S) to the target).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import style

from mtkd_jax.experiments.common import read_metrics


def plot_curves(metrics_path: str, png_path: str) -> None:
  """Loss, batch accuracy, KL(q ‖ p_S) and gradient norm per run, with labelled axes."""
  plt = style.pyplot()
  runs = read_metrics(metrics_path)  # {run: {field: [value per logged step]}}
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
    for name, r in group.items():
      points = [(s, v) for s, v in zip(r["step"], r.get(key, []), strict=False) if v is not None]
      if points:
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=name, lw=1, color=colors[name])
    style.label(ax, legend=7, xlabel="step", ylabel=label, yscale=scale)
  style.save(fig, png_path)


if __name__ == "__main__":
  workdir = sys.argv[1]
  out = os.path.join(workdir, "curves.png")
  plot_curves(os.path.join(workdir, "metrics.jsonl"), out)
  print(f"curves: {out}")
