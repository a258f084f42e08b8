"""Adaptive teacher weights at token, task and context scales, with a safety floor (paper §VI).

The paper treats the weights w_k as given and names capability-based and safety-priority
weighting as design principles (§VI) and data-driven weights as future work (§IX); these are such
schemes. Every scheme is a pure function of explicit inputs (teacher log-probs, labels, features,
a sensitivity score) returning weights `[K, ...]` with w ≥ 0 and Σ_k w_k = 1, ready for the
`weights=` argument of the operators (per-position weights are a leading prefix of the teachers'
batch shape). No scheme reads hidden state.

- `static`: fixed weights, broadcast.
- `confidence`: softmax_k(c_k / τ) of each teacher's confidence (negative normalised entropy or
  max-probability) per position; optionally standardised per teacher with global batch statistics.
- `label_aware`: softmax_k(−CE(p_k, y) / τ) per example, or pooled per domain over the batch.
- `learned`: a small Flax NNX gating network on student features, trained jointly with the
  student on the log-loss of the aggregate, with stop-gradient on the teachers (`gate_loss`).
- `hierarchical`: w ∝ w^token · w^task · w^context, renormalised over K.
- `safety_floor`: the safety teacher's weight is max(w*, floor · min(1, s / threshold)); the
  others share the rest in proportion. It never drops as the sensitivity s rises and is ≥ floor
  where s ≥ threshold. Apply it last: a product with other scales can break the floor.

Schemes that use batch statistics take `axis_name`: inside `shard_map`/`pmap` over the batch,
their sums are `psum`med over it, so 8 devices give the weights of 1. Under `jit` with sharded
global arrays no axis name is needed: the reduction is global already.

The trainer's hooks that call these schemes by name are in `mtkd_jax.weighting.hooks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtkd_jax import losses as losses_lib
from mtkd_jax import models
from mtkd_jax import operators as operators_lib
from mtkd_jax import temperature as temperature_lib

# Log-probabilities are floored here before scoring: −CE of a teacher with p_k(y) = 0 is −inf,
# and an all −inf row would make the softmax over teachers NaN (so would 0·(−inf) in the domain
# pooling). −1e30 is a finite stand-in for −inf: far below any real log-probability, so distinct
# scores such as −100 and −5000 (logits of ±1e4) keep their order. (A floor of −80 made them equal.)
LOG_FLOOR = -1e30
_MIN_SCORE = float(np.finfo(np.float32).min)  # score / τ stays finite for any τ > 0
MEASURES = ("entropy", "max_prob")


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------
def _check_tau(tau, name="tau"):
  """τ > 0 and finite; checked when concrete (a traced τ, e.g. swept under vmap, passes)."""
  if temperature_lib.is_concrete(tau) and (not np.isfinite(tau) or tau <= 0):
    raise ValueError(f"{name} must be positive and finite, got {name}={tau}")
  return tau


def _teacher_log_probs(teacher_logits, temperatures) -> jax.Array:
  x = jnp.asarray(teacher_logits)
  if x.ndim < 2 or x.shape[0] < 1 or x.shape[-1] < 1:
    raise ValueError(
      f"teacher_logits must have shape [K, ..., V], got teacher_logits.shape={x.shape}"
    )
  return temperature_lib.scale(x, temperatures)  # [K, ..., V]


def _softmax_over_teachers(scores: jax.Array) -> jax.Array:
  """softmax over axis 0 of `scores [K, ...]` (small arrays: no vocabulary axis behind it)."""
  return jax.nn.softmax(scores, axis=0)


def _expand_to(x: jax.Array, ndim: int) -> jax.Array:
  """Appends trailing unit axes: a leading-prefix array broadcasts against `ndim` dims."""
  return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def _mask(where, shape, name="where") -> jax.Array:
  if where is None:
    return jnp.ones(shape, jnp.float32)
  where = jnp.asarray(where)
  if jnp.broadcast_shapes(where.shape, shape) != tuple(shape):
    raise ValueError(f"{name} must broadcast to {tuple(shape)}, got {name}.shape={where.shape}")
  return jnp.broadcast_to(where, shape).astype(jnp.float32)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def entropy(weights, axis: int = 0) -> jax.Array:
  """−Σ_k w_k log w_k over `axis` (0 log 0 = 0): 0 for one teacher, log K for uniform weights."""
  w = jnp.asarray(weights, jnp.float32)
  return -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), axis=axis)


# ---------------------------------------------------------------------------------------------
# The schemes.
# ---------------------------------------------------------------------------------------------
def static(weights, batch_shape: tuple[int, ...] = ()) -> jax.Array:
  """Fixed weights w `[K]`, checked and broadcast to `[K, *batch_shape]`.

  >>> static(jnp.array([0.25, 0.75]), (2,))
  Array([[0.25, 0.25],
         [0.75, 0.75]], dtype=float32)
  """
  w = jnp.asarray(weights, jnp.float32)
  if w.ndim != 1:
    raise ValueError(f"weights must have shape [K], got weights.shape={w.shape}")
  operators_lib.check_weights(w, (w.shape[0], 1))
  return jnp.broadcast_to(_expand_to(w, 1 + len(batch_shape)), (w.shape[0], *batch_shape))


def confidence(
  teacher_logits,
  *,
  temperatures=1.0,
  tau: float = 1.0,
  measure: str = "entropy",
  standardize: bool = False,
  where=None,
  axis_name=None,
) -> jax.Array:
  """Token-level confidence weights w_k ∝ exp(c_k / τ), per position.

  c_k = 1 − H(p_{k,T}) / log V (1 for one-hot, 0 for uniform) for `measure="entropy"`, or
  c_k = max_i p_{k,T}(i) for `measure="max_prob"`. With `standardize=True` each teacher's c_k is
  z-scored with its mean and standard deviation over all (unmasked) positions of the global batch
  (`psum` over `axis_name`), so a teacher that is confident everywhere is not preferred everywhere.

  Args:
    teacher_logits: `[K, ..., V]` log-probabilities or logits.
    temperatures: `[K]` or scalar teacher temperatures applied first.
    tau: softmax temperature τ > 0 over teachers (τ → ∞: uniform; τ → 0: most confident).
    measure: "entropy" or "max_prob".
    standardize: z-score each teacher's confidence over the batch.
    where: optional mask `[...]` of positions that count in the batch statistics.
    axis_name: mapped axis (or tuple of axes) the batch is split over, or None.

  Returns:
    weights `[K, ...]`.

  >>> lp = jnp.log(jnp.array([[0.98, 0.02], [0.5, 0.5]]))
  >>> confidence(lp, tau=0.5).round(3)
  Array([0.848, 0.152], dtype=float32)
  """
  tau = _check_tau(tau)
  if measure not in MEASURES:
    raise ValueError(f"measure must be one of {MEASURES}, got {measure=!r}")
  log_p = _teacher_log_probs(teacher_logits, temperatures)  # [K, ..., V]
  p = jnp.exp(log_p)
  if measure == "entropy":
    v = log_p.shape[-1]
    h = -jnp.sum(jnp.where(p > 0, p * jnp.where(p > 0, log_p, 0.0), 0.0), axis=-1)  # [K, ...]
    score = 1.0 - h / np.log(v) if v > 1 else jnp.ones_like(h)
  else:
    score = jnp.max(p, axis=-1)  # [K, ...]
  if standardize:
    mask = _mask(where, score.shape[1:])[None]  # [1, ...]
    axes = tuple(range(1, score.ndim))
    count = _psum(jnp.sum(mask), axis_name)
    mean = _psum(jnp.sum(mask * score, axis=axes, keepdims=True), axis_name) / count  # [K, 1..]
    var = _psum(jnp.sum(mask * (score - mean) ** 2, axis=axes, keepdims=True), axis_name) / count
    score = (score - mean) / jnp.sqrt(var + 1e-6)
  return _softmax_over_teachers(score / tau)


def label_aware(
  teacher_logits,
  labels,
  *,
  temperatures=1.0,
  tau: float = 1.0,
  domains=None,
  num_domains: int | None = None,
  where=None,
  axis_name=None,
) -> jax.Array:
  """Label-aware weights w_k ∝ exp(−CE(p_{k,T}, y) / τ) = p_{k,T}(y)^{1/τ}, renormalised.

  Per example (and per position), or, with `domains`, per domain (task): the cross-entropy of
  teacher k is averaged over the examples of each domain in the global batch (`psum` over
  `axis_name`) and every example gets its domain's weights. log p_k(y) is floored at
  `LOG_FLOOR` so a teacher that excludes y gets weight ≈ 0, not NaN.

  Args:
    teacher_logits: `[K, ..., V]`.
    labels: int `[...]`.
    temperatures: `[K]` or scalar.
    tau: τ > 0.
    domains: optional int `[...]` domain (task) id of each example, in [0, num_domains).
    num_domains: number of domains (static), needed with `domains`.
    where: optional mask `[...]` of examples that count in the domain statistics.
    axis_name: mapped batch axis for the domain statistics, or None.

  Returns:
    weights `[K, ...]`.

  >>> lp = jnp.log(jnp.array([[0.9, 0.1], [0.3, 0.7]]))
  >>> label_aware(lp, jnp.array(0)).round(3)
  Array([0.75, 0.25], dtype=float32)
  """
  tau = _check_tau(tau)
  log_p = _teacher_log_probs(teacher_logits, temperatures)  # [K, ..., V]
  labels = jnp.asarray(labels)
  if labels.shape != log_p.shape[1:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f"labels must be integers of shape teacher_logits.shape[1:-1]={log_p.shape[1:-1]}, "
      f"got labels.shape={labels.shape} ({labels.dtype})"
    )
  idx = jnp.broadcast_to(labels[None, ..., None], (*log_p.shape[:-1], 1))
  score = jnp.maximum(jnp.take_along_axis(log_p, idx, axis=-1)[..., 0], LOG_FLOOR)  # [K, ...]
  if domains is not None:
    domains = jnp.asarray(domains)
    if num_domains is None or num_domains < 1:
      raise ValueError(f"num_domains must be a positive int with domains, got {num_domains=}")
    if domains.shape != labels.shape:
      raise ValueError(f"domains must have labels.shape={labels.shape}, got {domains.shape=}")
    one_hot = jax.nn.one_hot(domains, num_domains) * _mask(where, labels.shape)[..., None]
    axes = tuple(range(labels.ndim))
    count = _psum(jnp.sum(one_hot, axis=axes), axis_name)  # [D]
    sums = _psum(jnp.einsum("k...,...d->kd", score, one_hot), axis_name)  # [K, D]
    pooled = sums / jnp.maximum(count, 1.0)  # [K, D] mean log p_k(y) per domain
    score = jnp.take(pooled, domains, axis=1)  # [K, ...]
  return _softmax_over_teachers(jnp.maximum(score / tau, _MIN_SCORE))


# ---- learned gating ---------------------------------------------------------------------------
class GatingNetwork(nnx.Module):
  """Features `[..., D]` → gate logits `[..., K]`: Linear → GELU → Linear.

  >>> gate = GatingNetwork(5, 3, hidden=8, rngs=nnx.Rngs(0))
  >>> gate(jnp.ones((2, 5))).shape
  (2, 3)
  """

  def __init__(self, num_features: int, num_teachers: int, *, hidden: int = 32, rngs):
    self.hidden = nnx.Linear(num_features, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_teachers, rngs=rngs)

  def __call__(self, features):  # [..., D] -> [..., K]
    return self.out(jax.nn.gelu(self.hidden(features)))


def make_gate(num_features: int, num_teachers: int, *, hidden: int = 32) -> models.FunctionalModel:
  """The gating network as pure `(init(rng) -> params, apply(params, features) -> logits)`.

  Params are a nested dict of arrays, like `models.build` gives, so they checkpoint and shard
  with the student's.

  >>> gate = make_gate(5, 3, hidden=8)
  >>> gate.apply(gate.init(jax.random.key(0)), jnp.ones((2, 5))).shape
  (2, 3)
  """
  make = lambda rng: GatingNetwork(
    num_features, num_teachers, hidden=hidden, rngs=nnx.Rngs(params=rng)
  )
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: make(jax.random.key(0))))

  def init(rng):
    return nnx.to_pure_dict(nnx.split(make(rng))[1])

  def apply(params, features):
    state = jax.tree.map(lambda v: v, abstract_state)  # a fresh container, filled below
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)(features)

  return models.FunctionalModel(init=init, apply=apply)


def learned(gate_apply: Callable, gate_params, features, *, tau: float = 1.0) -> jax.Array:
  """Learned weights w = softmax_k(g_φ(features) / τ) from a gating network on student features.

  The features are stop-gradiented: the gate reads the student, it does not train it.

  Args:
    gate_apply: `apply(params, features [..., D]) -> logits [..., K]` (see `make_gate`).
    gate_params: the gate's parameters φ.
    features: `[..., D]` student-side features (inputs, hidden states, or its probabilities).
    tau: τ > 0.

  Returns:
    weights `[K, ...]`.
  """
  tau = _check_tau(tau)
  logits = gate_apply(gate_params, jax.lax.stop_gradient(jnp.asarray(features)))  # [..., K]
  return jnp.moveaxis(jax.nn.softmax(logits.astype(jnp.float32) / tau, axis=-1), -1, 0)


def gate_loss(weights, teacher_logits, labels, *, temperatures=1.0, where=None) -> jax.Array:
  """The gate's objective: the log-loss −log Σ_k w_k p_{k,T}(y) of the weighted mixture.

  Teacher outputs are stop-gradiented, so only the gate (through `weights`) is trained. Training
  the gate on the distillation loss KL(q_w ‖ p_S) instead rewards the teacher the student already
  imitates and collapses onto it; the label log-loss rewards the teacher that is right.

  Returns:
    `[...]` per-example losses (0 where `where` is False).
  """
  log_p = jax.lax.stop_gradient(_teacher_log_probs(teacher_logits, temperatures))  # [K,..,V]
  labels = jnp.asarray(labels)
  idx = jnp.broadcast_to(labels[None, ..., None], (*log_p.shape[:-1], 1))
  log_py = jnp.maximum(jnp.take_along_axis(log_p, idx, axis=-1)[..., 0], LOG_FLOOR)  # [K, ...]
  w = jnp.asarray(weights, jnp.float32)
  w = _expand_to(w, log_py.ndim)
  log_w = operators_lib.safe_log(w)
  loss = -operators_lib.logsumexp_over_teachers([log_w[k] + log_py[k] for k in range(len(w))])
  return losses_lib.apply_where(loss, where)


# ---- composition and safety -------------------------------------------------------------------
def hierarchical(*, token=None, task=None, context=None, epsilon: float = 0.0) -> jax.Array:
  """Three scales composed: w_k ∝ w_k^token · w_k^task · w_k^context, renormalised over K.

  Each scale is `[K, ...]` with a leading prefix of the finest batch shape (e.g. token
  `[K, B, L]`, task and context `[K, B]`); missing scales are skipped. With `epsilon > 0` each
  scale is first mixed with uniform, (1 − ε) w + ε / K. Without it the product is discontinuous
  where the scales' supports (nearly) do not overlap: at an exactly empty overlap the weights are
  uniform by convention, but nearby they follow whichever scale vanishes slower (the checker in
  `mtkd_jax.weighting_checks` shows the jump). With ε > 0 every factor is ≥ ε/K and the product
  is continuous.

  >>> hierarchical(token=jnp.array([0.5, 0.5]), task=jnp.array([0.2, 0.8])).round(2)
  Array([0.2, 0.8], dtype=float32)
  """
  scales = [jnp.asarray(s, jnp.float32) for s in (token, task, context) if s is not None]
  if not scales:
    raise ValueError("hierarchical needs at least one of token=, task=, context=")
  if not 0.0 <= epsilon <= 1.0:
    raise ValueError(f"epsilon must be in [0, 1], got {epsilon=}")
  k = scales[0].shape[0]
  ndim = max(s.ndim for s in scales)
  full = next(s for s in scales if s.ndim == ndim).shape
  log_w = 0.0
  for name, s in zip(("token", "task", "context"), (token, task, context), strict=True):
    if s is None:
      continue
    s = jnp.asarray(s, jnp.float32)
    if s.ndim < 1 or s.shape[0] != k:
      raise ValueError(f"{name} must have shape [K={k}, ...], got {name}.shape={s.shape}")
    s = operators_lib.check_weights(s, (*full, 1), name=name)[..., 0]  # [K, ..., 1s]
    if epsilon:
      s = (1.0 - epsilon) * s + epsilon / k
    log_w = log_w + operators_lib.safe_log(s)  # [K, ...]
  log_w = jnp.broadcast_to(log_w, full)
  empty = jnp.all(log_w == -jnp.inf, axis=0)  # boolean any/all over K: no softmax behind it
  w = jax.nn.softmax(jnp.where(empty, 0.0, log_w), axis=0)
  return w


def safety_floor(
  weights, *, safety_teacher: int, floor: float, sensitivity, threshold: float = 0.5
) -> jax.Array:
  """Raises the safety teacher's weight to a floor that grows with the context's sensitivity.

      w*' = max(w*, g(s)),  g(s) = floor · clip(s / threshold, 0, 1),
      w_k' = w_k · (1 − w*') / (1 − w*)  for k ≠ k*   (0 when w* = 1)

  so Σ w' = 1, w*' ≥ floor where s ≥ threshold ("sensitive"), w*' never decreases as s rises
  (for base weights that do not themselves depend on s), and w' is continuous in (w, s).

  Args:
    weights: `[K, ...]` weights of any scheme (apply this last: a later product or
      renormalisation with other scales can break the floor).
    safety_teacher: index k* of the safety teacher.
    floor: minimal safety weight in sensitive contexts, in [0, 1].
    sensitivity: `[...]` scores (a leading prefix of `weights.shape[1:]`), clipped to [0, 1].
    threshold: sensitivity from which the full floor applies, in (0, 1].

  Returns:
    weights `[K, ...]`.

  >>> safety_floor(jnp.array([0.1, 0.9]), safety_teacher=0, floor=0.5, sensitivity=1.0)
  Array([0.5, 0.5], dtype=float32)
  """
  w = jnp.asarray(weights, jnp.float32)
  if w.ndim < 1 or not 0 <= safety_teacher < w.shape[0]:
    raise ValueError(
      f"safety_teacher must be in [0, {w.shape[0] if w.ndim else 0}) for "
      f"weights.shape={w.shape}, got {safety_teacher=}"
    )
  concrete = temperature_lib.is_concrete(floor) and temperature_lib.is_concrete(threshold)
  if concrete and not 0.0 <= floor <= 1.0:
    raise ValueError(f"floor must be in [0, 1], got {floor=}")
  if concrete and not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold must be in (0, 1], got {threshold=}")
  s = jnp.asarray(sensitivity, jnp.float32)
  if (
    s.ndim > w.ndim - 1
    or jnp.broadcast_shapes(_expand_to(s, w.ndim - 1).shape, w.shape[1:]) != w.shape[1:]
  ):
    raise ValueError(
      f"sensitivity must be a leading prefix of weights.shape[1:]={w.shape[1:]}, "
      f"got sensitivity.shape={s.shape}"
    )
  g = floor * jnp.clip(_expand_to(s, w.ndim - 1) / threshold, 0.0, 1.0)  # [...]
  w_star = w[safety_teacher]
  new_star = jnp.maximum(w_star, g)
  rest = 1.0 - w_star
  scale = jnp.where(rest > 0, (1.0 - new_star) / jnp.where(rest > 0, rest, 1.0), 0.0)
  out = w * scale[None]
  return out.at[safety_teacher].set(jnp.broadcast_to(new_star, w.shape[1:]))


def summary(weights) -> Mapping[str, jax.Array]:
  """Logged diagnostics: mean effective number of teachers 1/Σw² and mean weight entropy."""
  w = jnp.asarray(weights, jnp.float32)
  return {
    "effective_num_teachers": jnp.mean(1.0 / jnp.sum(w**2, axis=0)),
    "weight_entropy": jnp.mean(entropy(w, axis=0)),
  }
