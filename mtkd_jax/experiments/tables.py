"""The plain-text tables printed by every experiment's `format_table`."""

import re
from collections.abc import Iterable, Sequence


def lines(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence], indent="  ", rule=False):
  """A header line (and a rule under it) and one line per row; a column is (header, format spec).

  A header is padded to its column's width and alignment (the spec's `<`/`>` and width);
  a value is formatted with the spec as is, so pre-formatted strings take an alignment spec, and
  booleans are written as True/False.

  >>> lines([("op", "<6"), ("viol.", ">7.1%")], [("linear", 0.0), ("power", 0.25)], indent="")
  ['op       viol.', 'linear    0.0%', 'power    25.0%']
  """

  def pad(header: str, spec: str) -> str:
    align, width = re.match(r"([<>^]?)[-+ ]?(\d*)", spec).groups()
    return format(header, f"{align or '<'}{width}")

  def cell(value, spec: str) -> str:
    return format(str(value) if isinstance(value, bool) else value, spec)

  out = [indent + " ".join(pad(h, spec) for h, spec in columns).rstrip()]
  if rule:
    out.append(indent + "-" * (len(out[0]) - len(indent)))
  for row in rows:
    out.append(indent + " ".join(cell(v, s) for v, (_, s) in zip(row, columns, strict=True)))
  return out


def mean_std(r: dict, key: str, width: int = 8) -> str:
  """`r[key] ± r[key_std]`, e.g. "  0.9512 ± 0.0031"."""
  return f"{r[key]:>{width}.4f} ± {r[f'{key}_std']:.4f}"
