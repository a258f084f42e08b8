"""Thm IV.2 variance reduction: Monte-Carlo teacher noise against Σ w_k² σ_k² and wᵀCw.

    python -m mtkd_jax.main --config=experiments/configs/variance_reduction.py \
        --workdir=runs/variance_reduction

`:small` runs fewer seeds, K, ρ and operators. Runtime 15 s (small) to a few minutes; writes
results.json to the workdir. Expected: linear matches the closed form within the tolerance.
"""

import ml_collections

from mtkd_jax import configs
from mtkd_jax.experiments.common import DEFAULT_OPERATORS


def get_config(arg=None):
  arg = configs.parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.experiment = "variance_reduction"  # module mtkd_jax.experiments.variance_reduction
  c.seed = 0  # seed of p̄ and of the Monte-Carlo noise
  c.num_seeds = 5000  # Monte-Carlo draws of the teachers' noise
  c.vocab_size = 10  # V tokens
  c.num_teachers = tuple(range(1, 17))  # the K values (one compiled function: K_max padded)
  c.rhos = (0.0, 0.25, 0.5, 0.75, 0.9)  # pairwise error correlations ρ
  c.sigma = 0.005  # noise std σ per token (must keep every p_k inside the simplex)
  c.sigma_spread = 0.5  # heterogeneous σ_k = σ(1 + spread·{−1, −1/3, 1/3, 1}) cycling over k
  c.skew = 0.6  # skewed weights w_k ∝ skew^k
  c.operators = DEFAULT_OPERATORS  # operator specs, e.g. "power(alpha=0.5)"
  c.progress = True  # tqdm progress bar
  if arg.small:
    c.num_seeds = 2000
    c.num_teachers = (1, 2, 4, 8)
    c.operators = ("linear", "geometric", "power(alpha=2)", "entropic(beta=0.5)")
    c.rhos = (0.0, 0.5)
  return c
