"""Prop V.2 capacity: final KL(q ‖ p_S) against parameter count; training curves."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """Final KL vs parameter count (log-log), and the training curves per width."""
  plt = style.pyplot()
  rows = results["rows"]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
  ax = axes[0]
  params = [r["num_params"] for r in rows]
  kl = np.asarray([r["final_kl"] for r in rows])  # [widths, seeds]
  ax.plot(params, kl.mean(axis=1), "o-", color="C0", label="mean over the N points")
  for j in range(kl.shape[1]):
    ax.plot(params, kl[:, j], ".", color="C0", alpha=0.4)
  worst = [max(r["final_max_kl"]) for r in rows]
  ax.plot(params, worst, "s--", color="C3", ms=4, label="worst point")
  ax.axvline(results["target_dof"], color="k", ls=":", label="N·(V−1) target dof")
  for r in rows:
    xy = (r["num_params"], np.mean(r["final_kl"]))
    ax.annotate(f"w={r['width']}", xy, fontsize=7, textcoords="offset points", xytext=(3, 4))
  ax.set(xscale="log", yscale="log", xlabel="student parameters", ylabel="final KL(q ‖ p_S)")
  ax.set_title(f"Prop V.2: capacity drives KL(q‖p_S) → 0 on N={results['num_points']} points")
  ax.legend(fontsize=8)
  ax = axes[1]
  shades = plt.cm.viridis(np.linspace(0, 0.9, len(rows)))
  for r, c in zip(rows, shades, strict=True):
    ax.plot(r["curve_steps"], r["curve"], color=c, lw=1.2, label=f"width {r['width']}")
  ax.set(yscale="log", xlabel="full-batch step", ylabel="KL(q ‖ p_S) (mean over seeds)")
  ax.set_title("Training curves")
  ax.legend(fontsize=7, ncol=2)
  style.save(fig, path)
