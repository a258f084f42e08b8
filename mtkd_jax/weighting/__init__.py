"""Adaptive teacher weights (paper §VI, §IX): pure schemes and the trainer hooks that name them."""

from mtkd_jax.weighting.hooks import Learned, get, is_trainable, names
from mtkd_jax.weighting.schemes import (
  LOG_FLOOR,
  MEASURES,
  GatingNetwork,
  confidence,
  entropy,
  gate_loss,
  hierarchical,
  label_aware,
  learned,
  make_gate,
  safety_floor,
  static,
  summary,
)

__all__ = [
  "LOG_FLOOR",
  "MEASURES",
  "GatingNetwork",
  "Learned",
  "confidence",
  "entropy",
  "gate_loss",
  "get",
  "hierarchical",
  "is_trainable",
  "label_aware",
  "learned",
  "make_gate",
  "names",
  "safety_floor",
  "static",
  "summary",
]
