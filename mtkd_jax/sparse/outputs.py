"""Sparse teachers: top-k outputs, their missing tail mass and re-tempering (paper §II-A).

The paper's teachers are temperature-scaled distributions (§II-A, after Sparse-KD, its ref. [3]).
A teacher seen only through its top-k is a `SparseTeacherOutputs`: `indices [K, ..., k]` int32
and `log_probs [K, ..., k]`, the log-probabilities log p_{k,T_g}(i) of the listed tokens at the
teacher's *generation* temperature T_g, normalised over the full vocabulary of size V (as
returned by APIs that expose top-k log-probs). The listed mass Σ_S p ≤ 1 leaves a known
*missing mass* m = 1 − Σ_S p on the V − k unlisted tokens, whose shape is unknown.

Re-tempering to a training temperature T (β = T_g / T) needs the whole distribution, because
p_T(i) = p(i)^β / Σ_j p(j)^β. We temper a *completion* of the truncated distribution: the
unlisted tokens get the maximum-entropy (uniform) share m / (V − k) each, so

    p̃_T(i) = p(i)^β / Z                      (i listed)
    p̃_T(j) = (m / (V − k))^β / Z             (j unlisted, each)
    Z = Σ_S p(i)^β + (V − k)·(m / (V − k))^β.

This is exact for β = 1 and for k = V. Otherwise it is an approximation: for β < 1 (T > T_g) the
power x^β is concave, so the uniform completion *overestimates* the tempered tail mass (the
true tail Σ_tail p_j^β is at most the uniform one); for β > 1 it underestimates it. Listed
tokens keep their exact relative values p(i)^β in every mode. The tail modes then say what the
student is asked to match outside the support:

- `"drop"`:    the tail is discarded; each teacher is renormalised on its support
               (softmax(β·log p) over S). This is what other toolkits do; it biases the target.
- `"uniform"`: the tempered tail mass is spread evenly over the unlisted tokens (the completion
               above, compared token by token with the student).
- `"bucket"`:  the same tempered tail mass is one extra class; the student is compared on the
               coarse partition {each listed token} ∪ {all others}, whose student mass is
               P_S(tail) = Σ_{j ∉ S} p_S(j). (Tempering the bucket as a single class, m^β, would
               send the tail mass to 1/(k + 1) instead of (V − k)/V as T → ∞, so we don't.)

The operators on the union of supports are in `mtkd_jax.sparse.operators`, the loss in
`mtkd_jax.sparse.loss`.
"""

from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import temperature as temperature_lib

TAIL_MODES = ("drop", "uniform", "bucket")
_NEG_INF = -jnp.inf


# ---------------------------------------------------------------------------------------------
# Types.
# ---------------------------------------------------------------------------------------------
@flax.struct.dataclass
class SparseTeacherOutputs:
  """Top-k outputs of K teachers at their generation temperatures (a pytree).

  Attributes:
    indices: `[K, ..., k]` int32 token ids, distinct within each row of each teacher.
    log_probs: `[K, ..., k]` log p_{k,T_g}(i) normalised over all V tokens (bf16/f16/f32).
    generation_temperatures: `[K]` the temperatures T_g the log-probs were produced at.
    vocab_size: V (static).
    missing_log_mass: optional `[K, ...]` log of the mass outside the listed tokens, as a store
      holds it (computed from the logits); when None it is log(1 − Σ p), which loses a tail
      below float rounding of the listed mass.
  """

  indices: jax.Array
  log_probs: jax.Array
  generation_temperatures: jax.Array
  vocab_size: int = flax.struct.field(pytree_node=False)
  missing_log_mass: jax.Array | None = None

  @property
  def num_teachers(self) -> int:
    return self.indices.shape[0]

  @property
  def k(self) -> int:
    return self.indices.shape[-1]

  def truncate(self, k: int) -> SparseTeacherOutputs:
    """The top-`k` prefix (outputs are stored sorted by decreasing probability)."""
    if not 1 <= k <= self.k:
      raise ValueError(f"k must be in [1, {self.k}], got {k=}")
    missing = self.missing_log_mass
    if missing is not None and k < self.k:  # the dropped listed tokens join the tail
      lp = self.log_probs.astype(jnp.float32)
      missing = jnp.logaddexp(missing, jax.nn.logsumexp(lp[..., k:], axis=-1))
    return self.replace(
      indices=self.indices[..., :k], log_probs=self.log_probs[..., :k], missing_log_mass=missing
    )


