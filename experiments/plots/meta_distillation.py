"""Anchored recursive meta-distillation: KL to q_base per generation against (1 − α)^t KL_0.

`plot(results, path)` draws the results.json of `mtkd_jax.experiments.meta_distillation`.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """KL(q_t ‖ q_base) and KL(p_{S_t} ‖ q_base) per generation against (1 − α)^t KL_0, per α."""
  plt = style.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
  colors = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b"]
  kl0 = results["base"]["train_kl_s0_base"]
  for i, (alpha, c) in enumerate(results["chains"].items()):
    color = colors[i % len(colors)]
    t = np.arange(len(c["kl_target_base"]))
    bound = np.asarray(c["geometric_bound"])
    axes[0].plot(t[1:], c["kl_target_base"][1:], "o-", color=color, label=f"α = {alpha}")
    axes[0].plot(t, bound, "--", color=color, lw=1)
    axes[1].plot(t, c["kl_student_base"], "o-", color=color, label=f"α = {alpha}")
    axes[1].plot(t, bound, "--", color=color, lw=1)
    axes[2].plot(t, c["test_log_loss"], "o-", color=color, label=f"α = {alpha}")
  titles = ("target: KL(q_t ‖ q_base)", "student: KL(p_{S_t} ‖ q_base)")
  q_base = results["base"]["test_q_base"]["log_loss"]
  axes[2].axhline(q_base, color="k", lw=1, ls=":", label="q_base itself")
  for ax, title in zip(axes, (*titles, "student test log-loss"), strict=True):
    ax.set(yscale="log" if ax is not axes[2] else "linear", xlabel="generation t", title=title)
    ax.legend(fontsize=8)
  fig.suptitle(
    f"anchored recursive distillation; dashed: the bound (1 − α)^t · KL(p_S0 ‖ q_base), "
    f"KL(p_S0 ‖ q_base) = {kl0:.3f} (a bound when every student fits its target exactly)",
    fontsize=10,
  )
  style.save(fig, path)
