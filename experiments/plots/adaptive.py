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
  """Four panels: accuracy and log-loss per scheme; weights by class; safety weights; p_S(u);
  and, when the results have them, the learned gate's objective and gradient norm per
  learning rate."""
  plt = style.pyplot()
  gate = "gate_convergence" in results
  fig, axes = plt.subplots(2, 3 if gate else 2, figsize=(18 if gate else 12, 8.5))
  if gate:
    _plot_gate(results["gate_convergence"], axes[:, 2])
  names = list(results["schemes"])
  r = results["schemes"]
  ax = axes[0, 0]
  x = np.arange(len(names))
  ax.bar(
    x - 0.2,
    [r[n]["accuracy"] for n in names],
    0.4,
    yerr=[r[n]["accuracy_std"] for n in names],
    label="test accuracy",
    color="#1f77b4",
  )
  ax.set_ylim(min(r[n]["accuracy"] for n in names) - 0.1, 1.0)
  ax.set_ylabel("test accuracy")
  ax2 = ax.twinx()
  ax2.bar(
    x + 0.2,
    [r[n]["log_loss"] for n in names],
    0.4,
    yerr=[r[n]["log_loss_std"] for n in names],
    label="test log-loss",
    color="#ff7f0e",
  )
  ax2.set_ylabel("test log-loss")
  ax.set_xticks(x, names, rotation=15)
  ax.set_title("students by weighting scheme (blue: accuracy, orange: log-loss)")

  ax = axes[0, 1]
  shown = [n for n in ("label_aware", "learned", "confidence") if n in results["weights_by_class"]]
  if shown:
    mats = [np.asarray(results["weights_by_class"][n]).T for n in shown]  # [K, 10] each
    im = ax.imshow(np.concatenate(mats, 0), aspect="auto", vmin=0, vmax=1, cmap="viridis")
    k = mats[0].shape[0]
    ax.set_yticks(
      np.arange(k * len(shown)), [f"{n} T{j}" for n in shown for j in range(k)], fontsize=7
    )
    ax.set_xticks(np.arange(10))
    ax.set_xlabel("true class")
    fig.colorbar(im, ax=ax, label="mean weight")
  ax.set_title("mean teacher weight per class (training set)")

  ax = axes[1, 0]
  floor = results["config"]["floor"]
  edges = np.linspace(0, 1, 21)
  for name, s in results["safety"].items():
    hist = np.asarray(s["safety_weight_hist"], float)
    ax.step(
      edges[:-1],
      hist / max(hist.sum(), 1),
      where="post",
      label=name,
      ls="-" if name.endswith("+floor") else ":",
    )
  ax.axvline(floor, color="k", lw=1)
  mins = [
    f"{n}: min w* = {v['min_safety_weight_sensitive']:.3f}" for n, v in results["safety"].items()
  ]
  ax.text(
    0.98,
    0.06,
    "\n".join(mins),
    transform=ax.transAxes,
    ha="right",
    va="bottom",
    fontsize=7,
    family="monospace",
  )
  ax.set_xlabel("safety teacher weight w* on sensitive training inputs")
  ax.set_ylabel("fraction of inputs")
  ax.set_title(f"the floor holds: w* ≥ {floor} with the floor (solid)")
  ax.legend(fontsize=7, loc="upper right")

  ax = axes[1, 1]
  s = results["safety"]
  labels = list(s)
  x = np.arange(len(labels))
  ax.bar(
    x - 0.2,
    [s[n]["target_unsafe_mass_sensitive"] for n in labels],
    0.4,
    label="target q(u)",
    color="#9467bd",
  )
  ax.bar(
    x + 0.2,
    [s[n]["student_unsafe_mass_sensitive"] for n in labels],
    0.4,
    label="student p_S(u), test",
    color="#d62728",
  )
  ax.set_xticks(x, labels, rotation=25, fontsize=7)
  ax.set_ylabel(f"mean probability of unsafe class {results['config']['unsafe_class']}")
  ax.set_title("unsafe mass on sensitive inputs")
  ax.legend(fontsize=8)
  style.save(fig, path)


def _plot_gate(runs: dict, axes) -> None:
  """Per learning rate: the gate's minibatch objective and gradient norm (mean over seeds, band:
  min to max), and the full-batch gradient norm at the start and the end (markers)."""
  colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
  for i, (lr, r) in enumerate(runs.items()):
    color = colors[i % len(colors)]
    steps = np.asarray(r["steps"])
    for ax, key in zip(axes, ("gate_loss", "gate_grad_norm"), strict=True):
      v = np.asarray(r[key])  # [S, windows]
      ax.plot(steps, v.mean(0), color=color, label=f"lr {lr}")
      ax.fill_between(steps, v.min(0), v.max(0), color=color, alpha=0.2)
    ratio = np.mean(r["grad_norm_ratio"])
    axes[1].plot(
      [0, steps[-1]],
      [np.mean(r["full_grad_norm_init"]), np.mean(r["full_grad_norm_final"])],
      "s",
      color=color,
      label=f"full batch, end/start = {ratio:.2f}",
    )
  axes[0].set_title("learned gate: its objective (minibatch)")
  axes[0].set_ylabel("gate log-loss")
  axes[1].set_yscale("log")
  axes[1].set_title("learned gate: ‖∇_φ gate loss‖ (squares: full batch)")
  for ax in axes:
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
