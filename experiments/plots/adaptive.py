"""Adaptive weighting: accuracy and log-loss per scheme, weights by class, the safety floor.

`plot(results, path)` draws the results.json of `mtkd_jax.experiments.adaptive`.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """Four panels: accuracy and log-loss per scheme; weights by class; safety weights; p_S(u)."""
  plt = style.pyplot()
  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  names = list(results["schemes"])
  r = results["schemes"]
  ax = axes[0, 0]
  x = np.arange(len(names))
  column = lambda key: [r[n][key] for n in names]
  acc, ll = ("accuracy", "#1f77b4"), ("log_loss", "#ff7f0e")
  for axis, dx, (key, color) in ((ax, -0.2, acc), (ax.twinx(), 0.2, ll)):
    label = f"test {key.replace('_', '-')}"
    axis.bar(x + dx, column(key), 0.4, yerr=column(f"{key}_std"), label=label, color=color)
    axis.set_ylabel(label)
  ax.set_ylim(min(column("accuracy")) - 0.1, 1.0)
  ax.set_xticks(x, names, rotation=15)
  ax.set_title("students by weighting scheme (blue: accuracy, orange: log-loss)")

  ax = axes[0, 1]
  shown = [n for n in ("label_aware", "learned", "confidence") if n in results["weights_by_class"]]
  if shown:
    mats = [np.asarray(results["weights_by_class"][n]).T for n in shown]  # [K, 10] each
    im = ax.imshow(np.concatenate(mats, 0), aspect="auto", vmin=0, vmax=1, cmap="viridis")
    k = mats[0].shape[0]
    rows = [f"{n} T{j}" for n in shown for j in range(k)]
    ax.set_yticks(np.arange(len(rows)), rows, fontsize=7)
    ax.set_xticks(np.arange(10))
    ax.set_xlabel("true class")
    fig.colorbar(im, ax=ax, label="mean weight")
  ax.set_title("mean teacher weight per class (training set)")

  ax = axes[1, 0]
  floor = results["config"]["floor"]
  edges = np.linspace(0, 1, 21)
  for name, s in results["safety"].items():
    hist = np.asarray(s["safety_weight_hist"], float)
    ls = "-" if name.endswith("+floor") else ":"
    ax.step(edges[:-1], hist / max(hist.sum(), 1), where="post", label=name, ls=ls)
  ax.axvline(floor, color="k", lw=1)
  mins = [
    f"{n}: min w* = {v['min_safety_weight_sensitive']:.3f}" for n, v in results["safety"].items()
  ]
  text = {"transform": ax.transAxes, "ha": "right", "va": "bottom", "family": "monospace"}
  ax.text(0.98, 0.06, "\n".join(mins), fontsize=7, **text)
  ax.set(
    xlabel="safety teacher weight w* on sensitive training inputs",
    ylabel="fraction of inputs",
    title=f"the floor holds: w* ≥ {floor} with the floor (solid)",
  )
  ax.legend(fontsize=7, loc="upper right")

  ax = axes[1, 1]
  s = results["safety"]
  labels = list(s)
  x = np.arange(len(labels))
  bars = (
    ("target_unsafe_mass_sensitive", "target q(u)", "#9467bd"),
    ("student_unsafe_mass_sensitive", "student p_S(u), test", "#d62728"),
  )
  for dx, (key, label, color) in zip((-0.2, 0.2), bars, strict=True):
    ax.bar(x + dx, [s[n][key] for n in labels], 0.4, label=label, color=color)
  ax.set_xticks(x, labels, rotation=25, fontsize=7)
  ax.set_ylabel(f"mean probability of unsafe class {results['config']['unsafe_class']}")
  ax.set_title("unsafe mass on sensitive inputs")
  ax.legend(fontsize=8)
  style.save(fig, path)
