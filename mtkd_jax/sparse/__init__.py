"""Sparse and offline top-k teachers: outputs, re-tempering, operators, loss (paper §II-A)."""

from mtkd_jax.sparse.loss import distill_metrics, sparse_kd_loss
from mtkd_jax.sparse.operators import LOG_FLOOR, OPERATORS, geometric, get, linear, to_dense
from mtkd_jax.sparse.outputs import (
  TAIL_MODES,
  SparseTarget,
  SparseTeacherOutputs,
  from_dense,
  missing_log_mass,
  retemper,
  sparse_outputs,
)

__all__ = [
  "LOG_FLOOR",
  "OPERATORS",
  "TAIL_MODES",
  "SparseTarget",
  "SparseTeacherOutputs",
  "distill_metrics",
  "from_dense",
  "geometric",
  "get",
  "linear",
  "missing_log_mass",
  "retemper",
  "sparse_kd_loss",
  "sparse_outputs",
  "to_dense",
]
