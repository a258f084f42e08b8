"""Temperature scaling in the probability domain (paper §II-A).

A teacher seen only through its distribution p is tempered as p_T(i) ∝ p(i)^{1/T}, i.e.
`log_softmax(log p / T)`. For logits z this equals `log_softmax(z / T)`, because the normaliser
of log p is a per-row constant that the outer log-softmax removes. T = 1 leaves p unchanged,
T → ∞ tends to uniform, and T → 0+ tends to one-hot at the argmax (ties share the mass).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("logits", "log_probs", "probs")


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype we compute in: at least float32 (bfloat16/float16 inputs are upcast)."""
  return jnp.promote_types(dtype, jnp.float32)


def is_concrete(x) -> bool:
  """True when `x` holds known values (not a tracer), so value checks can run eagerly."""
  return not isinstance(x, jax.core.Tracer)


def check_temperatures(temperatures, num_teachers: int | None = None, *, name="temperatures"):
  """Validates temperatures: shape `[]` or `[K]`; positive and finite when concrete.

  Returns the temperatures as a float32 (or wider) array. Raises `ValueError` naming the argument
  and its shape. Value checks run only on concrete inputs: under `jit` they are skipped.
  """
  t = jnp.asarray(temperatures)
  t = t.astype(compute_dtype(t.dtype))
  if t.ndim > 1 or (num_teachers is not None and t.ndim == 1 and t.shape[0] != num_teachers):
    expected = "[] or [K]" if num_teachers is None else f"[] or [{num_teachers}]"
    raise ValueError(f"{name} must have shape {expected}, got {name}.shape={t.shape}")
  if is_concrete(t):
    values = np.asarray(t)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
      raise ValueError(
        f"{name} must be positive and finite, got {name}={values.tolist()} "
        f"with {name}.shape={t.shape}"
      )
  return t


def scale(log_p: jax.Array, temperatures, axis: int = -1) -> jax.Array:
  """Tempers distributions in log space: log p_T = log_softmax(log p / T).

  Args:
    log_p: `[K, ..., V]` log-probabilities or logits of K teachers (or any array when
      `temperatures` is a scalar). -inf entries (masked tokens) stay -inf.
    temperatures: scalar or `[K]`, broadcast over the leading teacher axis. Must be > 0.
    axis: the vocabulary axis.

  Returns:
    `log_p_T` with the shape of `log_p`, in float32 (or wider).

  >>> scale(jnp.log(jnp.array([[0.2, 0.8]])), jnp.array([1.0])).round(3)
  Array([[-1.609, -0.223]], dtype=float32)
  """
  log_p = jnp.asarray(log_p)
  log_p = log_p.astype(compute_dtype(log_p.dtype))
  t = check_temperatures(temperatures, log_p.shape[0] if log_p.ndim >= 2 else None)
  if t.ndim == 1:
    t = t.reshape((-1,) + (1,) * (log_p.ndim - 1))  # [K, 1, ..., 1]
  # -inf / T has d/dT = +inf (NaN once multiplied by a zero cotangent): divide finite entries only.
  finite = jnp.isfinite(log_p)
  return log_softmax(jnp.where(finite, jnp.where(finite, log_p, 0.0) / t, log_p), axis=axis)


def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
  """`jax.nn.log_softmax`, except that a row that is entirely -inf (an absent distribution)
  stays -inf with a zero gradient instead of becoming NaN. NaN and +inf still give NaN."""
  absent = jnp.all(x == -jnp.inf, axis=axis, keepdims=True)
  out = jax.nn.log_softmax(jnp.where(absent, 0.0, x), axis=axis)  # double where: no NaN grad
  return jnp.where(absent, -jnp.inf, out)


def to_log_probs(x: jax.Array, kind: str, axis: int = -1) -> jax.Array:
  """Converts teacher outputs to normalised log-probabilities.

  Args:
    x: `[..., V]` logits, log-probabilities or probabilities.
    kind: one of "logits", "log_probs", "probs". Zeros in "probs" give -inf, not NaN.
    axis: the vocabulary axis.

  Returns:
    Normalised log-probabilities, float32 (or wider).

  >>> to_log_probs(jnp.array([0.0, 1.0]), "probs")
  Array([-inf,   0.], dtype=float32)
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind=!r}")
  x = jnp.asarray(x)
  x = x.astype(compute_dtype(x.dtype))
  if kind == "probs":
    # log(0) = -inf exactly; renormalise in log space so probs need not sum to 1 exactly.
    log_x = jnp.where(x > 0, jnp.log(jnp.where(x > 0, x, 1.0)), -jnp.inf)
    return jax.nn.log_softmax(log_x, axis=axis)
  return jax.nn.log_softmax(x, axis=axis)
