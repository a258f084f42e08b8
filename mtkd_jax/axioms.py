"""The paper's five axioms (§II-B) as executable checks with counterexamples.

`check(op)` tests any operator `op(teacher_logits, *, temperatures, weights) -> log_q`
numerically, on random and adversarial inputs (near-ties, weights near 0, peaked and flat
teachers, extreme temperatures), from the smallest sizes up, and reports per axiom whether it held
and the smallest counterexample found:

1. Convexity preservation: q ≥ 0 and Σ q = 1.
2. Positivity inheritance: all p_k > 0 ⇒ q > 0.
3. Weight monotonicity: if p_{k,T}(i) > p_{k',T}(i), moving δ of weight from k' to k must not
   lower q(i), and must raise it when w_{k'} > 0.
4. Continuity in p, T and w (including w_k → 0): no jumps. Found by walking straight paths in
   logit, log-temperature and weight space and bisecting the largest step: a continuous operator's
   step shrinks with the interval, a jump does not.
5. Temperature coherence: T = 1 leaves a lone teacher unchanged; T_k → ∞ acts as a uniform
   teacher k; T_k → 0+ as a one-hot teacher k at its argmax (ties share the mass).

A checker only finds what it samples: "passed" means no violation was found, not a proof. The
paper asserts that geometric and entropic pools satisfy all five; this checker finds weight
monotonicity counterexamples for them (the normaliser can lower q(i)), and reports them.

The samplers, the continuity search, the report and the table are `mtkd_jax.checks`'s, shared
with `mtkd_jax.weighting_checks`. `python -m mtkd_jax.axioms` prints the operator × axiom table,
then the weighting-scheme × property table.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import checks
from mtkd_jax import operators as operators_lib
from mtkd_jax.checks import Counterexample, log_softmax

AXIOMS = {
  1: "convexity",
  2: "positivity",
  3: "weight monotonicity",
  4: "continuity",
  5: "temperature coherence",
}
_KINDS = ("random", "peaked", "flat", "near_tie", "small_weight", "extreme_temperature")


# Same report as the weighting checks: per axiom number, passed and a counterexample.
AxiomReport = checks.Report


# ---------------------------------------------------------------------------------------------
# Inputs: random and adversarial teachers, temperatures and weights (NumPy, float64).
# ---------------------------------------------------------------------------------------------


def _sample(rng: np.random.Generator, k: int, v: int, kind: str):
  """One trial: (teacher log-probs [K, V], temperatures [K], weights [K])."""
  logits = rng.normal(size=(k, v)) * rng.choice([0.3, 1.0, 3.0])
  temperatures = np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=k))
  weights = rng.dirichlet(np.ones(k))
  if kind == "peaked":
    logits[np.arange(k), rng.integers(v, size=k)] += rng.uniform(4, 8, size=k)
  elif kind == "flat":
    logits *= 0.01
  elif kind == "near_tie":
    top = np.argsort(logits, axis=-1)[:, -2:]
    logits[np.arange(k), top[:, 0]] = logits[np.arange(k), top[:, 1]] - rng.uniform(0, 1e-3, k)
  elif kind == "small_weight":
    weights[rng.integers(k)] = rng.choice([0.0, 1e-6, 1e-3])
    weights /= weights.sum()
  elif kind == "extreme_temperature":
    temperatures = rng.choice([1e-2, 0.1, 10.0, 1e2], size=k)
  return log_softmax(logits), temperatures, weights


class _Evaluator:
  """`op` jitted and vmapped over trials; returns q as float64 NumPy, [N, V]."""

  def __init__(self, op: Callable):
    self._fn = jax.jit(jax.vmap(lambda lp, t, w: op(lp, temperatures=t, weights=w)))

  def log_q(self, lp, t, w) -> np.ndarray:
    out = self._fn(
      jnp.asarray(lp, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(w, jnp.float32)
    )
    return np.asarray(out, np.float64)

  def q(self, lp, t, w) -> np.ndarray:
    return np.exp(self.log_q(lp, t, w))


def _tempered(lp, t):  # p_{k,T} in float64, [N, K, V]
  return np.exp(log_softmax(lp / t[..., None]))


def _inputs(lp, t, w, **extra) -> dict[str, np.ndarray]:
  return {"teacher_logits": lp, "temperatures": t, "weights": w, **extra}


# ---------------------------------------------------------------------------------------------
# One function per axiom: each returns (violation size, Counterexample) or None at one size.
# ---------------------------------------------------------------------------------------------


def _convexity(ev, lp, t, w, tol):
  q = ev.q(lp, t, w)
  err = np.abs(q.sum(-1) - 1.0)
  err = np.where(np.isfinite(q).all(-1) & (q >= 0).all(-1), err, np.inf)
  j = int(np.argmax(err))
  if err[j] <= tol:
    return None
  return err[j], Counterexample(
    1,
    "q must be a distribution (q ≥ 0, Σ q = 1, no NaN)",
    "|Σ_i q(i) − 1|",
    float(err[j]),
    _inputs(lp[j], t[j], w[j], q=q[j]),
  )


def _positivity(ev, lp, t, w, tol):
  del tol
  # Only inputs whose tempered teachers are safely positive in float32 test the axiom.
  tempered = log_softmax(lp / t[..., None])  # [N, K, V]
  ok = (tempered > -30).all(axis=(-1, -2))
  log_q = ev.log_q(lp, t, w)
  bad = ok & ~(np.isfinite(log_q) & (log_q > -np.inf)).all(-1)
  if not bad.any():
    return None
  j = int(np.argmax(bad))
  return 1.0, Counterexample(
    2,
    "all p_k > 0 but some q(i) = 0 (or NaN)",
    "min_i q(i)",
    float(np.nanmin(np.exp(log_q[j]))),
    _inputs(lp[j], t[j], w[j], log_q=log_q[j]),
  )


def _monotonicity(ev, lp, t, w, tol, delta=0.05):
  k = lp.shape[1]
  p = _tempered(lp, t)
  q = ev.q(lp, t, w)
  worst = None
  for a in range(k):  # weight moves to teacher a ...
    for b in range(k):  # ... from teacher b.
      if a == b:
        continue
      d = np.minimum(delta, w[:, b])  # [N]
      w2 = w.copy()
      w2[:, a] += d
      w2[:, b] -= d
      w2 /= w2.sum(-1, keepdims=True)  # renormalised (a no-op up to rounding)
      q2 = ev.q(lp, t, w2)
      more = p[:, a] > p[:, b] + 1e-3  # [N, V] tokens where teacher a puts more mass
      change = q2 - q
      # Non-strict: q(i) must not drop. Strict: where the move is real and the linear change
      # δ (p_a(i) − p_b(i)) is well above float noise, q(i) must rise.
      drop = np.where(more, -change, -np.inf)
      linear_change = d[:, None] * (p[:, a] - p[:, b])
      # (Only where q(i) is not saturated at 0 or 1: there no float32 change can show.)
      free = (q > 1e-3) & (q < 1 - 1e-3)
      stuck = more & free & (d[:, None] > 0) & (linear_change > 1e-3) & (change <= tol)
      for size in (drop, np.where(stuck, linear_change, 0.0)):
        j, i = np.unravel_index(np.argmax(size), size.shape)
        if size[j, i] > tol and (worst is None or size[j, i] > worst[0]):
          what = (
            f"moving δ={d[j]:.3g} of weight from teacher {b} to teacher {a}, which puts "
            f"more mass on token {i} ({p[j, a, i]:.4f} > {p[j, b, i]:.4f}), "
            + ("lowered q(i)" if change[j, i] < -tol else "did not raise q(i)")
          )
          inputs = _inputs(lp[j], t[j], w[j], moved_weights=w2[j], q_before=q[j], q_after=q2[j])
          worst = (
            size[j, i],
            Counterexample(3, what, "q(i) before − after", float(q[j, i] - q2[j, i]), inputs),
          )
  return worst


def _continuity(ev, lp, t, w, tol, grid=65, refinements=14, jump=1e-2):
  """Walks paths a → b in logits, log T and w; bisects the largest step to tell a jump."""
  n, k, _ = lp.shape
  rng = np.random.default_rng(0)
  other = np.roll(np.arange(n), 1)
  w_zero = w.copy()
  w_zero[:, 0] = 0.0  # paths that start exactly at w_0 = 0
  rest = w_zero.sum(-1, keepdims=True)
  w_zero = np.where(rest > 0, w_zero / np.where(rest > 0, rest, 1.0), 1.0 / (k - 1))
  w_zero[:, 0] = 0.0
  paths = {  # name -> (start, end) for (lp, log T, w)
    "logits": ((lp, np.log(t), w), (lp + rng.normal(size=lp.shape), np.log(t), w)),
    "temperatures": ((lp, np.log(t) - 2.0, w), (lp, np.log(t) + 2.0, w)),
    "weights": ((lp, np.log(t), w), (lp, np.log(t), w[other])),
    "weights near 0": ((lp, np.log(t), w_zero), (lp, np.log(t), w)),
  }
  worst = None
  for name, (start, end) in paths.items():

    def q_at(s, start=start, end=end):
      lp_s, log_t_s, w_s = checks.path_point(start, end, s, np.arange(n))
      return ev.q(lp_s, np.exp(log_t_s), w_s)

    lo, hi, q_lo, q_hi, step = checks.walk_and_bisect(q_at, n, grid=grid, refinements=refinements)
    r = int(np.argmax(step))
    if step[r] > jump and (worst is None or step[r] > worst[0]):
      lp_lo, log_t_lo, w_lo = checks.path_point(start, end, lo[[r]], [r])
      lp_hi, log_t_hi, w_hi = checks.path_point(start, end, hi[[r]], [r])
      inputs = {
        "teacher_logits": lp_lo[0],
        "temperatures": np.exp(log_t_lo[0]),
        "weights": w_lo[0],
        "q": q_lo[r],
        "other_teacher_logits": lp_hi[0],
        "other_temperatures": np.exp(log_t_hi[0]),
        "other_weights": w_hi[0],
        "other_q": q_hi[r],
      }
      what = (
        f"q jumps along a path in {name}: a step of {hi[r] - lo[r]:.2g} of the path "
        f"moves q by {step[r]:.3g}"
      )
      worst = (step[r], Counterexample(4, what, "max_i |Δq(i)|", float(step[r]), inputs))
  return worst


def _coherence(ev, lp, t, w, tol, limit_tol=1e-3):
  n, _, v = lp.shape
  # Teachers with clear gaps between tokens and weights bounded away from 0, so the limits are
  # reached at T = 1e5 and 1e-4 to within limit_tol in float32.
  gaps = np.sort(lp, -1)
  clear = (np.diff(gaps, axis=-1) > 0.1).all(axis=(-1, -2)) & (w > 0.05).all(-1)
  worst = None

  def compare(name, got, want, mask, lp_, t_, w_, bound):
    nonlocal worst
    err = np.where(mask, np.abs(got - want).max(-1), 0.0)
    err = np.where(np.isfinite(err), err, np.inf)
    j = int(np.argmax(err))
    if err[j] > bound and (worst is None or err[j] > worst[0]):
      worst = (
        err[j],
        Counterexample(
          5,
          name,
          "max_i |q(i) − expected(i)|",
          float(err[j]),
          _inputs(lp_[j], t_[j], w_[j], q=got[j], expected=want[j]),
        ),
      )

  # T = 1 leaves a lone teacher as is.
  one = np.ones((n, 1))
  lone = "K = 1, T = 1: a lone untempered teacher must come out unchanged"
  compare(
    lone,
    ev.q(lp[:, :1], one, one),
    np.exp(lp[:, 0]),
    np.ones(n, bool),
    lp[:, :1],
    one,
    one,
    10 * tol,
  )
  # T_0 → ∞ acts as a uniform teacher 0; T_0 → 0+ as a one-hot teacher 0 (ties share).
  ones = np.ones_like(t)
  uniform = lp.copy()
  uniform[:, 0] = -np.log(v)
  hot = np.isclose(lp[:, 0], lp[:, 0].max(-1, keepdims=True), rtol=0, atol=0)
  one_hot = lp.copy()
  one_hot[:, 0] = np.where(hot, -np.log(hot.sum(-1, keepdims=True)), -np.inf)
  limits = (
    (1e5, uniform, "T_0 → ∞ must act as a uniform teacher 0"),
    (1e-4, one_hot, "T_0 → 0+ must act as a one-hot teacher 0"),
  )
  for t0, reference, name in limits:
    hot_t = ones.copy()
    hot_t[:, 0] = t0
    compare(name, ev.q(lp, hot_t, w), ev.q(reference, ones, w), clear, lp, hot_t, w, limit_tol)
  # Exact ties at T_0 → 0+ share the mass: duplicate teacher 0's top token.
  tied = lp.copy()
  top = lp[:, 0].argmax(-1)
  second = np.argsort(lp[:, 0], -1)[:, -2]
  tied[np.arange(n), 0, second] = tied[np.arange(n), 0, top]
  tied[:, 0] = log_softmax(tied[:, 0])
  shared = tied.copy()
  shared[:, 0] = np.full((n, v), -np.inf)
  shared[np.arange(n), 0, top] = shared[np.arange(n), 0, second] = np.log(0.5)
  tiny = ones.copy()
  tiny[:, 0] = 1e-4
  compare(
    "T_0 → 0+ with a tie at the argmax must share the mass",
    ev.q(tied, tiny, w),
    ev.q(shared, ones, w),
    clear,
    tied,
    tiny,
    w,
    limit_tol,
  )
  return worst


_CHECKS = {1: _convexity, 2: _positivity, 3: _monotonicity, 4: _continuity, 5: _coherence}


def check(
  op: Callable,
  *,
  num_teachers: int = 3,
  vocab_size: int = 5,
  trials: int = 48,
  seed: int = 0,
  tol: float = 1e-5,
  name: str | None = None,
) -> AxiomReport:
  """Checks the five axioms on `op` numerically and returns the report.

  Sizes (K, V) run from (2, 2) up to (num_teachers, vocab_size); at each size `trials` inputs
  cycle through random, peaked, flat, near-tie, small-weight and extreme-temperature cases. The
  first size with a violation gives the counterexample (the largest violation at that size).

  Args:
    op: `op(teacher_logits, *, temperatures, weights) -> log_q`, jittable and vmappable.
    num_teachers: the largest K tried.
    vocab_size: the largest V tried.
    trials: inputs per size and axiom.
    seed: the random seed; the report is a pure function of the arguments.
    tol: float tolerance for exact identities (Σ q = 1, the T = 1 identity, monotonicity).
    name: the operator's name in the report (default: `op.__name__`).

  Returns:
    An `AxiomReport` with `passed[n]` and `counterexamples[n]` for n = 1..5.

  >>> check(operators.linear).all_passed
  True
  """
  checks.check_arguments(num_teachers, vocab_size, trials)
  ev = _Evaluator(op)

  def find(axiom):
    return lambda rng, k, v: axiom(ev, *checks.trials(_sample, rng, k, v, trials, _KINDS), tol)

  return checks.search(
    {number: find(axiom) for number, axiom in _CHECKS.items()},
    name=name or getattr(op, "__name__", repr(op)),
    num_teachers=num_teachers,
    vocab_size=vocab_size,
    seed=seed,
  )


def builtin_operators() -> dict[str, Callable]:
  """The operators of the printed table."""
  ops = operators_lib
  return {
    "linear": ops.linear,
    "geometric": ops.geometric,
    "power(-1)": ops.power(-1.0),
    "power(0.5)": ops.power(0.5),
    "power(2)": ops.power(2.0),
    "entropic(0.5)": ops.entropic(0.5),
    "barycenter(kl)": ops.barycenter("kl", num_steps=20),
    "barycenter(hellinger)": ops.barycenter("hellinger"),
  }


def check_builtin(**kwargs) -> list[AxiomReport]:
  """Reports of every operator of `builtin_operators` (kwargs go to `check`)."""
  reports = []
  for name, op in builtin_operators().items():
    print(f"checking {name} ...", file=sys.stderr, flush=True)
    reports.append(check(op, name=name, **kwargs))
  return reports


def format_table(reports: list[AxiomReport], *, counterexamples: bool = True) -> str:
  """Operator × axiom table (✓ held on every input tried, ✗ counterexample found)."""
  return checks.format_table(
    reports, properties=AXIOMS, subject="operator", kind="axiom", counterexamples=counterexamples
  )


def main(argv: list[str] | None = None, more_tables=()) -> int:
  """Prints the operator × axiom table (then `more_tables`)."""
  return checks.main(
    argv,
    [lambda: format_table(check_builtin()), *more_tables],
    prog="python -m mtkd_jax.axioms",
    description="Checks the built-in aggregation operators against the paper's five axioms "
    "(§II-B) and the built-in weighting schemes against five properties, and prints both "
    "tables with the smallest counterexample found (about 25 min on 2 busy CPU cores).",
  )


if __name__ == "__main__":
  # The command prints both tables; the two checker modules never import each other.
  from mtkd_jax import weighting_checks

  sys.exit(main(more_tables=[weighting_checks.builtin_text]))
