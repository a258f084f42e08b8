"""Aggregation operators G(p_1..p_K; T, w) → q in log space (paper §II–III).

Every operator has the signature

    log_q = op(teacher_logits, *, temperatures, weights)

with `teacher_logits [K, ..., V]` (logits or log-probabilities: tempering renormalises, so both
give the same q; the one name of the teacher array across the library),
`temperatures [K]` (or a scalar), `weights [K]` or per position `[K, ...]` (a leading prefix of
the teacher batch shape) summing to one over K, and `log_q [..., V]`. Operators apply the
temperatures themselves, are pure, and are `jit`/`vmap`/`grad`-able. Inputs of lower precision
(bfloat16) are computed and returned in float32.

Weights that do not sum to one are an error, not silently renormalised: a weight vector that is
off usually means a bug upstream (a wrong axis, a stale mask). Value checks (weights ≥ 0, finite,
Σ = 1; temperatures > 0) run on concrete inputs; under `jit` only shapes are checked.

Non-finite teacher outputs follow the library's one policy (docs/design.md, "Non-finite
inputs"): NaN or +inf is a ValueError on concrete inputs (naming the teacher and a position)
and a NaN row of log q under `jit`; −inf is a masked token; a teacher whose row is entirely
−inf is absent there and the weights are renormalised over the present teachers; a row with no
present teacher gives log q = −inf everywhere (an empty target, which the losses count as 0).
The operators see no mask: pass `where` to the loss to exclude padding rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import divergences as divergences_lib
from mtkd_jax import registry
from mtkd_jax import temperature as temperature_lib


class Operator(Protocol):
  def __call__(self, teacher_logits: jax.Array, *, temperatures, weights) -> jax.Array: ...


# ---------------------------------------------------------------------------------------------
# Input checks and small numerics shared by the operators (and by losses and theory).
# ---------------------------------------------------------------------------------------------


def check_weights(weights, teacher_shape: tuple[int, ...], *, name="weights") -> jax.Array:
  """Validates weights `[K]` or `[K, ...]` against teachers `[K, ..., V]`.

  Returns float32 weights reshaped to broadcast against the teachers: `[K, ..., 1]`.
  """
  w = jnp.asarray(weights)
  # 16-bit float weights may carry rounding (checked loosely, then renormalised); integer
  # weights (one-hot, e.g. [1, 0]) are exact.
  low_precision = jnp.issubdtype(w.dtype, jnp.floating) and jnp.finfo(w.dtype).bits <= 16
  w = w.astype(temperature_lib.compute_dtype(w.dtype))
  batch_shape = teacher_shape[:-1]  # [K, ...]
  if w.ndim < 1 or w.ndim > len(batch_shape) or w.shape[0] != teacher_shape[0]:
    raise ValueError(
      f"{name} must have shape [K] or a leading prefix of [K, ...] = {batch_shape}, "
      f"got {name}.shape={w.shape} for teacher_logits.shape={teacher_shape}"
    )
  for dim, (a, b) in enumerate(zip(w.shape[1:], batch_shape[1:], strict=False), start=1):
    if a not in (1, b):
      raise ValueError(
        f"{name} axis {dim} has size {a}, expected 1 or {b}: got {name}.shape={w.shape} "
        f"for teacher_logits.shape={teacher_shape}"
      )
  if temperature_lib.is_concrete(w):
    values = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
      raise ValueError(
        f"{name} must be finite and non-negative, got {name}.shape={w.shape} with "
        f"min={np.nanmin(values) if np.any(np.isfinite(values)) else values.ravel()[0]} "
        f"and {np.sum(~np.isfinite(values))} non-finite entries"
      )
    # bfloat16 weights cannot represent 1/3 well; allow their rounding, nothing more.
    atol = 1e-2 if low_precision else 1e-4
    sums = values.sum(axis=0)
    if np.any(np.abs(sums - 1.0) > atol):
      raise ValueError(
        f"{name} must sum to 1 over the teacher axis (axis 0), got sums in "
        f"[{sums.min():.6g}, {sums.max():.6g}] for {name}.shape={w.shape}; "
        "normalise them first, e.g. w / w.sum(axis=0)"
      )
  if low_precision:
    w = w / jnp.sum(w, axis=0)  # remove the rounding of 16-bit weights, which the check allows
  return w.reshape(w.shape + (1,) * (len(teacher_shape) - w.ndim))  # [K, ..., 1]


def check_finite_teachers(x, *, name="teacher_logits", where=None) -> None:
  """ValueError if concrete teacher outputs `[K, ..., V]` hold NaN or +inf in a counted row.

  The message names the argument, the teacher and the first offending position. Rows where the
  per-example mask `where [...]` is False are not counted. Skipped under `jit` (traced `x` or
  `where`): there the row's loss is NaN instead (`row_status`).
  """
  if not temperature_lib.is_concrete(x) or (where is not None and not is_concrete_tree(where)):
    return
  with jax.ensure_compile_time_eval():  # concrete values inside a jit trace (closures) too
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return
    bad = jnp.isnan(x) | (x == jnp.inf)  # [K, ..., V], on the device: one bool comes back
    if where is not None:
      bad &= jnp.broadcast_to(jnp.asarray(where, bool), x.shape[1:-1])[None, ..., None]
    found = bool(jnp.any(bad))
  if found:
    values, bad = np.asarray(x), np.asarray(bad)
    pos = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
      f"{name} must not hold NaN or +inf (−inf masks a token): teacher {pos[0]} has "
      f"{values[pos]} at position {pos[1:]} of {name}.shape={values.shape}, "
      f"{int(bad.sum())} such entries in all"
    )


def is_concrete_tree(x) -> bool:
  """True when no leaf of `x` is a tracer."""
  return all(temperature_lib.is_concrete(leaf) for leaf in jax.tree.leaves(x))


def row_status(log_p: jax.Array, w: jax.Array):
  """Per row: weights renormalised over the present teachers, and the non-finite row flags.

  Args:
    log_p: `[K, ..., V]` tempered teacher log-probs (raw outputs work too: only NaN, +inf and
      rows that are entirely −inf matter here).
    w: `[K, ..., 1]` weights (broadcastable to `[K, ..., 1]`).

  Returns:
    `(w_eff [K, ..., 1], bad [...], empty [...])`: a teacher whose row is entirely −inf is
    absent, and w_eff_k = w_k·present_k / Σ_j w_j·present_j (w itself where every teacher is
    present, so finite inputs are untouched); `bad` marks rows where some teacher (whatever its
    weight) has NaN or +inf; `empty` rows where no teacher of positive weight is present.
  """
  row_max = jnp.max(log_p, axis=-1, keepdims=True)  # [K, ..., 1]; NaN propagates
  bad = jnp.any(jnp.isnan(row_max) | (row_max == jnp.inf), axis=0)[..., 0]  # [...]
  present = row_max > -jnp.inf  # [K, ..., 1]
  w = jnp.broadcast_to(w, present.shape)
  mass = jnp.sum(jnp.where(present, w, 0.0), axis=0)  # [..., 1]
  empty = mass <= 0
  renorm = jnp.where(present, w, 0.0) / jnp.where(empty, 1.0, mass)
  w_eff = jnp.where(jnp.all(present, axis=0), w, renorm)
  return w_eff, bad, empty[..., 0] & ~bad


def finish(log_q: jax.Array, bad: jax.Array, empty: jax.Array) -> jax.Array:
  """log q with NaN rows where `bad` and −inf rows (an empty target) where `empty`."""
  log_q = jnp.where(empty[..., None], -jnp.inf, log_q)
  return jnp.where(bad[..., None], jnp.nan, log_q)


def prepare(teacher_logits, temperatures, weights, *, where=None, status=False):
  """Checks shapes and values, then returns (tempered log-probs `[K, ..., V]`, `w [K, ..., 1]`).

  The weights are renormalised over the teachers present in each row (`row_status`). With
  `status=True` also returns the row flags `(bad [...], empty [...])`. NaN or +inf in concrete
  teacher outputs is a ValueError (rows where `where` is False are not checked).
  """
  x = jnp.asarray(teacher_logits)
  if x.ndim < 2:
    raise ValueError(
      f"teacher_logits must have shape [K, ..., V] with K teachers, "
      f"got teacher_logits.shape={x.shape}"
    )
  if x.shape[-1] == 0 or x.shape[0] == 0:
    raise ValueError(f"teacher_logits must have K ≥ 1 and V ≥ 1, got shape={x.shape}")
  w = check_weights(weights, x.shape)
  temperature_lib.check_temperatures(temperatures, x.shape[0])
  check_finite_teachers(x, where=where)
  log_p = temperature_lib.scale(x, temperatures)
  w, bad, empty = row_status(log_p, w)
  return (log_p, w, (bad, empty)) if status else (log_p, w)


def safe_log(x: jax.Array) -> jax.Array:
  """log x with log 0 = -inf and a zero (not NaN) gradient at 0."""
  positive = x > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


def logsumexp_over_teachers(terms: list[jax.Array]) -> jax.Array:
  """log Σ_k exp(terms[k]), unrolled over K (no K-axis reduction for XLA:CPU to re-fuse).

  All -inf gives -inf with finite gradients (jax.nn.logsumexp would give NaN gradients there).
  """
  m = jax.lax.stop_gradient(jnp.stack(terms).max(axis=0) if len(terms) > 1 else terms[0])
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  s = sum(jnp.exp(t - m) for t in terms)
  return jnp.where(s > 0, m + jnp.log(jnp.where(s > 0, s, 1.0)), -jnp.inf)


def _weighted_log_sum(log_p: jax.Array, w: jax.Array) -> jax.Array:
  """Σ_k w_k log p_k with 0·(-inf) = 0, and -inf wherever a teacher with w_k > 0 has p_k = 0."""
  finite = jnp.isfinite(log_p)  # [K, ..., V]
  total = sum(w[k] * jnp.where(finite[k], log_p[k], 0.0) for k in range(log_p.shape[0]))
  vetoed = jnp.any((w > 0) & ~finite, axis=0)  # boolean any over K: no softmax behind it.
  return jnp.where(vetoed, -jnp.inf, total)


# ---------------------------------------------------------------------------------------------
# The operators.
# ---------------------------------------------------------------------------------------------


def linear(teacher_logits, *, temperatures, weights) -> jax.Array:
  """Arithmetic mixture q = Σ_k w_k p_{k,T}: minimiser of Σ_k w_k KL(p_k ‖ q).

  Computed as log q = logsumexp_k(log w_k + log p_{k,T}); satisfies all five axioms.

  Args:
    teacher_logits: `[K, ..., V]` log-probabilities (or logits).
    temperatures: `[K]` or scalar, > 0.
    weights: `[K]` or `[K, ...]`, ≥ 0, summing to one over K.

  Returns:
    log q, `[..., V]`.

  >>> lp = jnp.log(jnp.array([[0.9, 0.1], [0.5, 0.5]]))
  >>> jnp.exp(linear(lp, temperatures=jnp.ones(2), weights=jnp.array([0.5, 0.5]))).round(2)
  Array([0.7, 0.3], dtype=float32)
  """
  log_p, w, status = prepare(teacher_logits, temperatures, weights, status=True)
  log_w = safe_log(w)
  return finish(logsumexp_over_teachers([log_w[k] + log_p[k] for k in range(len(log_p))]), *status)


def geometric(teacher_logits, *, temperatures, weights) -> jax.Array:
  """Log-linear pool q ∝ Π_k p_{k,T}^{w_k}: minimiser of Σ_k w_k KL(q ‖ p_k).

  For logits this is softmax(Σ_k w_k z_k / T_k): the teachers' normalisers cancel. Averaging
  teacher logits, as other toolkits do, is this operator with uniform weights. A token that any
  teacher with w_k > 0 excludes (p_k = 0) gets q = 0 (a veto).

  >>> lp = jnp.log(jnp.array([[0.9, 0.1], [0.5, 0.5]]))
  >>> jnp.exp(geometric(lp, temperatures=jnp.ones(2), weights=jnp.array([0.5, 0.5]))).round(2)
  Array([0.75, 0.25], dtype=float32)
  """
  log_p, w, status = prepare(teacher_logits, temperatures, weights, status=True)
  return finish(temperature_lib.log_softmax(_weighted_log_sum(log_p, w)), *status)


def power(alpha: float) -> Operator:
  """Power (α-) mean q ∝ (Σ_k w_k p_{k,T}^α)^{1/α}, Rényi/Amari α-integration.

  α = 1 is `linear`, α → 0 is `geometric` (used exactly at α = 0), α → +∞ / −∞ tends to the
  normalised max / min over teachers. For α < 0 a token any weighted teacher excludes gets 0.

  >>> op = power(0.5)
  >>> lp = jnp.log(jnp.array([[0.9, 0.1], [0.5, 0.5]]))
  >>> jnp.exp(op(lp, temperatures=jnp.ones(2), weights=jnp.array([0.5, 0.5]))).round(3)
  Array([0.724, 0.276], dtype=float32)
  """
  alpha = float(alpha)
  if not np.isfinite(alpha):
    raise ValueError(f"alpha must be finite, got {alpha=}")

  def power_op(teacher_logits, *, temperatures, weights) -> jax.Array:
    log_p, w, status = prepare(teacher_logits, temperatures, weights, status=True)
    if alpha == 0.0:
      return finish(temperature_lib.log_softmax(_weighted_log_sum(log_p, w)), *status)
    log_w = safe_log(w)
    finite = jnp.isfinite(log_p)
    terms = [
      jnp.where(w[k] > 0, log_w[k] + alpha * jnp.where(finite[k], log_p[k], 0.0), -jnp.inf)
      for k in range(log_p.shape[0])
    ]
    if alpha > 0:  # p_k = 0 contributes 0 to the mean.
      terms = [jnp.where(finite[k], terms[k], -jnp.inf) for k in range(log_p.shape[0])]
    log_mean = logsumexp_over_teachers(terms) / alpha
    # Near α = 0 the division above amplifies float32 rounding by 1/α. Centred at the geometric
    # mean g = Σ ŵ_k log p_k, log M_α = g + log1p(Σ_k ŵ_k expm1(α (log p_k − g))) / α is exact
    # and accurate wherever every |α (log p_k − g)| < 1, so it takes over there.
    w_hat = w / jnp.sum(w, axis=0)
    g = sum(w_hat[k] * jnp.where(finite[k], log_p[k], 0.0) for k in range(log_p.shape[0]))
    d = [jnp.where(finite[k], log_p[k] - g, jnp.inf) for k in range(log_p.shape[0])]
    small = jnp.all(
      jnp.stack([(w[k] == 0) | (jnp.abs(alpha * d[k]) < 1) for k in range(len(d))]), axis=0
    )
    z = sum(
      w_hat[k] * jnp.expm1(alpha * jnp.where(small & (w[k] > 0), d[k], 0.0)) for k in range(len(d))
    )
    log_mean = jnp.where(small, g + jnp.log1p(jnp.where(small, z, 0.0)) / alpha, log_mean)
    if alpha < 0:  # p_k = 0 makes p_k^α infinite, so the mean is 0.
      log_mean = jnp.where(jnp.any((w > 0) & ~finite, axis=0), -jnp.inf, log_mean)
    return finish(temperature_lib.log_softmax(log_mean), *status)

  power_op.__name__ = f"power({alpha:g})"
  return power_op


def entropic(beta: float) -> Operator:
  """Entropy-regularised pool q ∝ Π_k p_{k,T}^{w_k/(1+β)}, β ≥ 0.

  The minimiser of Σ_k w_k KL(q ‖ p_k) − β H(q): the geometric pool flattened by a temperature
  1 + β. β = 0 is `geometric`.
  """
  beta = float(beta)
  if not np.isfinite(beta) or beta < 0:
    raise ValueError(f"beta must be finite and ≥ 0, got {beta=}")

  def entropic_op(teacher_logits, *, temperatures, weights) -> jax.Array:
    log_p, w, status = prepare(teacher_logits, temperatures, weights, status=True)
    return finish(temperature_lib.log_softmax(_weighted_log_sum(log_p, w) / (1.0 + beta)), *status)

  entropic_op.__name__ = f"entropic({beta:g})"
  return entropic_op


_LOG_FLOOR = -40.0  # e^-40 ≈ 4e-18: negligible mass, yet 1/q² (second-order terms) stays finite
_MASKED = -1e9  # a finite stand-in for log 0 inside the barycenter iteration


def barycenter(
  divergence: str | Callable[[jax.Array, jax.Array], jax.Array] = "kl",
  *,
  num_steps: int = 100,
  step_size: float = 0.5,
) -> Operator:
  """Numerical barycenter argmin_q Σ_k w_k D(q, p_{k,T}) on the simplex, by mirror descent.

  Exponentiated-gradient steps log q ← log_softmax(log q − η ∇_q F(q)) from the linear mixture,
  a fixed number of times (`lax.fori_loop`), so the operator is jittable and differentiable.
  Built-in D: "kl" (KL(q‖p) → geometric), "reverse_kl" (KL(p‖q) → linear), "hellinger"
  (→ power(1/2)); any `D(log_q, log_p) -> [...]` reducing the last axis works.

  log q is floored at -40 inside the iteration: a token with q(i) = 0 would make gradients such as
  log q − log p or p/q infinite or NaN (and 1/q² in the gradient through the iteration overflows
  below about e^-44). So q(i) is at least about e^-40 ≈ 4e-18 relative to the top token where the
  exact barycenter has 0. Teachers' log-probs are not floored: at tiny temperatures the answer is
  decided far below e^-40.

  Args:
    divergence: a name in `divergences.DIVERGENCES` or a function `D(log_q, log_p)`.
    num_steps: mirror-descent steps.
    step_size: η.
  """
  if isinstance(divergence, str):
    if divergence not in divergences_lib.DIVERGENCES:
      raise ValueError(
        f"divergence must be one of {sorted(divergences_lib.DIVERGENCES)} or a function, "
        f"got {divergence=!r}"
      )
    name, divergence_fn = divergence, divergences_lib.DIVERGENCES[divergence]
  elif callable(divergence):
    name, divergence_fn = getattr(divergence, "__name__", "custom"), divergence
  else:
    raise ValueError(f"divergence must be a name or a function, got {divergence=!r}")
  if int(num_steps) < 0 or not np.isfinite(step_size) or step_size <= 0:
    raise ValueError(f"need num_steps ≥ 0 and step_size > 0, got {num_steps=}, {step_size=}")

  def barycenter_op(teacher_logits, *, temperatures, weights) -> jax.Array:
    log_p, w, status = prepare(teacher_logits, temperatures, weights, status=True)
    # Masked tokens (-inf) become a huge finite penalty: -inf would turn D's gradients into
    # inf − inf = NaN, in the iteration and in the gradient through it.
    log_p = jnp.where(jnp.isfinite(log_p), log_p, _MASKED)
    w = w[..., 0]  # [K, ...]

    def objective(q):  # Σ over rows of Σ_k w_k D(q, p_k); rows are independent.
      log_q = safe_log(q)
      return sum(jnp.sum(w[k] * divergence_fn(log_q, log_p[k])) for k in range(log_p.shape[0]))

    def step(_, log_q):
      grad_q = jax.grad(objective)(jnp.exp(log_q))
      return jnp.maximum(jax.nn.log_softmax(log_q - step_size * grad_q, axis=-1), _LOG_FLOOR)

    log_q0 = logsumexp_over_teachers([safe_log(w[k])[..., None] + log_p[k] for k in range(len(w))])
    log_q0 = jnp.maximum(log_q0, _LOG_FLOOR)
    log_q = jax.lax.fori_loop(0, int(num_steps), step, log_q0)
    return finish(jax.nn.log_softmax(log_q, axis=-1), *status)

  barycenter_op.__name__ = f"barycenter({name})"
  return barycenter_op


# ---------------------------------------------------------------------------------------------
# Registry: names for configs (`mtkd_jax.registry`). Code passes functions.
# ---------------------------------------------------------------------------------------------
registry.register("operator", "linear")(linear)
registry.register("operator", "geometric")(geometric)
registry.register("operator", "power", factory=True)(power)
registry.register("operator", "entropic", factory=True)(entropic)
registry.register("operator", "barycenter", factory=True)(barycenter)


def get(spec: str, **kwargs) -> Operator:
  """The operator named by `spec` ("linear", "power(alpha=0.5)"), or `get("power", alpha=0.5)`.

  >>> get("power", alpha=0.5).__name__
  'power(0.5)'
  """
  return registry.get("operator", spec, **kwargs)


def names() -> list[str]:
  """The registered operator names."""
  return registry.names("operator")