@flax.struct.dataclass
class SparseTarget:
  """An aggregated target q on a support U plus a tail (a pytree; see the module docstring).

  Attributes:
    indices: `[..., n]` int32; every index is in U, a token may repeat.
    log_probs: `[..., n]` float32 log q(i) at the first occurrence of each token, −inf at repeats.
    valid: `[..., n]` bool, True at the first occurrence of each token of U.
    tail_log_mass: `[...]` float32 log of the target mass on V \\ U (−inf: none).
    tail_mode: "drop", "uniform" (tail spread over V \\ U) or "bucket" (one class).
    vocab_size: V (static).
  """

  indices: jax.Array
  log_probs: jax.Array
  valid: jax.Array
  tail_log_mass: jax.Array
  tail_mode: str = flax.struct.field(pytree_node=False)
  vocab_size: int = flax.struct.field(pytree_node=False)

  def num_tail(self) -> jax.Array:
    """|V \\ U| per row, `[...]` int32."""
    return self.vocab_size - jnp.sum(self.valid, axis=-1, dtype=jnp.int32)


def _check_tail_mode(tail_mode: str) -> None:
  if tail_mode not in TAIL_MODES:
    raise ValueError(f"tail_mode must be one of {TAIL_MODES}, got {tail_mode=!r}")


def sparse_outputs(indices, log_probs, *, generation_temperatures=1.0, vocab_size: int):
  """Builds a validated `SparseTeacherOutputs`.

  Shapes are always checked; on concrete inputs also 0 ≤ index < V, distinct indices per row
  and log-probs ≤ 0 up to rounding. Raises ValueError naming the argument and its shape.

  >>> out = sparse_outputs(jnp.array([[2, 0]]), jnp.log(jnp.array([[0.6, 0.3]])), vocab_size=4)
  >>> out.k, out.num_teachers
  (2, 1)
  """
  indices, log_probs = jnp.asarray(indices), jnp.asarray(log_probs)
  if indices.ndim < 2 or indices.shape != log_probs.shape:
    raise ValueError(
      f"indices and log_probs must both have shape [K, ..., k], got "
      f"indices.shape={indices.shape}, log_probs.shape={log_probs.shape}"
    )
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"indices must be integers, got indices.dtype={indices.dtype}")
  if not 1 <= indices.shape[-1] <= vocab_size:
    raise ValueError(
      f"k must be in [1, vocab_size={vocab_size}], got indices.shape={indices.shape}"
    )
  num_teachers = indices.shape[0]
  t_g = temperature_lib.check_temperatures(
    generation_temperatures, num_teachers, name="generation_temperatures"
  )
  t_g = jnp.broadcast_to(t_g, (num_teachers,))
  if temperature_lib.is_concrete(indices) and temperature_lib.is_concrete(log_probs):
    idx = np.asarray(indices)
    if idx.size and (idx.min() < 0 or idx.max() >= vocab_size):
      raise ValueError(
        f"indices must be in [0, {vocab_size}), got range [{idx.min()}, {idx.max()}] "
        f"for indices.shape={idx.shape}"
      )
    srt = np.sort(idx, axis=-1)
    if np.any(srt[..., 1:] == srt[..., :-1]):
      raise ValueError(f"indices must be distinct within each row, indices.shape={idx.shape}")
    lp = np.asarray(log_probs, np.float32)
    if np.any(np.isnan(lp)) or np.any(lp > 1e-2):
      raise ValueError(f"log_probs must be ≤ 0 and not NaN, log_probs.shape={lp.shape}")
  return SparseTeacherOutputs(indices.astype(jnp.int32), log_probs, t_g, int(vocab_size))


def from_dense(teacher_logits, k: int, *, generation_temperatures=1.0) -> SparseTeacherOutputs:
  """Top-k of dense teacher outputs at their generation temperatures (what a store holds).

  Args:
    teacher_logits: `[K, ..., V]` logits or log-probs.
    k: number of tokens kept per row, 1 ≤ k ≤ V.
    generation_temperatures: `[K]` or scalar T_g.

  Returns:
    `SparseTeacherOutputs` with log_softmax(z / T_g) at the top-k, sorted by decreasing
    probability (float32; cast to bf16/f16 to store).

  >>> out = from_dense(jnp.log(jnp.array([[[0.1, 0.6, 0.3]]])), 2)
  >>> out.indices.tolist(), [round(float(p), 3) for p in jnp.exp(out.log_probs).ravel()]
  ([[[1, 2]]], [0.6, 0.3])
  """
  x = jnp.asarray(teacher_logits)
  if x.ndim < 2 or not 1 <= k <= x.shape[-1]:
    raise ValueError(f"need teacher_logits [K, ..., V] and 1 ≤ k ≤ V, got shape={x.shape}, {k=}")
  from mtkd_jax import operators as operators_lib  # (operators imports nothing sparse)

  operators_lib.check_finite_teachers(x)  # NaN or +inf: an error here, NaN rows under jit
  t_g = temperature_lib.check_temperatures(generation_temperatures, x.shape[0])
  log_p = temperature_lib.scale(x, t_g)  # [K, ..., V]
  values, indices = jax.lax.top_k(log_p, k)  # [K, ..., k], sorted descending
  t_g = jnp.broadcast_to(t_g, (x.shape[0],))
  return SparseTeacherOutputs(indices.astype(jnp.int32), values, t_g, int(x.shape[-1]))


