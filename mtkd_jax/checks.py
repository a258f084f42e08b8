"""The engine behind the executable property checks of operators and weightings (paper §II-B).

`mtkd_jax.axioms` (the paper's five axioms, for aggregation operators) and
`mtkd_jax.weighting_checks` (five properties of adaptive weighting schemes, paper §VI) are both
numbered lists of property checks run by this engine:

- a trial sampler draws a batch of random and adversarial inputs at one size (K, V), cycling
  through named input kinds (`trials`); sizes run from the smallest up (`sizes`), so the first
  violation found is a small one;
- each property is a function `find(rng, k, v) -> (violation size, Counterexample) | None` at
  one size; `search` runs every property over the sizes and collects a `Report`;
- continuity is found by walking straight paths and bisecting the largest step
  (`walk_and_bisect`): a continuous function's step shrinks with the interval, a jump does not;
- `format_table` writes subject × property tables (✓ held on every input tried, ✗ a
  counterexample was found, n/a not applicable by design, with the reason) and their legend.

A checker only finds what it samples: "passed" means no violation was found, not a proof.

`python -m mtkd_jax.axioms` (`main`) prints the operator × axiom table, then the weighting-scheme
× property table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Callable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Counterexample:
  """Inputs on which a property failed, and the violated quantity."""

  axiom: int  # the property's number (the axiom's, for operators)
  description: str  # what was compared, in words
  quantity: str  # name of the violated quantity
  value: float  # its value (the size of the violation)
  inputs: dict[str, np.ndarray]  # the inputs of the failing trial, by argument name

  def __str__(self) -> str:
    show = lambda v: np.array2string(np.asarray(v), precision=4, separator=", ").replace("\n", "")
    arrays = ", ".join(f"{k}={show(v)}" for k, v in self.inputs.items())
    return f"{self.description}; {self.quantity} = {self.value:.4g}; inputs: {arrays}"


@dataclasses.dataclass(frozen=True)
class Report:
  """Result of a check: per numbered property, whether it held and a counterexample."""

  name: str
  passed: dict[int, bool]
  counterexamples: dict[int, Counterexample | None]
  values: dict[int, str] = dataclasses.field(default_factory=dict)  # measured, shown with ✓/✗
  # Properties that do not apply by design (not checked), with the reason shown in the table.
  not_applicable: dict[int, str] = dataclasses.field(default_factory=dict)

  @property
  def all_passed(self) -> bool:
    return all(self.passed.values())


# ---------------------------------------------------------------------------------------------
# Inputs (NumPy, float64).
# ---------------------------------------------------------------------------------------------
def log_softmax(x: np.ndarray) -> np.ndarray:
  """Float64 NumPy log-softmax over the last axis; -inf entries stay -inf."""
  m = np.max(np.where(np.isfinite(x), x, -np.inf), axis=-1, keepdims=True)
  x = x - m
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def check_arguments(num_teachers: int, vocab_size: int, trials: int) -> None:
  """Raises ValueError unless num_teachers ≥ 2, vocab_size ≥ 2 and trials ≥ 1."""
  if num_teachers < 2 or vocab_size < 2 or trials < 1:
    raise ValueError(
      f"need num_teachers ≥ 2, vocab_size ≥ 2, trials ≥ 1, got "
      f"{num_teachers=}, {vocab_size=}, {trials=}"
    )


def sizes(num_teachers: int, vocab_size: int) -> list[tuple[int, int]]:
  """(K, V) from the smallest up, so the first violation found is a small one."""
  return sorted(
    {(k, v) for k in range(2, num_teachers + 1) for v in range(2, vocab_size + 1)},
    key=lambda s: (s[0] * s[1], s),
  )


def trials(sample: Callable, rng: np.random.Generator, k: int, v: int, n: int, kinds):
  """n trials at size (K, V), cycling through `kinds`, stacked: a tuple of `[n, ...]` arrays.

  `sample(rng, k, v, kind)` draws one trial as a tuple of arrays.
  """
  samples = [sample(rng, k, v, kinds[j % len(kinds)]) for j in range(n)]
  return tuple(np.stack(x) for x in zip(*samples, strict=True))


# ---------------------------------------------------------------------------------------------
# Continuity: walk straight paths, bisect the largest step.
# ---------------------------------------------------------------------------------------------
def interpolate(s: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """(1 − s) x + s y with s `[N]` broadcast over x `[N, ...]`."""
  s = s.reshape((-1,) + (1,) * (x.ndim - 1))
  return (1 - s) * x + s * y


def path_point(start, end, s: np.ndarray, rows) -> tuple[np.ndarray, ...]:
  """The point at fraction `s` `[N]` of the straight paths start → end (tuples of arrays),
  for the trials `rows`."""
  return tuple(interpolate(s, x[rows], y[rows]) for x, y in zip(start, end, strict=True))


def walk_and_bisect(value_at: Callable, n: int, *, grid: int = 65, refinements: int = 14):
  """The largest step of `value_at` along [0, 1], per trial, narrowed by bisection.

  A coarse walk over `grid` points finds each trial's largest step (NaN counts as a jump);
  `refinements` bisections then keep the half with the larger step.

  Args:
    value_at: `value_at(s [n]) -> [n, M]` float64, the value at fraction s of each trial's path.
    n: the number of trials.
    grid: points of the coarse walk.
    refinements: bisections of the largest step.

  Returns:
    `(lo [n], hi [n], value_lo [n, M], value_hi [n, M], step [n])`: the final interval, the
    values at its ends and max |value_hi − value_lo| (inf where not finite).
  """
  steps = [value_at(np.full(n, s)) for s in np.linspace(0, 1, grid)]
  incr = np.stack([np.abs(b - a).max(-1) for a, b in itertools.pairwise(steps)])
  j = np.nan_to_num(incr, nan=np.inf).argmax(0)
  lo, hi = j / (grid - 1), (j + 1) / (grid - 1)
  v_lo, v_hi = value_at(lo), value_at(hi)
  for _ in range(refinements):  # keep the half with the larger step
    mid = (lo + hi) / 2
    v_mid = value_at(mid)
    left = np.abs(v_mid - v_lo).max(-1) >= np.abs(v_hi - v_mid).max(-1)
    lo, hi = np.where(left, lo, mid), np.where(left, mid, hi)
    v_lo = np.where(left[:, None], v_lo, v_mid)
    v_hi = np.where(left[:, None], v_mid, v_hi)
  step = np.abs(v_hi - v_lo).max(-1)
  return lo, hi, v_lo, v_hi, np.where(np.isfinite(step), step, np.inf)


# ---------------------------------------------------------------------------------------------
# The search and the table.
# ---------------------------------------------------------------------------------------------
def search(
  properties: Mapping[int, Callable], *, name: str, num_teachers: int, vocab_size: int, seed: int
) -> Report:
  """Runs every property over the sizes, from the smallest up; the first violation is kept.

  Args:
    properties: `{number: find}` with `find(rng, k, v) -> (size, Counterexample) | None`.
    name: the subject's name in the report.
    num_teachers: the largest K tried.
    vocab_size: the largest V tried.
    seed: the random seed (property n draws from `default_rng([seed, n])`).

  Returns:
    A `Report` with `passed[n]` and `counterexamples[n]` for every property n.
  """
  counterexamples: dict[int, Counterexample | None] = {}
  for number, find in properties.items():
    rng = np.random.default_rng([seed, number])
    found = None
    for k, v in sizes(num_teachers, vocab_size):
      found = find(rng, k, v)
      if found is not None:
        break
    counterexamples[number] = None if found is None else found[1]
  passed = {n: c is None for n, c in counterexamples.items()}
  return Report(name, passed, counterexamples)


def format_table(
  reports: list[Report],
  *,
  properties: Mapping[int, str],
  subject: str,
  kind: str,
  counterexamples: bool = True,
) -> str:
  """Subject × property table (✓ held on every input tried, ✗ counterexample found, n/a (reason)
  not applicable by design, · not checked; a report's `values` follow the mark), its legend,
  then one line per counterexample."""
  header = [subject] + [f"{n}. {a}" for n, a in properties.items()]

  def mark(r, n):
    if n in r.not_applicable:
      return f"n/a ({r.not_applicable[n]})"
    if n not in r.passed:
      return "·"
    return ("✓" if r.passed[n] else "✗") + (f" {r.values[n]}" if n in r.values else "")

  rows = [[r.name] + [mark(r, n) for n in properties] for r in reports]
  widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
  line = lambda cells: "| " + " | ".join(map(str.ljust, cells, widths)) + " |"
  out = [line(header), "|" + "|".join("-" * (wd + 2) for wd in widths) + "|"]
  out += [line(r) for r in rows]
  legend = ["✓ held on every input tried (not a proof)", "✗ a counterexample was found"]
  if any(r.not_applicable for r in reports):
    legend.append("n/a (reason) does not apply by design, not checked")
  if any(n not in r.passed and n not in r.not_applicable for r in reports for n in properties):
    legend.append("· not checked")
  out += ["", "; ".join(legend) + "."]
  if counterexamples:
    out.append("")
    for r in reports:
      for n, c in r.counterexamples.items():
        if c is not None:
          out.append(f"- {r.name}, {kind} {n} ({properties[n]}): {c}")
  return "\n".join(out)


def main(argv, tables: list[Callable[[], str]], *, prog: str, description: str) -> int:
  """A checker's command: `--help` without running, else prints each of `tables()`."""
  argparse.ArgumentParser(prog=prog, description=description).parse_args(argv)
  for i, table in enumerate(tables):
    if i:
      print()
    print(table())
  return 0
