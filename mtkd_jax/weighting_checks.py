"""Executable checks for adaptive weighting schemes (paper §VI, §IX), as `axioms` for operators.

`check(scheme)` tests a weighting scheme numerically on random and adversarial inputs and
reports, per property, whether it held and the smallest counterexample found:

1. Normalisation: w ≥ 0, Σ_k w_k = 1, no NaN, on ordinary inputs (peaked, flat, near-tie
   teachers, a teacher that excludes the label, sparse prior weights).
2. Boundedness: the same on extreme inputs (logits scaled by 1e3, every teacher excluding the
   label, features of size 1e4, sensitivity outside [0, 1]): weights stay finite in [0, 1].
3. Continuity: no jumps along straight paths in teacher logits, features, sensitivity and the
   prior (static-scale) weights, including paths that start where a weight is exactly 0. Found
   by a coarse walk and bisection of the largest step, as for the operators.
4. Safety monotonicity: as the sensitivity s of every position rises from 0 to 1, the safety
   teacher's weight never drops, and it is ≥ the floor wherever s ≥ the threshold.
5. Stability: the largest ‖Δw‖₁ / ‖Δℓ‖_∞ found over random and adversarial perturbations of
   the teachers' log-probabilities ℓ (and ‖Δw‖₁ / ‖Δf‖_∞ of the features, for schemes that read
   them) is at most the scheme's analytic bound, or `weighting_stability.UNBOUNDED_LIMIT` where
   it has none; the table shows the measured constant against the bound
   (`mtkd_jax.weighting_stability` states the bounds).

A scheme under test is a function of one batch of B positions,

    scheme(teacher_logits [K, B, V], labels [B], features [B, D], sensitivity [B],
           prior [2, K]) -> weights [K, B]

(`prior` holds two static-scale weight vectors for schemes that compose them). "Passed" means
no violation was found on the inputs tried, not a proof. Plain schemes ignore the sensitivity:
they have no floor by design, so property 4 does not apply to them and the table marks it
"n/a (no floor)" (checked anyway, each fails it: that is the reason for `weighting.safety_floor`).

The samplers, the continuity search, the report and the table are `mtkd_jax.checks`'s, shared
with `mtkd_jax.axioms`. `python -m mtkd_jax.weighting_checks` prints the scheme × property table
(also printed by `python -m mtkd_jax.axioms`).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import checks, weighting
from mtkd_jax import weighting_stability as stability
from mtkd_jax.checks import Counterexample, log_softmax

PROPERTIES = {
  1: "normalisation",
  2: "boundedness",
  3: "continuity",
  4: "safety monotonicity",
  5: "stability ‖Δw‖₁/‖Δℓ‖∞ ≤ bound",
}
_KINDS = ("random", "peaked", "flat", "near_tie", "label_excluded", "sparse_prior")
_EXTREME_KINDS = (
  "huge_logits",
  "all_exclude_label",
  "huge_features",
  "sensitivity_out_of_range",
  "zero_prior",
)
NUM_FEATURES = 6  # D of the features the checker feeds (and of the built-in learned gate)
BATCH = 4  # B positions per trial (batch statistics couple them)


# Same report as the operator axioms: per property number, passed and a counterexample.
WeightingReport = checks.Report


# ---------------------------------------------------------------------------------------------
# Inputs (NumPy, float64).
# ---------------------------------------------------------------------------------------------


def _sample(rng: np.random.Generator, k: int, v: int, kind: str):
  """One trial: log-probs [K, B, V], labels [B], features [B, D], sensitivity [B], prior [2, K]."""
  b = BATCH
  logits = rng.normal(size=(k, b, v)) * rng.choice([0.3, 1.0, 3.0])
  labels = rng.integers(v, size=b)
  features = rng.normal(size=(b, NUM_FEATURES))
  sensitivity = rng.uniform(size=b)
  prior = rng.dirichlet(np.ones(k), size=2)
  if kind == "peaked":
    logits[..., 0] += rng.uniform(4, 8, size=(k, b))
  elif kind == "flat":
    logits *= 0.01
  elif kind == "near_tie":
    logits[1] = logits[0] + rng.uniform(0, 1e-3, size=(b, v))
  elif kind == "label_excluded":  # teacher 0 gives the label probability 0
    logits[0, np.arange(b), labels] = -np.inf
  elif kind == "sparse_prior":  # complementary one-hot static scales: empty overlap
    i, j = rng.choice(k, size=2, replace=False)
    prior = np.zeros((2, k))
    prior[0, i] = prior[1, j] = 1.0
  elif kind == "huge_logits":
    logits *= 1e3
  elif kind == "all_exclude_label":
    logits[:, np.arange(b), labels] = -np.inf
  elif kind == "huge_features":
    features *= 1e4
  elif kind == "sensitivity_out_of_range":
    sensitivity = rng.choice([-3.0, 5.0, 1e6], size=b)
  elif kind == "zero_prior":
    prior[:, rng.integers(k)] = 0.0
    prior /= prior.sum(-1, keepdims=True)
  return log_softmax(logits), labels, features, sensitivity, prior


class _Evaluator:
  """The scheme, jitted and vmapped over trials; returns float64 weights [N, K, B]."""

  def __init__(self, scheme: Callable):
    self._fn = jax.jit(jax.vmap(scheme))

  def __call__(self, lp, y, f, s, prior) -> np.ndarray:
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    out = self._fn(f32(lp), jnp.asarray(y, jnp.int32), f32(f), f32(s), f32(prior))
    return np.asarray(out, np.float64)


def _inputs(j, lp, y, f, s, prior, **extra) -> dict[str, np.ndarray]:
  return {
    "teacher_logits": lp[j],
    "labels": y[j],
    "features": f[j],
    "sensitivity": s[j],
    "prior": prior[j],
    **extra,
  }


# ---------------------------------------------------------------------------------------------
# One function per property: (violation size, Counterexample) or None at one size.
# ---------------------------------------------------------------------------------------------
def _simplex_violation(w: np.ndarray) -> np.ndarray:
  """Per trial: the largest of |Σ_k w − 1|, −min w, max w − 1; inf for NaN/inf. [N]"""
  err = np.maximum(np.abs(w.sum(1) - 1.0).max(-1), np.maximum(-w, w - 1.0).max(axis=(1, 2)))
  return np.where(np.isfinite(w).all(axis=(1, 2)), err, np.inf)


def _normalisation(ev, args, tol, number=1, what="w must be ≥ 0 and sum to 1 over teachers"):
  w = ev(*args)
  err = _simplex_violation(w)
  j = int(np.argmax(err))
  if err[j] <= tol:
    return None
  return err[j], Counterexample(
    number,
    what,
    "max(|Σ_k w_k − 1|, −min w, max w − 1)",
    float(err[j]),
    _inputs(j, *args, weights=w[j]),
  )


def _boundedness(ev, args, tol):
  what = "on extreme inputs w must stay finite, in [0, 1], summing to 1"
  return _normalisation(ev, args, 10 * tol, number=2, what=what)


def _continuity(ev, args, tol, grid=65, refinements=14, jump=1e-2):
  del tol
  lp, y, f, s, prior = args
  n, k = lp.shape[:2]
  rng = np.random.default_rng(0)
  other = np.roll(np.arange(n), 1)
  lp = np.maximum(lp, -30.0)  # finite paths (a −inf entry times 0 would be NaN)
  sparse = np.zeros_like(prior)
  i = rng.integers(k, size=n)
  sparse[np.arange(n), 0, i] = 1.0
  sparse[np.arange(n), 1, (i + 1) % k] = 1.0
  dense = rng.dirichlet(np.ones(k), size=(n, 2))
  paths = {  # name -> (start, end) over (logits, features, sensitivity, prior)
    "teacher logits": ((lp, f, s, prior), (lp + rng.normal(size=lp.shape), f, s, prior)),
    "features": ((lp, f, s, prior), (lp, f + rng.normal(size=f.shape), s, prior)),
    "sensitivity": ((lp, f, np.zeros_like(s), prior), (lp, f, np.ones_like(s), prior)),
    "prior weights": ((lp, f, s, prior), (lp, f, s, prior[other])),
    "prior weights from 0": ((lp, f, s, sparse), (lp, f, s, dense)),
  }
  worst = None
  for name, (start, end) in paths.items():

    def w_at(t, start=start, end=end):
      x_lp, x_f, x_s, x_p = checks.path_point(start, end, t, np.arange(n))
      return ev(log_softmax(x_lp), y, x_f, x_s, x_p).reshape(n, -1)

    lo, hi, w_lo, w_hi, step = checks.walk_and_bisect(w_at, n, grid=grid, refinements=refinements)
    r = int(np.argmax(step))
    if step[r] > jump and (worst is None or step[r] > worst[0]):
      x_lo = checks.path_point(start, end, lo[[r]], [r])
      x_hi = checks.path_point(start, end, hi[[r]], [r])
      inputs = {
        "teacher_logits": log_softmax(x_lo[0][0]),
        "labels": y[r],
        "features": x_lo[1][0],
        "sensitivity": x_lo[2][0],
        "prior": x_lo[3][0],
        "weights": w_lo[r].reshape(k, -1),
        "other_prior": x_hi[3][0],
        "other_sensitivity": x_hi[2][0],
        "other_weights": w_hi[r].reshape(k, -1),
      }
      what = (
        f"w jumps along a path in {name}: a step of {hi[r] - lo[r]:.2g} of the path moves "
        f"w by {step[r]:.3g}"
      )
      worst = (step[r], Counterexample(3, what, "max |Δw|", float(step[r]), inputs))
  return worst


def _safety(ev, args, tol, *, safety_teacher, floor, threshold, grid=21):
  lp, y, f, _, prior = args
  n = lp.shape[0]
  levels = np.linspace(0.0, 1.0, grid)
  w_star = np.stack(
    [ev(lp, y, f, np.full((n, BATCH), s), prior)[:, safety_teacher] for s in levels]
  )  # [S, N, B]
  drop = np.nan_to_num(w_star[:-1] - w_star[1:], nan=np.inf)  # [S-1, N, B]
  deficit = np.where(levels[:, None, None] >= threshold, floor - w_star, -np.inf)
  deficit = np.nan_to_num(deficit, nan=np.inf)
  worst = None
  for size, kind in ((drop, "drop"), (deficit, "floor")):
    a, j, b = np.unravel_index(np.argmax(size), size.shape)
    if size[a, j, b] > tol and (worst is None or size[a, j, b] > worst[0]):
      if kind == "drop":
        what = (
          f"raising the sensitivity from {levels[a]:.2f} to {levels[a + 1]:.2f} lowered the "
          f"safety teacher's weight from {w_star[a, j, b]:.4f} to {w_star[a + 1, j, b]:.4f} "
          f"(position {b})"
        )
        quantity = "w*(s) − w*(s')"
      else:
        what = (
          f"sensitivity {levels[a]:.2f} ≥ threshold {threshold} but the safety teacher's "
          f"weight is {w_star[a, j, b]:.4f} < floor {floor} (position {b})"
        )
        quantity = "floor − w*"
      inputs = _inputs(
        j, *args, sensitivity_level=np.float64(levels[a]), safety_weights=w_star[:, j, b]
      )
      worst = (size[a, j, b], Counterexample(4, what, quantity, float(size[a, j, b]), inputs))
  return worst


def check(
  scheme: Callable,
  *,
  num_teachers: int = 3,
  vocab_size: int = 4,
  trials: int = 36,
  seed: int = 0,
  tol: float = 1e-5,
  safety_teacher: int = 0,
  floor: float = 0.3,
  threshold: float = 0.5,
  name: str | None = None,
  stability_bounds: Callable | None = None,
  only: tuple[int, ...] = tuple(PROPERTIES),
  not_applicable: Mapping[int, str] | None = None,
) -> WeightingReport:
  """Checks the five properties of a weighting scheme numerically and returns the report.

  Sizes (K, V) run from (2, 2) up to (num_teachers, vocab_size); the first size with a violation
  gives the counterexample (the largest violation at that size).

  Args:
    scheme: `scheme(teacher_logits [K, B, V], labels [B], features [B, D], sensitivity [B],
      prior [2, K]) -> weights [K, B]`, jittable and vmappable (D = `NUM_FEATURES`).
    num_teachers: the largest K tried (≥ 2).
    vocab_size: the largest V tried (≥ 2).
    trials: inputs per size and property.
    seed: random seed; the report is a pure function of the arguments.
    tol: tolerance of the exact identities (Σ w = 1, monotonicity).
    safety_teacher, floor, threshold: what property 4 demands: w_{safety_teacher} ≥ floor
      where the sensitivity is ≥ threshold, and never lower at a higher sensitivity.
    name: the scheme's name in the report.
    stability_bounds: `bounds(K) -> (bound in log-probs, bound in features)` of property 5,
      None entries where there is no analytic bound (None: no bound at all).
    only: the properties to check (all by default).
    not_applicable: `{property: reason}` of properties that do not apply to the scheme by
      design (e.g. `{4: "no floor"}`): not checked, shown as "n/a (reason)" in the table.

  Returns:
    A `WeightingReport`; `values[5]` holds the measured constants against the bounds.
  """
  checks.check_arguments(num_teachers, vocab_size, trials)
  not_applicable = dict(not_applicable or {})
  only = tuple(n for n in only if n not in not_applicable)
  ev = _Evaluator(scheme)
  safety = functools.partial(
    _safety, safety_teacher=safety_teacher, floor=floor, threshold=threshold
  )
  properties = {
    1: (_normalisation, _KINDS),
    2: (_boundedness, _EXTREME_KINDS),
    3: (_continuity, _KINDS),
    4: (safety, _KINDS),
  }
  properties = {n: p for n, p in properties.items() if n in only}

  def find(fn, kinds):
    return lambda rng, k, v: fn(ev, checks.trials(_sample, rng, k, v, trials, kinds), tol)

  report = checks.search(
    {number: find(fn, kinds) for number, (fn, kinds) in properties.items()},
    name=name or getattr(scheme, "__name__", repr(scheme)),
    num_teachers=num_teachers,
    vocab_size=vocab_size,
    seed=seed,
  )
  report = dataclasses.replace(report, not_applicable=not_applicable)
  if 5 not in only:
    return report
  passed, counterexample, cell = stability.stability_property(
    ev,
    stability.Jacobian(scheme),
    _sample,
    bounds=stability_bounds or (lambda k: (None, None)),
    num_teachers=num_teachers,
    vocab_size=vocab_size,
    trials=trials,
    kinds=_KINDS,
    seed=seed,
  )
  return checks.Report(
    report.name,
    {**report.passed, 5: passed},
    {**report.counterexamples, 5: counterexample},
    {5: cell},
    not_applicable,
  )


# ---------------------------------------------------------------------------------------------
# The schemes of the printed table, in the checker's signature.
# ---------------------------------------------------------------------------------------------
def _static(lp, y, f, s, prior):
  return weighting.static(prior[0], lp.shape[1:2])


def _confidence(lp, y, f, s, prior):
  return weighting.confidence(lp, tau=0.5)


def _hierarchical(epsilon):
  def scheme(lp, y, f, s, prior):
    return weighting.hierarchical(
      token=weighting.confidence(lp, tau=0.5), task=prior[0], context=prior[1], epsilon=epsilon
    )

  return scheme


def _gate(k):
  """The fixed random gate of the table's learned scheme for K teachers: (apply, params)."""
  gate = weighting.make_gate(NUM_FEATURES, k, hidden=8)
  params = gate.init(jax.random.key(k))  # a fixed random gate per K
  return gate.apply, jax.tree.map(lambda p: 3.0 * p, params)  # sharper than at init


