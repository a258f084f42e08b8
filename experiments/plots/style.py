"""Shared figure style: the Agg backend and one fixed colour per operator in every figure."""

from collections.abc import Sequence

from mtkd_jax.experiments.common import DEFAULT_OPERATORS


def pyplot():
  """matplotlib.pyplot with the Agg backend (figures are written to files, never shown)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def operator_colors(specs: Sequence[str]) -> dict[str, str]:
  """A fixed colour per operator spec, the same in every figure (whatever subset it shows)."""
  palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
  extra = ["#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
  fixed = dict(zip(DEFAULT_OPERATORS, palette, strict=True))
  others = [s for s in specs if s not in fixed]
  fixed.update({s: extra[i % len(extra)] for i, s in enumerate(others)})
  return {s: fixed[s] for s in specs}


def label(ax, title=None, *, size=None, legend=None, **props) -> None:
  """`ax.set(**props)`, the title (at font size `size`) and a legend at font size `legend`."""
  ax.set(**props)
  if title is not None:
    ax.set_title(title, **({"fontsize": size} if size else {}))
  if legend:
    ax.legend(fontsize=legend)


def save(fig, path: str) -> None:
  """Lays out, writes (PNG at 100 dpi) and closes `fig`."""
  import matplotlib.pyplot as plt

  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def paired_bars(ax, names, left, right, colors, labels, fmt="%.0f", **ticks) -> None:
  """Two bars per name, `left` solid and `right` light and hatched, each labelled with its value;
  `ticks` (rotation=, fontsize=) style the names under them."""
  import numpy as np

  x = np.arange(len(names))
  hatched = {"alpha": 0.45, "hatch": "//"}
  for dx, values, label, kw in ((-0.2, left, labels[0], {}), (0.2, right, labels[1], hatched)):
    ax.bar_label(ax.bar(x + dx, values, 0.4, color=colors, label=label, **kw), fmt=fmt, fontsize=7)
  ax.set_xticks(x, names, ha="right", **ticks)
  ax.legend(fontsize=7)
