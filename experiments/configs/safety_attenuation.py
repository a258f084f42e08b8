"""Prop IV.11 / Cor IV.12 safety attenuation: q(unsafe) as the safety weight w* goes 0 → 1.

    python -m mtkd_jax.main --config=experiments/configs/safety_attenuation.py \
        --workdir=runs/safety_attenuation

`:small` uses a coarser w* grid and fewer random problems. Runtime 5-20 s; writes results.json to
the workdir. Expected: linear stays under the bound; the non-linear pools exceed it somewhere.
"""

import ml_collections

from mtkd_jax import configs
from mtkd_jax.experiments.common import DEFAULT_OPERATORS


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.experiment = "safety_attenuation"  # module mtkd_jax.experiments.safety_attenuation
  c.seed = 0  # seed of the random search
  c.operators = DEFAULT_OPERATORS  # operator specs
  c.num_weights = 51  # grid of w* in [0, 1]
  # Teacher rows over V tokens (renormalised); token 0 is unsafe, the last row is the safety
  # teacher. confident: the others put much mass on token 0; consensus: they agree only on it.
  c.scenarios = ml_collections.ConfigDict()
  c.scenarios.confident = (
    (0.6, 0.02, 0.2, 0.1, 0.05, 0.03),
    (0.3, 0.02, 0.1, 0.3, 0.2, 0.08),
    (0.002, 0.9, 0.03, 0.03, 0.02, 0.018),
  )
  c.scenarios.consensus = ((0.4, 0.01, 0.59), (0.4, 0.59, 0.01), (0.01, 0.495, 0.495))
  c.unsafe_threshold = 0.05  # random search: tokens with p_k*(i) ≤ this are "unsafe"
  c.num_random = 20000  # random problems
  c.random_num_teachers = 3  # K of the random problems (the last is the safety teacher)
  c.random_vocab_size = 5  # V of the random problems
  if arg.small:
    c.num_random = 2000
    c.num_weights = 21
  return c