def _learned():
  def scheme(lp, y, f, s, prior):
    apply, params = _gate(lp.shape[0])
    return weighting.learned(apply, params, f)

  return scheme


def _argmax_switch(lp, y, f, s, prior):
  """All weight on the most confident teacher: confidence at τ → 0, a hard switch at ties."""
  c = weighting.confidence(lp, tau=1.0)  # [K, B]
  return jax.nn.one_hot(jnp.argmax(c, 0), lp.shape[0], axis=0)


def _floored(base, floor, threshold, safety_teacher=0):
  def scheme(lp, y, f, s, prior):
    return weighting.safety_floor(
      base(lp, y, f, s, prior),
      safety_teacher=safety_teacher,
      floor=floor,
      sensitivity=s,
      threshold=threshold,
    )

  return scheme


# Deliberately naive variants: each looks reasonable and breaks one property.
def _naive_renormalised_floor(floor, threshold):
  """Adds floor·s to w* and renormalises: (w* + g) / (1 + g) can stay below the floor."""

  def scheme(lp, y, f, s, prior):
    w = weighting.label_aware(lp, y)
    g = floor * jnp.clip(s / threshold, 0, 1)
    w = w.at[0].add(g)
    return w / w.sum(0)

  return scheme


def _naive_switch_floor(floor, threshold):
  """The floor switched on at s ≥ threshold: a jump in the sensitivity."""

  def scheme(lp, y, f, s, prior):
    return weighting.safety_floor(
      weighting.label_aware(lp, y),
      safety_teacher=0,
      floor=floor,
      sensitivity=jnp.where(s >= threshold, 1.0, 0.0),
      threshold=threshold,
    )

  return scheme


