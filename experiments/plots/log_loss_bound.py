"""Thm IV.9 log-loss bound: −log q(y) against the bound on digits; violation rates."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style

from mtkd_jax.experiments.log_loss_bound import TOL  # an excess above it is a violation


def plot(results: dict, path: str) -> None:
  """Per operator, −log q(y) against the bound on digits; violation rates."""
  plt = style.pyplot()
  specs = list(results["digits"])
  colors = style.operator_colors(specs)
  ncols = (len(specs) + 2) // 2
  fig, axes = plt.subplots(2, ncols, figsize=(3.6 * ncols, 6.6))
  axes = axes.ravel()
  top = max(max(r["rhs"]) for r in results["digits"].values())
  for ax, spec in zip(axes, specs, strict=False):
    r = results["digits"][spec]
    lhs, rhs = np.asarray(r["lhs"]), np.asarray(r["rhs"])
    bad = lhs > rhs + TOL
    ax.plot([0, top], [0, top], "k--", lw=1)
    ax.scatter(rhs, lhs, s=3, color=colors[spec], alpha=0.4)
    label = f"above the bound: {bad.mean():.1%}"
    ax.scatter(rhs[bad], lhs[bad], s=4, color="k", marker="x", lw=0.5, alpha=0.5, label=label)
    ax.set_xscale("symlog", linthresh=1e-2)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_title(spec, fontsize=9)
    ax.set_xlabel("−Σ w_k log p_k(y)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
  for ax in axes[len(specs) + 1 :]:
    ax.axis("off")
  for ax in (axes[0], axes[ncols]):
    ax.set_ylabel("−log q(y)  (digits, per example)")
  ax = axes[len(specs)]
  fraction = lambda part: [100 * results[part][s]["fraction"] for s in specs]
  real, rnd = fraction("digits"), fraction("random")
  labels = ("digits", "random")
  style.paired_bars(ax, specs, real, rnd, list(colors.values()), labels, rotation=35, fontsize=7)
  ax.set_ylabel("% examples above the bound", fontsize=8)
  fig.suptitle(
    "Thm IV.9: −log q(y) ≤ −Σ_k w_k log p_k(y) (dashed: equality; × = violation)", fontsize=10
  )
  style.save(fig, path)
