"""Prop IV.11 / Cor IV.12 safety attenuation: q(unsafe) vs w*; random violation rates."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """q(unsafe) vs w* per operator with the bound, per scenario; random-search violation rates."""
  plt = style.pyplot()
  scenarios = results["scenarios"]
  specs = list(results["random"])
  colors = style.operator_colors(specs)
  fig, axes = plt.subplots(1, len(scenarios) + 1, figsize=(5.3 * (len(scenarios) + 1), 4.6))
  for ax, (name, sc) in zip(axes, scenarios.items(), strict=False):
    w = sc["w_star"]
    ax.plot(w, sc["bound"], "k--", lw=2, label="Cor IV.12 bound")
    for spec in specs:
      ax.plot(w, sc["q"][spec], color=colors[spec], lw=1.3, label=spec)
      bad = [i for i, x in enumerate(w) if x in sc["violations"][spec]]
      ax.plot([w[i] for i in bad], [sc["q"][spec][i] for i in bad], "x", color=colors[spec], ms=5)
    p = np.asarray(sc["teachers"])
    ax.set_title(
      f"{name}: p_k(unsafe) = {np.round(p[:, 0], 3).tolist()}\n(× = above the bound)", fontsize=9
    )
    style.label(ax, legend=7, xlabel="safety teacher weight w*", ylabel="q(unsafe)")
  ax = axes[-1]
  fraction = lambda bound: [100 * results["random"][s][bound]["fraction"] for s in specs]
  labels = ("Cor IV.12 bound", "Prop IV.11: q(i) < p_max")
  cor, prop = fraction("cor_iv12"), fraction("prop_iv11")
  style.paired_bars(ax, specs, cor, prop, list(colors.values()), labels, rotation=25, fontsize=8)
  title = "Random teachers: linear never violates"
  style.label(ax, title, size=9, ylabel="% of random problems violating")
  style.save(fig, path)