def _naive_floor_inside(floor, threshold):
  """The floor applied to one scale, then multiplied with another: the product breaks it."""

  def scheme(lp, y, f, s, prior):
    token = weighting.safety_floor(
      weighting.confidence(lp, tau=0.5),
      safety_teacher=0,
      floor=floor,
      sensitivity=s,
      threshold=threshold,
    )
    return weighting.hierarchical(token=token, task=weighting.label_aware(lp, y))

  return scheme


def _naive_sharpened(floor, threshold):
  """Confidence sharpened in sensitive contexts (τ = 1 − 0.9 s), then floored: w* can drop."""

  def scheme(lp, y, f, s, prior):
    c = weighting.confidence(lp, tau=1.0)  # [K, B]
    tau = 1.0 - 0.9 * jnp.clip(s, 0.0, 1.0)  # [B]
    w = jax.nn.softmax(jnp.log(jnp.maximum(c, 1e-30)) / tau[None], axis=0)
    return weighting.safety_floor(
      w, safety_teacher=0, floor=floor, sensitivity=s, threshold=threshold
    )

  return scheme


def builtin_schemes(*, floor: float = 0.3, threshold: float = 0.5) -> dict[str, Callable]:
  """The schemes of the printed table (safety teacher 0), then the naive variants."""
  w = weighting
  label_aware = lambda lp, y, f, s, prior: w.label_aware(lp, y)
  standardized = lambda lp, y, f, s, prior: w.confidence(lp, tau=0.5, standardize=True)
  pooled = lambda lp, y, f, s, prior: w.label_aware(lp, y, domains=y % 2, num_domains=2)
  hier = _hierarchical(0.05)
  return {
    "static": _static,
    "confidence": _confidence,
    "confidence(max_prob)": lambda lp, y, f, s, prior: w.confidence(lp, measure="max_prob"),
    "confidence(standardized)": standardized,
    "label_aware": label_aware,
    "label_aware(domains)": pooled,
    "learned": _learned(),
    "hierarchical": _hierarchical(0.0),
    "hierarchical(ε=0.05)": hier,
    "safety_floor(label_aware)": _floored(label_aware, floor, threshold),
    "safety_floor(learned)": _floored(_learned(), floor, threshold),
    "safety_floor(hierarchical(ε))": _floored(hier, floor, threshold),
    "naive: renormalised floor": _naive_renormalised_floor(floor, threshold),
    "naive: switched floor": _naive_switch_floor(floor, threshold),
    "naive: floor inside a product": _naive_floor_inside(floor, threshold),
    "naive: sharpened by sensitivity": _naive_sharpened(floor, threshold),
    "naive: argmax switch": _argmax_switch,
  }


