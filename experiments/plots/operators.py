"""Operator families on digits: each operator's student against single-teacher students."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """Bars of test accuracy and log-loss: teachers, single-teacher students, operator students."""
  plt = style.pyplot()
  s = results["summary"]
  k = results["num_teachers"]
  colors = style.operator_colors(results["operators"])
  groups = [(f"teacher_{i}", f"teacher {i}", "#bbbbbb") for i in range(k)]
  groups += [(f"student_from_teacher_{i}", f"student ← teacher {i}", "#777777") for i in range(k)]
  groups += [(f"student_{o}", f"student ← {o}", colors[o]) for o in results["operators"]]
  fig, axes = plt.subplots(1, 2, figsize=(14, 4.6))
  panels = (("accuracy", "test accuracy"), ("log_loss", "test log-loss"))
  for ax, (key, label) in zip(axes, panels, strict=True):
    values = [s[n][key] for n, _, _ in groups]
    errors = [s[n][f"{key}_std"] for n, _, _ in groups]
    x, bar_colors = range(len(groups)), [c for _, _, c in groups]
    bars = ax.bar(x, values, yerr=errors, color=bar_colors, capsize=2)
    ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=2)
    ax.set_xticks(x, [g for _, g, _ in groups], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(label)
    if key == "accuracy":
      ax.set_ylim(min(values) - 0.1, 1.0)
    else:
      label = "Σ_k w_k teacher log-loss (Cor IV.10)"
      ax.axhline(s["average teacher"]["log_loss"], color="k", ls=":", lw=1, label=label)
      ax.legend(fontsize=7)
  fig.suptitle(
    f"Digits: students distilled from each operator's q vs from each single teacher "
    f"({len(results['seeds'])} seed(s))",
    fontsize=10,
  )
  style.save(fig, path)
