"""Sparse teachers on the stdlib LM: held-out bits per byte against the stored top-k."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # style.py: loaded by file path
import style


def plot(results: dict, path: str) -> None:
  """Two panels: held-out bits/byte vs k per tail mode (with dense/teacher references), and
  per-family bits/byte of each teacher, the average teacher and the dense student."""
  plt = style.pyplot()
  bpb, ks = results["bits_per_byte"], results["k_values"]
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
  markers = {"drop": "v", "uniform": "o", "bucket": "s"}
  for mode in results["tail_modes"]:
    ys = [bpb[f"student[top{k},{mode}]"]["all"] for k in ks]
    ax.plot(ks, ys, marker=markers.get(mode, "o"), label=f"top-k student, tail={mode}")
  refs = [
    ("student[dense]", "dense-teacher student", "k"),
    ("student[labels]", "hard-label student", "0.5"),
    ("teacher mixture", "teacher mixture (linear)", "C3"),
  ]
  for key, label, color in refs:
    if key in bpb:
      ax.axhline(bpb[key]["all"], color=color, ls="--", lw=1, label=label)
  ax.axhline(results["average_teacher"]["all"], color="C4", ls=":", lw=1.5, label="average teacher")
  ax.set_xscale("log", base=2)
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.set(xlabel="stored top-k per teacher (V = 256)", title="Students from sparse teachers")
  ax.set_ylabel("held-out bits per byte (all families)")
  ax.legend(fontsize=7.5, loc="best")
  ax.grid(alpha=0.3)

  fams = results["families"]
  models_ = [n for n in bpb if n.startswith("teacher[")] + ["average teacher"]
  models_ += [n for n in ("student[dense]",) if n in bpb]
  width = 0.8 / len(models_)
  for i, name in enumerate(models_):
    vals = results["average_teacher"] if name == "average teacher" else bpb[name]
    bx.bar(np.arange(len(fams)) + i * width, [vals[f] for f in fams], width, label=name)
  bx.set_xticks(np.arange(len(fams)) + width * (len(models_) - 1) / 2, fams)
  bx.set(ylabel="held-out bits per byte", title="Specialised teachers, per family")
  lo = min(min(bpb[n][f] for f in fams) for n in models_ if n in bpb)
  bx.set_ylim(lo * 0.9, None)
  bx.legend(fontsize=7.5)
  bx.grid(alpha=0.3, axis="y")
  style.save(fig, path)
