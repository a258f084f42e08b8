"""Fused kernels of mtkd_jax (installed as `mtkd_jax.kernels`): re-exports only.

Vocab-parallel use: either `fused_kd_loss(..., axis_name=name)` inside your own `shard_map`
(V sharded over mesh axis `name`), or `fused_kd_loss_vocab_parallel(..., mesh=, axis_name=)`.
"""

from .fused_kd import BlockSizes as BlockSizes
from .fused_kd import fused_kd_loss as fused_kd_loss
from .fused_kd import fused_kd_loss_reference as fused_kd_loss_reference
from .fused_kd import fused_kd_loss_vocab_parallel as fused_kd_loss_vocab_parallel
from .fused_kd import fused_mixture as fused_mixture
from .fused_kd import fused_mixture_reference as fused_mixture_reference
from .fused_linear_kd import DEFAULT_CHUNK_BYTES as DEFAULT_CHUNK_BYTES
from .fused_linear_kd import default_token_chunk as default_token_chunk
from .fused_linear_kd import fused_linear_kd_loss as fused_linear_kd_loss
from .fused_linear_kd import fused_linear_kd_loss_reference as fused_linear_kd_loss_reference