def builtin_not_applicable() -> dict[str, dict[int, str]]:
  """The properties of `builtin_schemes` that do not apply by design: name -> {property: why}.

  Only schemes with a safety floor (`weighting.safety_floor` and the naive floors) promise
  property 4; every other scheme ignores the sensitivity and has no floor to keep.
  """
  plain = (
    "static",
    "confidence",
    "confidence(max_prob)",
    "confidence(standardized)",
    "label_aware",
    "label_aware(domains)",
    "learned",
    "hierarchical",
    "hierarchical(ε=0.05)",
    "naive: argmax switch",
  )
  return {name: {4: "no floor"} for name in plain}


def builtin_bounds() -> dict[str, Callable]:
  """Property 5's analytic bounds of `builtin_schemes`: name -> `bounds(K) -> (in log-probs,
  in features)`, None where there is none (see `mtkd_jax.weighting_stability`)."""
  entropy = stability.softmax_bound(2.0, 0.5)  # confidence, τ = 0.5 (and the product's token)
  gate = lambda k: stability.gate_lipschitz(_gate(k)[1])
  bounds = {
    "static": lambda k: (0.0, 0.0),
    "confidence": lambda k: (entropy, 0.0),
    "confidence(max_prob)": lambda k: (stability.softmax_bound(1.0, 1.0), 0.0),
    "confidence(standardized)": lambda k: (None, 0.0),
    "label_aware": lambda k: (stability.softmax_bound(1.0, 1.0), 0.0),
    "label_aware(domains)": lambda k: (stability.softmax_bound(1.0, 1.0), 0.0),
    "learned": lambda k: (0.0, gate(k)),
    "hierarchical": lambda k: (entropy, 0.0),
    "hierarchical(ε=0.05)": lambda k: (entropy, 0.0),
  }
  # The floor at most doubles an ℓ₁ change.
  doubled = lambda base: lambda k: tuple(2 * b for b in base(k))
  bounds["safety_floor(label_aware)"] = doubled(bounds["label_aware"])
  bounds["safety_floor(learned)"] = doubled(bounds["learned"])
  bounds["safety_floor(hierarchical(ε))"] = doubled(bounds["hierarchical(ε=0.05)"])
  return bounds