# ---------------------------------------------------------------------------------------------
# Tail mass and re-tempering.
# ---------------------------------------------------------------------------------------------
def missing_log_mass(log_probs: jax.Array) -> jax.Array:
  """log m = log(1 − Σ_i exp(log_probs_i)) over the last axis; −inf when Σ ≥ 1 (rounding).

  >>> float(jnp.exp(missing_log_mass(jnp.log(jnp.array([0.5, 0.25])))))
  0.25
  """
  lp = jnp.asarray(log_probs)
  lp = lp.astype(temperature_lib.compute_dtype(lp.dtype))
  # 1 − Σ p in float32 loses everything below ~6e-8 when the top token is near 1, and a
  # re-tempering to a much higher T turns that into a visible error (T/T_g = 4 made a
  # 1.5e-5 tail 3% wrong). Instead m = (1 − p_max) − Σ_{others} p, with 1 − p_max = −expm1.
  top = jnp.argmax(lp, axis=-1)  # [...]
  l_max = jnp.take_along_axis(lp, top[..., None], axis=-1)[..., 0]
  others = jnp.arange(lp.shape[-1]) != top[..., None]
  rest = jnp.sum(jnp.where(others, jnp.exp(lp), 0.0), axis=-1)
  m = -jnp.expm1(jnp.minimum(l_max, 0.0)) - rest
  return jnp.where(m > 0, jnp.log(jnp.where(m > 0, m, 1.0)), _NEG_INF)


def retemper(outputs: SparseTeacherOutputs, temperatures, *, tail_mode: str = "uniform"):
  """Re-tempers each teacher's truncated distribution from T_g,k to T_k (module docstring).

  With β_k = T_g,k / T_k, a listed token gets β·log p(i) − log Z and each of the V − k unlisted
  tokens β·log(m / (V − k)) − log Z ("uniform"/"bucket"; Z the completion's normaliser) or
  nothing ("drop", Z = Σ_S p(i)^β).

  Args:
    outputs: `SparseTeacherOutputs` with `[K, ..., k]` arrays.
    temperatures: `[K]` or scalar training temperatures T_k > 0.
    tail_mode: one of `TAIL_MODES`.

  Returns:
    `(support_log_probs [K, ..., k], tail_token_log_prob [K, ...], tail_log_mass [K, ...])`
    float32: the tempered log-probs of the listed tokens, of one unlisted token, and of the
    whole unlisted set (−inf under "drop", or when m = 0 or k = V).

  >>> out = sparse_outputs(jnp.array([[0]]), jnp.log(jnp.array([[0.5]])), vocab_size=3)
  >>> s, tok, tail = retemper(out, 1.0)
  >>> jnp.exp(s).round(3), jnp.exp(tok).round(3), jnp.exp(tail).round(3)
  (Array([[0.5]], dtype=float32), Array([0.25], dtype=float32), Array([0.5], dtype=float32))
  """
  _check_tail_mode(tail_mode)
  num_teachers, k, v = outputs.num_teachers, outputs.k, outputs.vocab_size
  t = temperature_lib.check_temperatures(temperatures, num_teachers)
  t = jnp.broadcast_to(t, (num_teachers,))
  lp = outputs.log_probs.astype(temperature_lib.compute_dtype(outputs.log_probs.dtype))
  beta = (outputs.generation_temperatures / t).reshape((num_teachers,) + (1,) * (lp.ndim - 2))
  scaled = beta[..., None] * lp  # [K, ..., k]
  # A teacher whose listed log-probs are all −inf is absent in that row (a top-1 has mass
  # otherwise): all −inf out, never −inf − (−inf) = NaN.
  absent = jnp.all(lp == _NEG_INF, axis=-1)  # [K, ...]
  lse_support = jax.nn.logsumexp(scaled, axis=-1)  # [K, ...]
  num_unlisted = v - k
  if tail_mode == "drop" or num_unlisted == 0:
    log_z, token = lse_support, jnp.full_like(lse_support, _NEG_INF)
  else:
    stored = outputs.missing_log_mass
    missing = missing_log_mass(lp) if stored is None else stored.astype(lp.dtype)
    token = beta * (missing - math.log(num_unlisted))  # [K, ...] unnormalised
    log_z = jnp.logaddexp(lse_support, math.log(num_unlisted) + token)
    token = jnp.where(absent, _NEG_INF, token - log_z)
  log_z = jnp.where(absent, 0.0, log_z)
  tail = token + (math.log(num_unlisted) if num_unlisted else 0.0)
  return scaled - log_z[..., None], token, tail
