"""Prop IV.11 / Cor IV.12 safety attenuation: q(unsafe) as the safety weight w* goes 0 → 1.

    python -m mtkd_jax.main --config=experiments/configs/safety_attenuation.py \
        --workdir=runs/safety_attenuation

or `--config=experiments/configs/safety_attenuation.py:small` (coarser w* grid, fewer random
problems). Two scenarios (token 0 unsafe; last teacher = safety teacher) and a random search,
every operator. Expected: linear stays on or under the bound everywhere; power(alpha=2) and
entropic(beta=0.5) exceed it for large w* in the "confident" scenario; geometric and
power(alpha=0.5) exceed it, and exceed max_k p_k(unsafe) (Prop IV.11), when the capable teachers
agree on the unsafe token but disagree elsewhere ("consensus"). Writes results.json to the
workdir; runtime 5-20 s.
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
  # Teacher rows over V tokens (renormalised); token 0 is unsafe, the LAST row is the safety
  # teacher; the other teachers share 1 − w* equally.
  c.scenarios = ml_collections.ConfigDict()
  # capable teachers put a lot of mass on the unsafe token; the safety teacher refuses (token 1)
  c.scenarios.confident = (
    (0.6, 0.02, 0.2, 0.1, 0.05, 0.03),
    (0.3, 0.02, 0.1, 0.3, 0.2, 0.08),
    (0.002, 0.9, 0.03, 0.03, 0.02, 0.018),
  )
  # capable teachers agree only on the unsafe token and disagree on everything else
  c.scenarios.consensus = ((0.4, 0.01, 0.59), (0.4, 0.59, 0.01), (0.01, 0.495, 0.495))
  c.unsafe_threshold = 0.05  # random search: tokens with p_k*(i) ≤ this are "unsafe"
  c.num_random = 20000  # random problems
  c.random_num_teachers = 3  # K of the random problems (the last is the safety teacher)
  c.random_vocab_size = 5  # V of the random problems
  if arg.small:
    c.num_random = 2000
    c.num_weights = 21
  return c
