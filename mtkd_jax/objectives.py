"""The distillation objectives of the update step (paper §IV-B), as one polymorphic argument.

An objective bundles everything the step needs to know about the teachers' targets:
`objective(student_logits, teacher_outputs, weights) -> [B, ...]` per-example losses, and
`objective.metrics(student_logits, teacher_outputs, labels, weights) -> dict` diagnostics.
Temperatures, the student temperature and the operator are bound when it is built:

- `mixture(operator, ...)`: L_mix = T_S² KL(G(p_1..p_K; T, w) ‖ p_{S,T_S}). The fused kernel
  (`mtkd_jax.kernels.fused_kd_loss`) is used for exactly the operators it implements,
  `operators.linear` and `operators.geometric`; any other function, including a
  `functools.partial` or a wrapper of those two, is composed as `losses.mixture_kd(op(...))`,
  which computes the same value more slowly.
- `sum_of_kls(...)`: L_multi = T_S² Σ_k w_k KL(p_{k,T_k} ‖ p_{S,T_S}).
- `sparse_mixture(sparse_operator, ...)`: L_mix against a top-k sparse target
  (`mtkd_jax.sparse`), any KD divergence; the teacher outputs are `sparse.SparseTeacherOutputs`.
- `mixture_from_hidden(operator, ...)`: L_mix from the student's hidden states and output head,
  fused with the projection (`mtkd_jax.kernels.fused_linear_kd_loss`): no [B, ..., V] logits of
  the student or of teachers given as (hidden, head) pairs.

Configs name them `loss = "mixture_kd"`, `"sum_of_kls"`, `"sparse_mixture_kd"` or
`"mixture_kd_from_hidden"`
(`mtkd_jax.registry`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mtkd_jax import divergences, losses, operators, registry, sparse, theory
from mtkd_jax import temperature as temperature_lib
from mtkd_jax import weighting as weighting_lib

_IMPLEMENTATIONS = ("auto", "composed", "xla", "pallas")
# Operators the fused kernel implements, by function identity: a user's own function that happens
# to compute the same thing is composed, never silently replaced.
_FUSED = {operators.linear: "linear", operators.geometric: "geometric"}


@dataclasses.dataclass(frozen=True)
class Objective:
  """A per-example distillation loss with its training diagnostics.

  Attributes:
    loss: `loss(student_logits [B, ..., V], teacher_outputs, weights [K] or [K, B, ...])
      -> [B, ...]`; `teacher_outputs` is [K, B, ..., V] (logits or log-probs) or sparse.
    metrics: `metrics(student_logits, teacher_outputs, labels, weights) -> dict` of batch means.
    num_teachers: K.
    from_hidden: the loss takes the student's `(hidden [B, ..., d], kernel [d, V], bias [V] or
      None)` in place of its logits, and teacher outputs may be (hidden, head[, bias]) tuples
      (`mixture_from_hidden`); the step then never builds the [B, ..., V] logits.
  """

  loss: Callable
  metrics: Callable
  num_teachers: int
  from_hidden: bool = False

  def __call__(self, student_logits, teacher_outputs, weights):
    return self.loss(student_logits, teacher_outputs, weights)


def _check(temperatures, student_temperature):
  temperatures = temperature_lib.check_temperatures(temperatures, name="temperatures")
  if temperatures.ndim != 1:
    raise ValueError(f"temperatures: need one per teacher [K], got {temperatures.shape=}")
  temperature_lib.check_temperatures(student_temperature, name="student_temperature")
  return temperatures


def _metrics(operator, temperatures, student_temperature, metrics_fn=None):
  fn = distill_metrics if metrics_fn is None else metrics_fn

  def metrics(student_logits, teacher_outputs, labels, weights):
    return fn(
      student_logits,
      teacher_outputs,
      labels,
      operator=operator,
      temperatures=temperatures,
      weights=weights,
      student_temperature=student_temperature,
    )

  return metrics


# --------------------------------------------------------------------------------------------
# Training diagnostics (logged by the step).
# --------------------------------------------------------------------------------------------
def distill_metrics(
  student_logits,
  teacher_logits,
  labels,
  *,
  operator,
  temperatures,
  weights,
  student_temperature=1.0,
) -> dict[str, jax.Array]:
  """Training diagnostics of one batch, all means over examples.

  Args:
    student_logits: [B, ..., V].
    teacher_logits: [K, B, ..., V] logits or log-probs.
    labels: int [B, ...].
    operator: the aggregation operator of the run (gives q).
    temperatures: [K]. weights: [K] or [K, B, ...]. student_temperature: T_S.

  Returns:
    dict with `kl_q_student` KL(q ‖ p_{S,T_S}), `jensen_gap` Σ_k w_k KL(p_k ‖ q_linear),
    `per_teacher_kl` [K] KL(p_{k,T_k} ‖ p_{S,T_S}), `accuracy` and `log_loss` of the student
    (T = 1) against the labels, and `effective_num_teachers` 1/Σ w².
  """
  log_q = operator(teacher_logits, temperatures=temperatures, weights=weights)  # [B, ..., V]
  log_p_s = losses.student_log_probs(student_logits, student_temperature)  # [B, ..., V]
  log_p = temperature_lib.scale(teacher_logits, temperatures)  # [K, B, ..., V]
  per_teacher = jnp.stack(
    [losses.kl_divergence(log_p[k], log_p_s).mean() for k in range(log_p.shape[0])]
  )  # [K]
  w = jnp.asarray(weights, jnp.float32)
  return {
    "kl_q_student": losses.kl_divergence(log_q, log_p_s).mean(),
    "jensen_gap": theory.jensen_gap(teacher_logits, temperatures=temperatures, weights=w).mean(),
    "per_teacher_kl": per_teacher,
    "accuracy": (student_logits.argmax(-1) == labels).mean(),
    "log_loss": losses.cross_entropy(student_logits, labels).mean(),
    "effective_num_teachers": theory.effective_num_teachers(w, axis=0).mean(),
    "weight_entropy": weighting_lib.entropy(w, axis=0).mean(),
  }


def _divergence(divergence) -> divergences.KDDivergence:
  if isinstance(divergence, divergences.KDDivergence):
    return divergence
  if isinstance(divergence, str):
    return registry.get("divergence", divergence)
  raise ValueError(f"divergence: a spec like 'jsd(beta=0.9)' or a KDDivergence, got {divergence!r}")


@registry.register("objective", "mixture_kd", factory=True)
def mixture(
  operator: Callable,
  *,
  temperatures,
  student_temperature=1.0,
  divergence="forward_kl",
  implementation: str = "auto",
) -> Objective:
  """L_mix = T_S² · D(q, p_{S,T_S}) with q = operator(teachers; T, w), per example.

  D is the KD divergence (`divergences.kd_divergence`): "forward_kl" KL(q ‖ p_S), mass-covering
  (the usual KD loss); "reverse_kl" KL(p_S ‖ q), mode-seeking; "jsd(beta=β)" the generalised
  Jensen–Shannon divergence β·KL(q ‖ m) + (1 − β)·KL(p_S ‖ m), m = β·q + (1 − β)·p_S.

  Fused or composed, every implementation follows the non-finite policy of docs/design.md:
  NaN or +inf teacher outputs are a ValueError on concrete inputs and a NaN loss and gradient
  for that example under `jit`; a teacher row entirely −inf is absent (weights renormalised
  over the present teachers); an example with no present teacher has loss 0 and gradient 0.

  Args:
    operator: `op(teacher_logits, *, temperatures, weights) -> log_q` (`mtkd_jax.operators`).
    temperatures: [K] teacher temperatures T_k > 0.
    student_temperature: T_S > 0.
    divergence: a spec ("forward_kl", "reverse_kl", "jsd(beta=0.9)") or a `KDDivergence`.
    implementation: "auto" (the fused kernel for `operators.linear`/`operators.geometric`,
      composed otherwise), "composed", or the kernel's "xla"/"pallas" (fusable operators only).

  >>> obj = mixture(operators.geometric, temperatures=[1.0, 2.0])
  >>> obj(jnp.zeros((4, 3)), jnp.ones((2, 4, 3)), jnp.array([0.5, 0.5])).shape
  (4,)
  """
  if not callable(operator):
    raise ValueError(
      f"operator: must be a function op(teacher_logits, *, temperatures, weights), got {operator!r}"
    )
  if implementation not in _IMPLEMENTATIONS:
    raise ValueError(f"implementation: must be one of {_IMPLEMENTATIONS}, got {implementation!r}")
  temperatures = _check(temperatures, student_temperature)
  div = _divergence(divergence)
  fused = _FUSED.get(operator) if implementation != "composed" else None
  if implementation in ("xla", "pallas") and fused is None:
    raise ValueError(
      f"implementation={implementation!r} needs operators.linear or "
      f"operators.geometric, got {operator!r}"
    )
  if fused is not None:
    try:  # Imported here: the kernel package pulls in Pallas, which the other paths never need.
      from mtkd_jax.kernels import fused_kd_loss
    except ImportError:  # a checkout without kernels/: the composed path computes the same loss
      fused = None

  def loss(student_logits, teacher_logits, weights):
    if fused is not None:
      return fused_kd_loss(
        student_logits,
        teacher_logits,
        temperatures=temperatures,
        weights=weights,
        student_temperature=student_temperature,
        operator=fused,
        divergence=div.name,
        beta=div.beta,
        implementation=implementation,
      )
    log_q = operator(teacher_logits, temperatures=temperatures, weights=weights)  # [B, ..., V]
    log_q = jax.lax.stop_gradient(log_q)
    if div.name == "forward_kl":
      return losses.mixture_kd(student_logits, log_q, student_temperature=student_temperature)
    return div(log_q, student_logits, student_temperature=student_temperature)

  return Objective(loss, _metrics(operator, temperatures, student_temperature), len(temperatures))


@registry.register("objective", "sum_of_kls", factory=True)
def sum_of_kls(
  operator: Callable = operators.linear,
  *,
  temperatures,
  student_temperature=1.0,
  divergence="forward_kl",
  implementation: str = "auto",
) -> Objective:
  """L_multi = T_S² · Σ_k w_k KL(p_{k,T_k} ‖ p_{S,T_S}), per example (λ = w).

  `operator` only gives the logged target q (`kl_q_student`); `implementation` is accepted for
  a config's sake and unused (L_multi has no fused kernel); only the forward KL is defined.
  """
  del implementation
  if _divergence(divergence).name != "forward_kl":
    raise ValueError(f"divergence: sum_of_kls is a sum of forward KLs, got {divergence!r}")
  temperatures = _check(temperatures, student_temperature)

  def loss(student_logits, teacher_logits, weights):
    return losses.sum_of_kls(
      student_logits,
      teacher_logits,
      temperatures=temperatures,
      weights=weights,
      student_temperature=student_temperature,
    )

  return Objective(loss, _metrics(operator, temperatures, student_temperature), len(temperatures))


@registry.register("objective", "sparse_mixture_kd", factory=True)
def sparse_mixture(
  sparse_operator: Callable | str,
  *,
  temperatures,
  student_temperature=1.0,
  divergence="forward_kl",
):
  """L_mix = T_S² · D(q, p_{S,T_S}) against the sparse target
  `q = sparse_operator(outputs, *, temperatures, weights)` (`sparse.sparse_kd_loss`).

  D as in `mixture`: "forward_kl" (mass-covering), "reverse_kl" (mode-seeking; refused with
  tail mode "drop", where it is +inf), "jsd(beta=β)"; the tail mode says what q is off its
  support (docs/design.md, "Sparse targets").

  Args:
    sparse_operator: `sparse.get(name, tail_mode=...)`, or its spec
      ("linear(tail_mode='bucket')").
    temperatures: [K] training temperatures (the stored outputs are re-tempered to them).
    student_temperature: T_S > 0.
    divergence: a spec ("forward_kl", "reverse_kl", "jsd(beta=0.9)") or a `KDDivergence`.
  """
  if isinstance(sparse_operator, str):
    sparse_operator = sparse.get(sparse_operator)
  if not callable(sparse_operator):
    raise ValueError(f"sparse_operator: a sparse.get(...) operator, got {sparse_operator!r}")
  temperatures = _check(temperatures, student_temperature)
  div = _divergence(divergence)
  tail_mode = getattr(sparse_operator, "keywords", {}).get("tail_mode")
  if tail_mode is not None:  # refuse reverse KL with "drop" when the objective is built
    sparse.loss._check_divergence(div.name, div.beta, tail_mode)

  def loss(student_logits, outputs, weights):
    target = sparse_operator(outputs, temperatures=temperatures, weights=weights)
    return sparse.sparse_kd_loss(
      student_logits,
      target,
      student_temperature=student_temperature,
      divergence=div.name,
      beta=div.beta,
    )

  metrics = _metrics(sparse_operator, temperatures, student_temperature, sparse.distill_metrics)
  return Objective(loss, metrics, len(temperatures))


@registry.register("objective", "mixture_kd_from_hidden", factory=True)
def mixture_from_hidden(
  operator: Callable | str = "linear",
  *,
  temperatures,
  student_temperature=1.0,
  divergence="forward_kl",
  token_chunk: int | None = None,
  implementation: str = "auto",
) -> Objective:
  """L_mix = T_S² · D(q, p_{S,T_S}) computed from the student's hidden states: the output
  projection is fused with the loss, token chunk by token chunk, so neither the student's
  [B, ..., V] logits nor those of teachers given as (hidden, head) pairs are materialised.

  The step (`train.make_train_step`) needs a student `models.FunctionalModel` with `features`
  and `head`; the loss is `loss((hidden, kernel, bias), teacher_outputs, weights)` with teacher
  outputs [K, B, ..., V] logits or K (hidden [B, ..., d_k], head [d_k, V][, bias [V]]) tuples.
  Equal to `mixture(operator, ...)` on the logits `hidden @ kernel + bias` (tested to 1e-5).

  Args:
    operator: `operators.linear`/`operators.geometric` or their names (the fused kernel's two).
    temperatures, student_temperature, divergence, implementation: as in `mixture`.
    token_chunk: rows per chunk (None: `kernels.fused_linear_kd.default_token_chunk`).
  """
  name = _FUSED.get(operator, operator) if callable(operator) else operator
  if name not in ("linear", "geometric"):
    raise ValueError(
      f"operator: the fused projection implements 'linear' and 'geometric', got {operator!r}"
    )
  if implementation not in ("auto", "xla", "pallas"):
    raise ValueError(f"implementation: must be 'auto', 'xla' or 'pallas', got {implementation!r}")
  temperatures = _check(temperatures, student_temperature)
  div = _divergence(divergence)
  from mtkd_jax.kernels import fused_linear_kd_loss  # Pallas: imported only where it is used

  def loss(student, teacher_outputs, weights):
    hidden, kernel, bias = student
    if not isinstance(teacher_outputs, list | tuple):
      teacher_outputs = jax.lax.stop_gradient(teacher_outputs)
    return fused_linear_kd_loss(
      hidden,
      kernel,
      teacher_outputs,
      temperatures=temperatures,
      weights=weights,
      student_temperature=student_temperature,
      operator=name,
      divergence=div.name,
      beta=div.beta,
      student_bias=bias,
      token_chunk=token_chunk,
      implementation=implementation,
    )

  def metrics(student, teacher_outputs, labels, weights):
    del student, teacher_outputs, labels  # each diagnostic would need the [B, ..., V] logits
    w = jnp.asarray(weights, jnp.float32)
    return {"effective_num_teachers": theory.effective_num_teachers(w, axis=0).mean()}

  return Objective(loss, metrics, len(temperatures), from_hidden=True)
