"""Thm IV.2 variance reduction: variance vs K and vs ρ over the closed forms, every operator."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style

from mtkd_jax.experiments.variance_reduction import select


def plot(results: dict, path: str) -> None:
  """Variance vs K and vs ρ (measured points over closed-form curves), and per-operator ratios."""
  plt = style.pyplot()
  specs = list(dict.fromkeys(r["operator"] for r in results["rows"]))
  colors = style.operator_colors(specs)
  rhos = sorted({r["rho"] for r in results["rows"]})
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))

  # (a) variance vs K, linear operator, equal σ (the heterogeneous σ_k rows are in the table).
  ax = axes[0]
  styles = {"uniform": "-", "skewed": "--"}
  shown = [r for r in rhos if r in (0.0, 0.5)] or rhos[:2]
  shades = dict(zip(shown, ["#1f77b4", "#d62728", "#2ca02c"], strict=False))
  for rho in shown:
    for weighting, ls in styles.items():
      rows = select(results, operator="linear", rho=rho, weighting=weighting, sigmas="equal")
      ks = [r["num_teachers"] for r in rows]
      label = f"σ²(Σw² + ρ(1−Σw²)), ρ={rho:g}, {weighting} w"
      ax.plot(ks, [r["closed_form"] for r in rows], ls, color=shades[rho], lw=1.5, label=label)
      mfc = "white" if weighting == "skewed" else shades[rho]
      ax.plot(ks, [r["measured"] for r in rows], "o", color=shades[rho], ms=4, mfc=mfc)
  ax.axhline(results["sigma"] ** 2, color="gray", ls=":", label="σ² = Σ w_k σ_k² (one teacher)")
  ax.set_xscale("log", base=2)
  ax.set(yscale="log", xlabel="number of teachers K", ylabel="Var[q(i)] (mean over tokens)")
  ax.set_title("Thm IV.2, linear q: Monte-Carlo (dots)\nover the closed form (lines)")
  ax.legend(fontsize=7)

  # (b) variance vs ρ at the largest K, equal σ: σ²(Σw² + ρ(1 − Σw²)).
  ax = axes[1]
  k_big = max(r["num_teachers"] for r in results["rows"])
  for weighting, ls in styles.items():
    where = {"operator": "linear", "weighting": weighting, "sigmas": "equal"}
    rows = [select(results, rho=rho, num_teachers=k_big, **where)[0] for rho in rhos]
    grid = np.linspace(0.0, 1.0, 101)
    s2, sw2 = results["sigma"] ** 2, rows[0]["sum_w2"]
    label = f"σ²(Σw² + ρ(1−Σw²)), {weighting} w, 1/Σw²={1 / sw2:.1f}"
    ax.plot(grid, s2 * (sw2 + grid * (1 - sw2)), ls, color="k", lw=1.2, label=label)
    mfc = "white" if weighting == "skewed" else "C0"
    label = f"measured, {weighting} w"
    ax.plot(rhos, [r["measured"] for r in rows], "o", color="C0", mfc=mfc, label=label)
  ax.axhline(results["sigma"] ** 2, color="gray", ls=":", label="σ² (one teacher)")
  title = f"Correlated errors, K={k_big}:\naveraging stops helping as ρ → 1"
  style.label(ax, title, legend=7, xlabel="pairwise error correlation ρ", ylabel="Var[q(i)]")

  # (c) every operator, measured / linear closed form.
  ax = axes[2]
  for spec in specs:
    rows = select(results, operator=spec, rho=min(rhos), weighting="uniform", sigmas="spread")
    ks, ratios = [r["num_teachers"] for r in rows], [r["ratio_to_closed_form"] for r in rows]
    ax.plot(ks, ratios, "o-", color=colors[spec], ms=3, lw=1, label=spec)
  tol = results["tolerance"]
  ax.axhspan(1 - tol, 1 + tol, color="gray", alpha=0.2, label=f"MC tolerance ±{tol:.1%}")
  ax.set_xscale("log", base=2)
  title = f"Every operator, ρ={min(rhos):g}, uniform w, σ_k unequal:\nmeasured / linear closed form"
  ylabel = "measured Var[q(i)] / Σ w_k² σ_k²"
  style.label(ax, title, legend=7, xlabel="number of teachers K", ylabel=ylabel)
  style.save(fig, path)
