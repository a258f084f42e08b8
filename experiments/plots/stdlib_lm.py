"""Multi-teacher distillation on the stdlib LM: held-out bits per byte per method (mean ± s.e.
over seeds), per-family gains over the hard-label student, and the store's size against k."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """Three panels: bits/byte of every model (students with ± 1 s.e. bars); each student's gain
  over the hard-label student per family; top-k students' bits/byte against k and store size."""
  plt = style.pyplot()
  bpb, se = results["bits_per_byte"], results.get("bits_per_byte_se", {})
  fams, ks = results["families"], results["k_values"]
  widths = {"width_ratios": [1.25, 1.1, 1]}
  fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw=widths)

  names = [n for n in bpb if n.startswith("teacher")] + [n for n in bpb if n in se]
  y = np.arange(len(names))[::-1]
  vals = [bpb[n]["all"] for n in names]
  errs = [se.get(n, {}).get("all", 0.0) for n in names]
  color = lambda n: "C3" if n.startswith("teacher") else "0.5" if n == "student[labels]" else "C0"
  ax.barh(y, vals, xerr=errs, color=[color(n) for n in names], capsize=2)
  ax.set_yticks(y, names, fontsize=7)
  if "student[labels]" in bpb:
    ax.axvline(bpb["student[labels]"]["all"], color="0.3", ls="--", lw=1, label="hard labels")
  lo, hi = min(vals), max(vals)
  ax.set_xlim(lo - 0.15 * (hi - lo) - 0.02, hi + 0.05 * (hi - lo) + 0.02)
  ax.set(xlabel=f"{results['eval_split']} bits per byte (all families)")
  ax.set_title(f"Every model (students: mean ± s.e., {results['num_seeds']} seeds)", fontsize=10)
  ax.legend(fontsize=7.5, loc="lower right")
  ax.grid(alpha=0.3, axis="x")

  vs = results.get("vs_labels", {})
  shown = [n for n in vs if "top" not in n]
  width = 0.8 / max(len(shown), 1)
  cols = [*fams, "all"]
  for i, n in enumerate(shown):
    means = [vs[n][c]["mean"] for c in cols]
    errs = [vs[n][c]["se"] for c in cols]
    bx.bar(np.arange(len(cols)) + i * width, means, width, yerr=errs, capsize=2, label=n)
  bx.axhline(0.0, color="k", lw=0.8)
  bx.set_xticks(np.arange(len(cols)) + width * (len(shown) - 1) / 2, cols)
  title = "Per-family gain over the hard-label student (< 0: better)"
  style.label(bx, title, size=10, legend=6.5, ylabel="Δ bits/byte vs hard labels (paired, ± s.e.)")
  bx.grid(alpha=0.3, axis="y")

  markers = {"drop": "v", "uniform": "o", "bucket": "s"}
  for mode in results["tail_modes"]:
    keys = [f"student[top{k},{mode}]" for k in ks]
    values, errs = [bpb[k]["all"] for k in keys], [se.get(k, {}).get("all", 0.0) for k in keys]
    label = {"marker": markers.get(mode, "o"), "label": f"top-k, tail={mode}"}
    cx.errorbar(ks, values, yerr=errs, capsize=2, **label)
  for key, color in (("student[mixture linear]", "k"), ("student[labels]", "0.5")):
    if key in bpb:
      cx.axhline(bpb[key]["all"], color=color, ls="--", lw=1, label=key)
  store = results["store"]
  mib = [store["bytes"] * k / store["k"] / 2**20 for k in ks]  # the top-k prefix of the store
  cx.set_xscale("log", base=2)
  cx.set_xticks(ks, [f"{k}\n≈{m:.2g} MiB" for k, m in zip(ks, mib, strict=True)])
  xlabel = (
    f"top-k per teacher; store size ≈ the top-{store['k']} store's × k/{store['k']}\n"
    f"(dense bf16: {store['dense_bf16_bytes'] / 2**20:.0f} MiB)"
  )
  title = "Students from the offline store"
  style.label(cx, title, size=10, legend=7, xlabel=xlabel, ylabel="bits per byte (all)")
  cx.grid(alpha=0.3)
  style.save(fig, path)
