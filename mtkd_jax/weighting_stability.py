"""Stability of adaptive weights under perturbed teachers, and the product's degenerate case (§VI).

The adaptive-weighting framework (the follow-on work of the paper's §IX) claims that conforming
weighting operators are stable: a small change of the teachers' log-probabilities moves the
weights by a proportionally small amount. This module measures the constant

    L = max ‖w(ℓ') − w(ℓ)‖₁ / ‖ℓ' − ℓ‖_∞      (ℓ, ℓ' normalised log-probabilities [K, B, V];
                                               ‖·‖₁ over teachers, the worst position)

over random and adversarial perturbations (`measure`, property 5 of `weighting_checks`), and
states the analytic bound where one holds:

- Softmax over scores, w = softmax_k(s_k / τ): along a straight path in s the Jacobian
  diag(w) − w wᵀ maps a change d to one of ℓ₁ norm Σ_k w_k |d_k − w·d| ≤ osc_k(d) / 2 (the mean
  absolute deviation of a distribution on an interval of length r is at most r / 2), so
  ‖Δw‖₁ ≤ osc_k(Δs) / (2τ) ≤ max_k |Δs_k| / τ ≤ L_s ‖Δℓ‖_∞ / τ, with L_s the score's constant:
  - label_aware, s_k = ℓ_k(y) (pooled per domain: its mean): L_s = 1, bound 1 / τ;
  - confidence(max_prob), s_k = max_i p_k(i): exp is 1-Lipschitz on (−∞, 0], L_s = 1;
  - confidence(entropy), s_k = 1 − H(p_k) / log V: dH = −Σ_i p_i (ℓ_i + H) dℓ_i, so
    |ΔH| ≤ MAD_p(−ℓ) ‖Δℓ‖_∞ ≤ 2H ‖Δℓ‖_∞ ≤ 2 log V ‖Δℓ‖_∞: L_s = 2 (loose), bound 2 / τ;
  - confidence(standardized): the z-score divides by the batch's standard deviation (≥ 1e-3
    through its guard), so no useful bound: a flat batch amplifies differences;
  - learned, softmax of gate logits g(f) / τ: it does not read ℓ (L = 0); in the features
    ‖Δw‖₁ ≤ Lip_∞(g) ‖Δf‖_∞ / τ with Lip_∞(g) ≤ ‖W₂‖_∞ · 1.13 · ‖W₁‖_∞ (`gate_lipschitz`;
    1.13 ≥ max GELU′ ≈ 1.129);
  - static: 0.
- The hierarchical product renormalised, w = softmax_k(Σ_j log s̃_jk): scales that do not read
  ℓ only shift the scores, and a softmax scale mixed with uniform, s̃ = (1 − ε) s + ε / K, has
  d log s̃_k = θ_k (dσ_k − s·dσ) with θ_k ∈ [0, 1], whose oscillation is at most osc(dσ): the
  token scale's bound carries over unchanged, for ε ≥ 0.
- safety_floor: normalising the other teachers' weights to 1 − g at most doubles an ℓ₁ change
  (‖x/Σx − y/Σy‖₁ ≤ 2 ‖x − y‖₁ / Σy with Σy ≥ 1 − g), so its bound is twice its input's.

A hard switch (all weight on the most confident teacher) has no finite constant: two inputs as
close as one likes on either side of a tie have weights 2 apart in ℓ₁ (`naive: argmax switch`
in `weighting_checks.builtin_schemes` fails property 5 with such a pair).

The hierarchical product is also checked in the degenerate case (`product_degenerate_case`): a
scale that gives teacher i all its weight where another gives i none. Exactly there the product
is 0 for every teacher and `weighting.hierarchical` returns uniform weights (a defined result,
by convention, not NaN); but no value there is continuous: near the corner the weights follow
whichever scale vanishes slower, so inputs δ apart have weights ≈ 2 apart. With ε > 0 every
factor is ≥ ε / K and

    ‖Δw‖₁ ≤ max_k |Σ_j Δ log s̃_jk| ≤ (1 − ε) K / ε · Σ_j ‖Δs_j‖_∞,

the ε-smoothed product's bound, which `product_degenerate_case` measures against.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import checks, weighting
from mtkd_jax.checks import Counterexample, log_softmax

GELU_LIPSCHITZ = 1.13  # ≥ max_x GELU′(x) ≈ 1.1290 (exact and tanh forms)
SCALES = (1e-1, 1e-2, 1e-3, 1e-4)  # ‖δ‖_∞ of the perturbations tried
UNBOUNDED_LIMIT = 100.0  # a scheme without an analytic bound fails above this constant
_SLACK = 1e-2  # float32 weights: a change of 1e-7 over ‖δ‖ = 1e-4 reads as 1e-3


def softmax_bound(score_lipschitz: float, tau: float) -> float:
  """‖Δw‖₁ ≤ L_s / τ · ‖Δℓ‖_∞ for w = softmax_k(s_k / τ) with scores L_s-Lipschitz in ℓ."""
  return score_lipschitz / tau


def gate_lipschitz(gate_params, tau: float = 1.0) -> float:
  """Bound on ‖Δw‖₁ / ‖Δf‖_∞ of `weighting.learned` with `make_gate`'s two-layer gate.

  The ∞→∞ norm of x ↦ x @ W (flax kernel [in, out]) is the largest column sum of |W|.
  """
  norm = lambda kernel: float(np.abs(np.asarray(kernel)).sum(0).max())
  lip = norm(gate_params["out"]["kernel"]) * GELU_LIPSCHITZ * norm(gate_params["hidden"]["kernel"])
  return lip / tau


# ---------------------------------------------------------------------------------------------
# Property 5 of the weighting checks: the measured constant against the bound.
# ---------------------------------------------------------------------------------------------
class Jacobian:
  """Jᵀu of a scheme in (log-probs, features), jitted and vmapped over trials."""

  def __init__(self, scheme: Callable):
    def vjp(lp, y, f, s, prior, u):
      return jax.vjp(lambda lp, f: scheme(lp, y, f, s, prior), lp, f)[1](u)

    self._fn = jax.jit(jax.vmap(vjp))

  def __call__(self, lp, y, f, s, prior, u):
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    g_lp, g_f = self._fn(f32(lp), jnp.asarray(y, jnp.int32), f32(f), f32(s), f32(prior), f32(u))
    return np.nan_to_num(np.asarray(g_lp, np.float64)), np.nan_to_num(np.asarray(g_f, np.float64))


def _ratio(w, w_new, dx):
  """‖Δw‖₁ at the worst position over ‖Δx‖_∞ per trial [N] (0 where Δx = 0)."""
  dw = np.nan_to_num(np.abs(w_new - w), nan=np.inf).sum(1).max(-1)  # [N]
  den = np.abs(dx).reshape(len(dx), -1).max(-1)
  return np.where(den > 0, dw / np.where(den > 0, den, 1.0), 0.0)


def measure(ev, jac, args, rng, scales=SCALES):
  """The largest ratios over random and adversarial perturbations of log-probs and features.

  Returns:
    `{"log_probs": record, "features": record}`, the worst case of each, with record =
    `(ratio, trial, inputs before, inputs after, w before, w after)` (ratio 0, the rest None
    when nothing moved).
  """
  lp, y, f, s, prior = args
  lp = log_softmax(np.maximum(lp, -30.0))  # finite: −inf + δ stays −inf
  base = (lp, y, f, s, prior)
  w = ev(*base)
  worst = {"log_probs": (0.0,) + (None,) * 5, "features": (0.0,) + (None,) * 5}

  def keep(which, new_args, dx):
    w_new = ev(*new_args)
    r = _ratio(w, w_new, dx)
    j = int(np.argmax(r))
    if r[j] > worst[which][0]:
      worst[which] = (float(r[j]), j, base, new_args, w, w_new)
    return w_new

  for eps in scales:
    for _ in range(2):
      # Random: sign perturbations of random size in [ε/2, ε].
      d_lp = eps * rng.choice([-1.0, 1.0], size=lp.shape) * rng.uniform(0.5, 1, size=lp.shape)
      new_lp = log_softmax(lp + d_lp)
      w_rand = keep("log_probs", (new_lp, y, f, s, prior), new_lp - lp)
      d_f = eps * rng.choice([-1.0, 1.0], size=f.shape)
      keep("features", (lp, y, f + d_f, s, prior), d_f)
      # Adversarial: the sign of Jᵀu maximises the linearised ℓ₁ change for the sign pattern u
      # (random, and that of the random step's change).
      for u in (rng.choice([-1.0, 1.0], size=w.shape), np.sign(w_rand - w)):
        g_lp, g_f = jac(lp, y, f, s, prior, u)
        new_lp = log_softmax(lp + eps * np.sign(g_lp))
        keep("log_probs", (new_lp, y, f, s, prior), new_lp - lp)
        keep("features", (lp, y, f + eps * np.sign(g_f), s, prior), eps * np.sign(g_f))
  return worst


def stability_property(ev, jac, sample, *, bounds, num_teachers, vocab_size, trials, kinds, seed):
  """Property 5 over all sizes: (passed, Counterexample | None, the table cell's text).

  Args:
    ev: the jitted, vmapped scheme (`weighting_checks._Evaluator`).
    jac: its `Jacobian`.
    sample: the trial sampler of the weighting checks.
    bounds: `bounds(k) -> (bound in log-probs, bound in features)`, None where there is no
      analytic bound (then the constant must stay ≤ `UNBOUNDED_LIMIT`).
  """
  rng = np.random.default_rng([seed, 5])
  best = {}  # which -> (ratio − limit, record, bound)
  for k, v in checks.sizes(num_teachers, vocab_size):
    found = measure(ev, jac, checks.trials(sample, rng, k, v, trials, kinds), rng)
    for which, bound in zip(("log_probs", "features"), bounds(k), strict=True):
      limit = UNBOUNDED_LIMIT if bound is None else bound
      excess = found[which][0] - limit
      if which not in best or excess > best[which][0]:
        best[which] = (excess, found[which], bound)
  cells, counterexample = [], None
  for which, short in (("log_probs", ""), ("features", "f: ")):
    excess, (ratio, j, before, after, w, w_new), bound = best[which]
    if which == "features" and ratio == 0:
      continue
    cells.append(f"{short}{ratio:.3g} ≤ {'—' if bound is None else f'{bound:.3g}'}")
    if excess > _SLACK and counterexample is None:
      arg = {"log_probs": 0, "features": 2}[which]
      delta = np.abs(np.asarray(after[arg])[j] - np.asarray(before[arg])[j]).max()
      claim = f"the bound {bound:.3g}" if bound is not None else f"{UNBOUNDED_LIMIT:g} (no bound)"
      what = (
        f"a perturbation of the {which.replace('_', '-')} of size {delta:.2g} (∞-norm) moved w "
        f"by {np.abs(w_new[j] - w[j]).sum(0).max():.3g} in ℓ₁: constant {ratio:.4g} > {claim}"
      )
      names = ("teacher_logits", "labels", "features", "sensitivity", "prior")
      inputs = {n: np.asarray(x)[j] for n, x in zip(names, before, strict=True)}
      inputs.update(
        weights=w[j],
        other_teacher_logits=after[0][j],
        other_features=after[2][j],
        other_weights=w_new[j],
      )
      counterexample = Counterexample(5, what, "‖Δw‖₁ / ‖Δx‖_∞", ratio, inputs)
  return counterexample is None, counterexample, "; ".join(cells)


# ---------------------------------------------------------------------------------------------
# The hierarchical product's degenerate case.
# ---------------------------------------------------------------------------------------------
def product_degenerate_case(epsilons=(0.0, 0.01, 0.05, 0.2), deltas=(1e-2, 1e-4, 1e-6)) -> dict:
  """Two scales with disjoint supports (token all on teacher 0, task all on teacher 1), K = 2,
  and nearby inputs: token (1 − δ, δ) with task (δ, 1 − δ) or task (δ², 1 − δ²).

  Returns, per ε: the weights at the corner (a defined result: uniform), the largest ‖Δw‖₁
  between the two nearby inputs over `deltas` with their ∞-distance, the constant ‖Δw‖₁ /
  (Σ_j ‖Δs_j‖_∞) and the bound (1 − ε) K / ε (inf for ε = 0).
  """
  k = 2
  out = {}
  for eps in epsilons:
    corner = weighting.hierarchical(
      token=jnp.array([1.0, 0.0]), task=jnp.array([0.0, 1.0]), epsilon=eps
    )
    worst = (0.0, 0.0, None)
    for d in deltas:
      token = jnp.array([1.0 - d, d])
      task_a, task_b = jnp.array([d, 1.0 - d]), jnp.array([d * d, 1.0 - d * d])
      w_a = weighting.hierarchical(token=token, task=task_a, epsilon=eps)
      w_b = weighting.hierarchical(token=token, task=task_b, epsilon=eps)
      dw = float(jnp.abs(w_a - w_b).sum())
      dist = float(jnp.abs(task_a - task_b).max())
      if dist > 0 and dw / dist > worst[0]:
        worst = (dw / dist, dw, (d, np.asarray(w_a).tolist(), np.asarray(w_b).tolist()))
    bound = (1.0 - eps) * k / eps if eps > 0 else None  # the plain product: no finite bound
    d, w_a, w_b = worst[2]
    out[f"{eps:g}"] = {
      "corner_weights": np.asarray(corner).tolist(),
      "delta": d,
      "weights_task_delta": w_a,
      "weights_task_delta_squared": w_b,
      "weight_change_l1": worst[1],
      "constant": worst[0],
      "bound": bound,
      "holds": bound is not None and bool(worst[0] <= bound * (1 + 1e-3)),
    }
  return out


def format_product(result: dict) -> str:
  """One line per ε: the corner's weights, the nearby pair's jump, the constant and the bound."""
  lines = [
    "Hierarchical product, degenerate case (K = 2, token (1 − δ, δ), task (δ, 1 − δ) vs "
    "(δ², 1 − δ²)): at δ = 0 the product is empty and the weights are uniform by convention."
  ]
  for eps, r in result.items():
    lines.append(
      f"- ε = {eps}: corner w = {np.round(r['corner_weights'], 3).tolist()}; at δ = {r['delta']:g}"
      f" w = {np.round(r['weights_task_delta'], 3).tolist()} vs "
      f"{np.round(r['weights_task_delta_squared'], 3).tolist()} (‖Δw‖₁ = "
      f"{r['weight_change_l1']:.3g}); "
      + (
        f"constant {r['constant']:.4g} {'≤' if r['holds'] else '>'} bound (1 − ε)K/ε = "
        f"{r['bound']:.4g}"
        if r["bound"] is not None
        else f"constant {r['constant']:.4g} and growing as δ → 0: no finite bound (counterexample)"
      )
    )
  return "\n".join(lines)