def format_table(reports: list[WeightingReport], *, counterexamples: bool = True) -> str:
  """Scheme × property table (✓ held on every input tried, ✗ counterexample found, n/a (reason)
  not applicable by design), its legend, then the counterexamples."""
  return checks.format_table(
    reports,
    properties=PROPERTIES,
    subject="weighting scheme",
    kind="property",
    counterexamples=counterexamples,
  )


def check_builtin(**kwargs) -> list[WeightingReport]:
  """Reports of every scheme of `builtin_schemes` (kwargs go to `check`)."""
  reports, bounds, not_applicable = [], builtin_bounds(), builtin_not_applicable()
  for name, scheme in builtin_schemes().items():
    print(f"checking weighting {name} ...", file=sys.stderr, flush=True)
    report = check(
      scheme,
      name=name,
      stability_bounds=bounds.get(name),
      not_applicable=not_applicable.get(name),
      **kwargs,
    )
    reports.append(report)
  return reports


def builtin_text() -> str:
  """The scheme × property table, then the hierarchical product's degenerate case."""
  product = stability.format_product(stability.product_degenerate_case())
  return format_table(check_builtin()) + "\n\n" + product


def main(argv: list[str] | None = None) -> int:
  """Prints the weighting-scheme × property table and the product's degenerate case."""
  return checks.main(
    argv,
    [builtin_text],
    prog="python -m mtkd_jax.weighting_checks",
    description="Checks the built-in weighting schemes against five properties and prints the "
    "table with the smallest counterexample found, then the hierarchical product's degenerate "
    "case.",
  )


if __name__ == "__main__":
  sys.exit(main())
