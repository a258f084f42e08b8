"""Thm IV.2 variance reduction: Monte-Carlo teacher noise against Σ w_k² σ_k² and wᵀCw.

    python -m mtkd_jax.main --config=experiments/configs/variance_reduction.py \
        --workdir=runs/variance_reduction

or `--config=experiments/configs/variance_reduction.py:small` (fewer seeds, K, ρ and operators).
Synthetic teachers p_k = p̄ + ε_k (zero-sum, bounded, ρ-correlated noise with per-token variance
exactly σ_k², never clipped), uniform and skewed weights, equal and heterogeneous σ_k, every
operator; seeds are vmapped. Expected: the linear operator's measured variance equals the closed
form within the stated Monte-Carlo tolerance in every setting; the entropic pool sits well below
it (it flattens q toward uniform). Writes results.json to the workdir; runtime 15 s (small) to
a few minutes on a laptop CPU.
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
