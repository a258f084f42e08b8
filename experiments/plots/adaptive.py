"""Adaptive weighting: accuracy and log-loss per scheme, weights by class, the safety floor."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """Accuracy and log-loss per scheme; weights by class; safety weights; p_S(u); and, when the
  results have them, the learned gate's objective and gradient norm per learning rate."""
  plt = style.pyplot()
  gate = "gate_convergence" in results
  fig, axes = plt.subplots(2, 3 if gate else 2, figsize=(18 if gate else 12, 8.5))
  if gate:
    _plot_gate(results["gate_convergence"], axes[:, 2])
  r, names = results["schemes"], list(results["schemes"])
  ax, x = axes[0, 0], np.arange(len(names))
  bars = ((ax, -0.2, "accuracy", "#1f77b4"), (ax.twinx(), 0.2, "log_loss", "#ff7f0e"))
  for a, dx, key, color in bars:
    label = "test " + key.replace("_", "-")
    errors = [r[n][f"{key}_std"] for n in names]
    a.bar(x + dx, [r[n][key] for n in names], 0.4, yerr=errors, label=label, color=color)
    a.set_ylabel(label)
  ax.set_ylim(min(r[n]["accuracy"] for n in names) - 0.1, 1.0)
  ax.set_xticks(x, names, rotation=15)
  ax.set_title("students by weighting scheme (blue: accuracy, orange: log-loss)")

  ax = axes[0, 1]
  shown = [n for n in ("label_aware", "learned", "confidence") if n in results["weights_by_class"]]
  if shown:
    mats = [np.asarray(results["weights_by_class"][n]).T for n in shown]  # [K, 10] each
    im = ax.imshow(np.concatenate(mats, 0), aspect="auto", vmin=0, vmax=1, cmap="viridis")
    ticks = [f"{n} T{j}" for n in shown for j in range(mats[0].shape[0])]
    ax.set_yticks(np.arange(len(ticks)), ticks, fontsize=7)
    ax.set(xticks=np.arange(10), xlabel="true class")
    fig.colorbar(im, ax=ax, label="mean weight")
  ax.set_title("mean teacher weight per class (training set)")

  ax, s, floor = axes[1, 0], results["safety"], results["config"]["floor"]
  edges = np.linspace(0, 1, 21)
  for name, v in s.items():
    hist = np.asarray(v["safety_weight_hist"], float)
    ls = "-" if name.endswith("+floor") else ":"
    ax.step(edges[:-1], hist / max(hist.sum(), 1), where="post", label=name, ls=ls)
  ax.axvline(floor, color="k", lw=1)
  mins = "\n".join(f"{n}: min w* = {v['min_safety_weight_sensitive']:.3f}" for n, v in s.items())
  box = {"transform": ax.transAxes, "ha": "right", "va": "bottom", "family": "monospace"}
  ax.text(0.98, 0.06, mins, fontsize=7, **box)
  ax.legend(fontsize=7, loc="upper right")
  xlabel = "safety teacher weight w* on sensitive training inputs"
  title = f"the floor holds: w* ≥ {floor} with the floor (solid)"
  style.label(ax, title, xlabel=xlabel, ylabel="fraction of inputs")

  ax, x = axes[1, 1], np.arange(len(s))
  bars = (("target", "target q(u)", "#9467bd"), ("student", "student p_S(u), test", "#d62728"))
  for dx, (key, label, color) in zip((-0.2, 0.2), bars, strict=True):
    values = [v[f"{key}_unsafe_mass_sensitive"] for v in s.values()]
    ax.bar(x + dx, values, 0.4, label=label, color=color)
  ax.set_xticks(x, list(s), rotation=25, fontsize=7)
  ylabel = f"mean probability of unsafe class {results['config']['unsafe_class']}"
  style.label(ax, "unsafe mass on sensitive inputs", legend=8, ylabel=ylabel)
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
    ends = [np.mean(r["full_grad_norm_init"]), np.mean(r["full_grad_norm_final"])]
    label = f"full batch, end/start = {np.mean(r['grad_norm_ratio']):.2f}"
    axes[1].plot([0, steps[-1]], ends, "s", color=color, label=label)
  style.label(axes[0], "learned gate: its objective (minibatch)", ylabel="gate log-loss")
  style.label(axes[1], "learned gate: ‖∇_φ gate loss‖ (squares: full batch)", yscale="log")
  for ax in axes:
    style.label(ax, legend=7, xlabel="step")
