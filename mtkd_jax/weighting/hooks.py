"""Weighting schemes by name as trainer hooks: `get(name, **kwargs)` (paper §VI, §IX).

A hook is `hook(teacher_logits [K, B, ..., V], batch) -> weights [K, B, ...]`: it reads explicit
batch entries and calls a pure scheme of `mtkd_jax.weighting.schemes`. A trainable weighting
(the learned gate) is a `Learned` instead, whose parameters the step keeps next to the student's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import models, registry
from mtkd_jax.weighting.schemes import (
  _check_tau,
  confidence,
  gate_loss,
  hierarchical,
  label_aware,
  learned,
  make_gate,
  safety_floor,
  static,
)


@dataclasses.dataclass(frozen=True)
class Learned:
  """A trainable weighting for the trainer: gate parameters live next to the student's.

  The step (see `train.make_train_step`) holds params `{"student": ..., "weighting": φ}`,
  computes `weights = self(φ, teacher_logits, batch, student_logits)` inside the loss, trains
  the student on the (stop-gradient) weights and adds `loss_weight · gate_loss` for φ.

  Attributes:
    gate: the gating network `(init, apply)` (`make_gate`).
    features: `features(batch, student_logits) -> [B, ..., D]`; default: the student's input
      concatenated with its probabilities (stop-gradient).
    temperatures: teacher temperatures `[K]` or scalar used by the gate loss.
    tau: gate softmax temperature.
    loss_weight: weight of the gate loss in the total loss.
  """

  gate: models.FunctionalModel
  features: Callable | None = None
  temperatures: object = 1.0
  tau: float = 1.0
  loss_weight: float = 1.0

  def init(self, rng):
    return self.gate.init(rng)

  def student_features(self, batch, student_logits):
    if self.features is not None:
      return self.features(batch, student_logits)
    probs = jax.nn.softmax(jax.lax.stop_gradient(student_logits).astype(jnp.float32), axis=-1)
    x = jnp.asarray(batch["x"], jnp.float32).reshape(*probs.shape[:-1], -1)
    return jnp.concatenate([x, probs], axis=-1)

  def __call__(self, gate_params, teacher_logits, batch, student_logits):
    return learned(
      self.gate.apply, gate_params, self.student_features(batch, student_logits), tau=self.tau
    )

  def loss(self, weights, teacher_logits, batch):
    return self.loss_weight * gate_loss(
      weights, teacher_logits, batch["y"], temperatures=self.temperatures
    )


def _hook_static(*, weights):
  w = np.asarray(weights, np.float32)
  return lambda teacher_logits, batch: static(w, teacher_logits.shape[1:-1])


def _hook_confidence(
  *, temperatures=1.0, tau=1.0, measure="entropy", standardize=False, axis_name=None
):
  _check_tau(tau)
  return lambda teacher_logits, batch: confidence(
    teacher_logits,
    temperatures=temperatures,
    tau=tau,
    measure=measure,
    standardize=standardize,
    axis_name=axis_name,
  )


def _hook_label_aware(
  *, temperatures=1.0, tau=1.0, domain_key=None, num_domains=None, axis_name=None
):
  _check_tau(tau)
  return lambda teacher_logits, batch: label_aware(
    teacher_logits,
    batch["y"],
    temperatures=temperatures,
    tau=tau,
    domains=None if domain_key is None else batch[domain_key],
    num_domains=num_domains,
    axis_name=axis_name,
  )


def _hook_hierarchical(*, token=None, task=None, context=None, epsilon=0.0):
  parts = {
    n: None
    if s is None
    else get(dict(s).pop("name"), **{k: v for k, v in s.items() if k != "name"})
    for n, s in (("token", token), ("task", task), ("context", context))
  }

  def hook(teacher_logits, batch):
    return hierarchical(
      epsilon=epsilon,
      **{n: None if h is None else h(teacher_logits, batch) for n, h in parts.items()},
    )

  return hook


def _hook_learned(
  *, num_features, num_teachers, hidden=32, temperatures=1.0, tau=1.0, loss_weight=1.0
):
  return Learned(
    make_gate(num_features, num_teachers, hidden=hidden), None, temperatures, tau, loss_weight
  )


def _with_safety_floor(build: Callable) -> Callable:
  """A registry factory: the hook of `build(**kwargs)`, optionally behind a safety floor."""

  def factory(
    *,
    safety_teacher: int | None = None,
    floor: float = 0.0,
    threshold: float = 0.5,
    sensitivity_key: str = "sensitivity",
    **kwargs,
  ):
    hook = build(**kwargs)
    if safety_teacher is None:
      return hook
    if isinstance(hook, Learned):
      raise ValueError(
        "weighting 'learned' with a safety teacher: wrap its weights with "
        "safety_floor in code; the trainer hook does not compose them"
      )
    if safety_teacher < 0 or not 0.0 <= floor <= 1.0 or not 0.0 < threshold <= 1.0:
      raise ValueError(
        f"need safety_teacher ≥ 0, floor in [0, 1], threshold in (0, 1], got "
        f"{safety_teacher=}, {floor=}, {threshold=}"
      )

    def safe_hook(teacher_logits, batch):
      return safety_floor(
        hook(teacher_logits, batch),
        safety_teacher=safety_teacher,
        floor=floor,
        sensitivity=batch[sensitivity_key],
        threshold=threshold,
      )

    return safe_hook

  return factory


for _name, _build in (
  ("static", _hook_static),
  ("confidence", _hook_confidence),
  ("label_aware", _hook_label_aware),
  ("hierarchical", _hook_hierarchical),
  ("learned", _hook_learned),
):
  registry.register("weighting", _name, factory=True)(_with_safety_floor(_build))


def names() -> list[str]:
  """The weighting names `get` accepts."""
  return registry.names("weighting")


def get(spec: str, **kwargs):
  """The trainer hook `hook(teacher_logits [K, B, ..., V], batch) -> weights [K, B, ...]`.

  Hooks read explicit batch entries: "y" (label_aware), `domain_key` (pooled label_aware),
  `sensitivity_key` (with a safety teacher). "learned" returns a `Learned` (trainable) instead.
  With `safety_teacher` set the hook's weights go through `safety_floor` last.

  Args:
    spec: one of `names()`, optionally with arguments: "confidence(tau=0.5)" (`mtkd_jax.registry`).
    **kwargs: the scheme's hyperparameters, e.g. `tau`, `temperatures`; for "hierarchical",
      `token=`, `task=`, `context=` are dicts `{"name": ..., **kwargs}` of sub-schemes; the
      safety floor: `safety_teacher` (off when None), `floor`, `threshold`, `sensitivity_key`.

  >>> hook = get("confidence", tau=0.5)
  >>> hook(jnp.zeros((3, 4, 10)), {}).shape
  (3, 4)
  """
  return registry.get("weighting", spec, **kwargs)


def is_trainable(weighting) -> bool:
  """True for weightings with parameters (`Learned`): the step keeps them in its params."""
  return isinstance(weighting, Learned)
