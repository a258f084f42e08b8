"""Anchored recursive meta-distillation: KL to q_base per generation against (1 − α)^t KL_0."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """KL(q_t ‖ q_base) and KL(p_{S_t} ‖ q_base) per generation against (1 − α)^t KL_0, per α;
  below (when the results have them), the chains from several starting students: their distance
  per generation against (1 − α)^t, each start's KL to q_base, and the drift without an anchor."""
  plt = style.pyplot()
  fixed = "fixed_point" in results
  fig, grid = plt.subplots(2 if fixed else 1, 3, figsize=(15, 9.2 if fixed else 4.6))
  axes = grid[0] if fixed else grid
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
  for ax, title in zip(axes[:2], titles, strict=True):
    style.label(ax, title, legend=8, yscale="log", xlabel="generation t")
  q_base = results["base"]["test_q_base"]["log_loss"]
  axes[2].axhline(q_base, color="k", lw=1, ls=":", label="q_base itself")
  style.label(axes[2], "student test log-loss", legend=8, xlabel="generation t")
  if fixed:
    _plot_fixed_point(results, grid[1], colors)
  fig.suptitle(
    f"anchored recursive distillation; dashed: the bound (1 − α)^t · KL(p_S0 ‖ q_base), "
    f"KL(p_S0 ‖ q_base) = {kl0:.3f} (a bound when every student fits its target exactly)",
    fontsize=10,
  )
  style.save(fig, path)


def _plot_fixed_point(results: dict, axes, colors) -> None:
  """Chains from several starts: distance between them, KL to q_base per start, α = 0 drift."""
  styles = ["-", "--", ":", "-."]
  for i, (alpha, f) in enumerate(results["fixed_point"].items()):
    color = colors[i % len(colors)]
    d = np.asarray(f["student_distance"])
    t = np.arange(len(d))
    label = f"α = {alpha}: rate {f['contraction_rate']:.3f} (1 − α = {f['rate_bound']:.2f})"
    axes[0].plot(t, np.maximum(d, 1e-6), "o-", color=color, label=label)
    axes[0].plot(t, d[0] * f["rate_bound"] ** t + 1e-6, "--", color=color, lw=1)
    for j, start in enumerate(f["starts"]):
      kl = results["starts"][start][alpha]["kl_student_base"]
      axes[1].plot(t, kl, styles[j % 4], color=color, label=f"{start}" if i == 0 else None)
  titles = (
    "chains' largest TV apart (dashed: (1 − α)^t TV_0)",
    "KL(p_{S_t} ‖ q_base): start = line style, α = colour",
  )
  for ax, title in zip(axes[:2], titles, strict=True):
    style.label(ax, title, size=10, legend=7, yscale="log", xlabel="generation t")
  no_anchor = [a for a in results["fixed_point"] if float(a) == 0.0]
  ax = axes[2]
  if no_anchor:
    for j, start in enumerate(results["fixed_point"][no_anchor[0]]["starts"]):
      r = results["starts"][start][no_anchor[0]]
      t = np.arange(len(r["kl_start_student"]))
      ax.plot(t, r["kl_start_student"], "o" + styles[j % 4], label=start)
      ax.plot(t, r["cumulative_fit_error"], styles[j % 4], color="0.5", lw=1)
    title = "α = 0: drift KL(p_S0 ‖ p_St); grey: Σ fitting errors"
    style.label(ax, title, size=10, legend=7, xlabel="generation t")
