"""Supervisory bias attenuation (paper §VI): per-class bias of teachers and aggregates."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """Per-class bias of each teacher (dashed) and of each aggregate; bias size bars."""
  plt = style.pyplot()
  specs = list(results["aggregates"])
  colors = style.operator_colors(specs)
  fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.4, 1]})
  ax = axes[0]
  classes = np.arange(len(results["label_frequency"]))
  for i, (name, r) in enumerate(results["teachers"].items()):
    label = f"{name} (classes {r['classes'][0]}..{r['classes'][-1]})"
    shade = {"color": "gray", "alpha": 0.5 + 0.5 * i / 3}
    ax.plot(classes, r["bias"], "--", **shade, lw=1.2, marker="s", ms=3, label=label)
  for spec in specs:
    bias = results["aggregates"][spec]["bias"]
    ax.plot(classes, bias, color=colors[spec], lw=1.5, marker="o", ms=3, label=f"q[{spec}]")
  ax.axhline(0, color="k", lw=0.8)
  title = "Class-shifted teachers over- and under-predict; their biases cancel in q"
  style.label(ax, title, xticks=classes, xlabel="class c", ylabel="b(c) = E[p(c|x)] − P(y = c)")
  ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.13))
  ax = axes[1]
  names = list(results["teachers"]) + [f"q[{s}]" for s in specs]
  values = [r["bias_l2"] for r in results["teachers"].values()]
  values += [results["aggregates"][s]["bias_l2"] for s in specs]
  bar_colors = ["gray"] * len(results["teachers"]) + [colors[s] for s in specs]
  ax.bar_label(ax.bar(range(len(names)), values, color=bar_colors), fmt="%.3f", fontsize=7)
  bound = results["weighted_teacher_bias_l2"]
  ax.axhline(bound, color="k", ls=":", lw=1, label="Σ_k w_k ‖b_k‖ (linear bound)")
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
  style.label(ax, legend=7, ylabel="‖b‖₂ on held-out test data")
  style.save(fig, path)
