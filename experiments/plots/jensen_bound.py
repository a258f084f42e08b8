"""Thm IV.7 Jensen bound: L_mix and L_multi along training; random-problem violation rates."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """(a) L_multi, L_mix, gap and JS along training; (b) L_mix per operator; (c) violation rates."""
  plt = style.pyplot()
  tr, rnd = results["training"], results["random"]
  specs = list(tr["l_mix"])
  colors = style.operator_colors(specs)
  steps = np.asarray(tr["steps"])
  l_multi, l_mix = np.asarray(tr["l_multi"]), np.asarray(tr["l_mix"]["linear"])
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))

  ax = axes[0]
  ax.plot(steps, l_multi, color="k", lw=1.5, label="L_multi = Σ w_k KL(p_k ‖ p_S)")
  ax.plot(steps, l_mix, color=colors["linear"], lw=1.5, label="L_mix = KL(q_lin ‖ p_S)")
  ax.plot(steps, l_multi - l_mix, color="C1", lw=3, alpha=0.5, label="L_multi − L_mix")
  ax.plot(steps, tr["js"], "k:", lw=1.2, label="JS = Σ w_k KL(p_k ‖ q_lin)")
  twin = tr["l_mix_of_mixture_trained"]
  ax.plot(steps, twin, "--", color="C2", lw=1, label="L_mix of a twin trained on L_mix")
  title = f"Thm IV.7, linear q: gap = JS (max err {tr['max_abs_gap_minus_js']:.1e})"
  style.label(ax, title, legend=7, yscale="log", xlabel="student step (digits, batch values)")

  ax = axes[1]
  for spec in specs:
    ax.plot(steps, np.asarray(tr["l_mix"][spec]) / l_multi, color=colors[spec], lw=1.2, label=spec)
  ax.axhline(1.0, color="k", ls=":", lw=1, label="bound: L_mix = L_multi")
  title = "Same student, each operator's target"
  style.label(ax, title, legend=7, xlabel="student step", ylabel="KL(G(p) ‖ p_S) / L_multi")

  ax = axes[2]
  fractions = [100 * rnd[s]["fraction"] for s in rnd]
  bars = ax.bar(range(len(rnd)), fractions, color=[colors.get(s, "gray") for s in rnd])
  ax.bar_label(bars, fmt="%.1f%%", fontsize=8)
  ax.set_xticks(range(len(rnd)), list(rnd), rotation=25, ha="right", fontsize=8)
  title = "Random teachers/students: where the bound fails"
  style.label(ax, title, ylabel="% of random problems with L_mix > L_multi")
  style.save(fig, path)
