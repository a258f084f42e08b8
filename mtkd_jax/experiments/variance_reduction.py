"""Thm IV.2, ensemble variance reduction: Monte-Carlo over seeds against the closed forms.

Synthetic teachers p_k = p̄ + ε_k over V tokens, with noise whose per-token variance is exactly
σ_k² and never clipped:

    z_k(i) = √ρ c(i) + √(1−ρ) e_k(i),   c, e_k i.i.d. uniform on [−√3, √3] (unit variance),
    ε_k(i) = σ_k √(V/(V−1)) (z_k(i) − mean_j z_k(j)),

so Σ_i ε_k(i) = 0, Corr(ε_j(i), ε_l(i)) = ρ and |ε_k(i)| ≤ σ_k √(V/(V−1)) 2√3 (√ρ + √(1−ρ)), which
`validate_config` keeps below min p̄. For the linear operator Var[q(i)] = wᵀCw, against Σ_k w_k σ_k²
for the weighted single teacher; other operators are measured against it. The variance estimate
of n seeds averaged over V nearly independent tokens has relative std ≈ √(2/((n−1)V)) (less for
this platykurtic noise): the check is `tolerance = 4 √(2/((n−1)V))`.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mtkd_jax import operators, theory
from mtkd_jax.experiments import common, tables

_WEIGHTINGS = ("uniform", "skewed")
_SIGMA_MODES = ("equal", "spread")


def mean_distribution(config) -> np.ndarray:
  """p̄ [V]: half uniform, half a Dirichlet(1) draw, so min p̄ ≥ 1/(2V)."""
  v = config.vocab_size
  dirichlet = np.random.default_rng([config.seed, 7]).dirichlet(np.ones(v))
  return (0.5 / v + 0.5 * dirichlet).astype(np.float64)


def teacher_weights(weighting: str, k: int, k_max: int, skew: float) -> np.ndarray:
  """w [k_max]: the first k teachers weighted uniformly or ∝ skew^j, the rest 0."""
  if weighting == "uniform":
    w = np.ones(k)
  elif weighting == "skewed":
    w = skew ** np.arange(k)
  else:
    raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
  return np.concatenate([w / w.sum(), np.zeros(k_max - k)])


def teacher_sigmas(mode: str, k_max: int, sigma: float, spread: float) -> np.ndarray:
  """σ [k_max]: all equal to σ, or cycling through σ(1 + spread·{−1, −1/3, 1/3, 1})."""
  if mode == "equal":
    return np.full(k_max, sigma)
  levels = np.array([-1.0, -1 / 3, 1 / 3, 1.0])
  return sigma * (1.0 + spread * levels[np.arange(k_max) % 4])


def noise_bound(config) -> float:
  """Largest |ε_k(i)| the noise can take, over all ρ in the config."""
  v = config.vocab_size
  sigma_max = config.sigma * (1.0 + config.sigma_spread)
  reach = max(math.sqrt(r) + math.sqrt(1.0 - r) for r in config.rhos)
  return sigma_max * math.sqrt(v / (v - 1)) * 2.0 * math.sqrt(3.0) * reach


def tolerance(num_seeds: int, vocab_size: int, num_sigmas: float = 4.0) -> float:
  """Relative Monte-Carlo tolerance of the token-averaged variance: 4 √(2/((n−1)V))."""
  return num_sigmas * math.sqrt(2.0 / ((num_seeds - 1) * vocab_size))


def validate_config(config) -> None:
  common.check_operators("operators", config.operators)
  common.check_numbers(
    config,
    positive_ints="num_seeds vocab_size num_teachers",
    non_negative_ints="seed",
    positive="sigma",
    fractions="skew",
  )
  require, v = common.require, config.vocab_size
  require(v >= 2, "vocab_size", f"need V ≥ 2, got {v}")
  n = config.num_seeds
  require(n >= 10, "num_seeds", f"need ≥ 10 Monte-Carlo seeds, got {n}")
  require(config.num_teachers, "num_teachers", "need at least one K")
  require(all(0.0 <= r < 1.0 for r in config.rhos), "rhos", f"need 0 ≤ ρ < 1, got {config.rhos}")
  spread = config.sigma_spread
  require(0.0 <= spread < 1.0, "sigma_spread", f"need 0 ≤ spread < 1, got {spread}")
  floor = 0.5 / v
  bound = noise_bound(config)
  require(
    bound < floor,
    "sigma",
    f"{config.sigma} lets |ε| reach {bound:.4g} ≥ min p̄ bound {floor:.4g}, so teachers could "
    "leave the simplex; use a smaller sigma",
  )


def noise(key, rho, num_teachers: int, vocab_size: int) -> jax.Array:
  """Unit-variance, zero-sum, ρ-correlated teacher noise z [K, V] (ε_k = σ_k z_k)."""
  key_common, key_own = jax.random.split(key)
  r3 = math.sqrt(3.0)
  c = jax.random.uniform(key_common, (vocab_size,), minval=-r3, maxval=r3)  # [V]
  e = jax.random.uniform(key_own, (num_teachers, vocab_size), minval=-r3, maxval=r3)  # [K, V]
  z = jnp.sqrt(rho) * c + jnp.sqrt(1.0 - rho) * e  # [K, V]
  scale = math.sqrt(vocab_size / (vocab_size - 1))
  return scale * (z - z.mean(axis=-1, keepdims=True))


def aggregate_moments(operator, p_bar, keys, rho, weights, sigmas, chunk: int = 250):
  """E[q − p̄] [S, V], Var[q] [S, V] (unbiased) over the seeds' keys [n], and the smallest teacher
  probability drawn, for p̄ [V] and each setting's weights and noise scales sigmas [S, K] (ρ
  correlated errors; `chunk` seeds vmapped at once)."""
  num_teachers, vocab_size = weights.shape[1], p_bar.shape[0]
  temperatures = jnp.ones(num_teachers)

  def one_seed(key):
    z = noise(key, rho, num_teachers, vocab_size)  # [K, V]

    def one_setting(w, s):
      p = p_bar + s[:, None] * z  # [K, V]
      log_q = operator(jnp.log(p), temperatures=temperatures, weights=w)  # [V]
      return jnp.exp(log_q) - p_bar, p.min()

    return jax.vmap(one_setting)(weights, sigmas)  # [S, V], [S]

  errors, min_p = jax.lax.map(one_seed, keys, batch_size=chunk)  # [n, S, V], [n, S]
  return errors.mean(axis=0), errors.var(axis=0, ddof=1), min_p.min()


def run(config, workdir: str) -> dict:
  """Measures Var[q(i)] for every operator, K, weighting, σ mode and ρ; returns the rows."""
  del workdir  # everything is in the returned results
  k_max = max(config.num_teachers)
  p_bar = mean_distribution(config)
  settings = list(itertools.product(config.num_teachers, _WEIGHTINGS, _SIGMA_MODES))
  weights = np.stack([teacher_weights(wt, k, k_max, config.skew) for k, wt, _ in settings])
  sigmas = np.stack(
    [teacher_sigmas(m, k_max, config.sigma, config.sigma_spread) for _, _, m in settings]
  )  # [S, K_max]
  keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)  # shared by all runs
  tol = tolerance(config.num_seeds, config.vocab_size)
  p_bar32 = jnp.asarray(p_bar, jnp.float32)

  def compiled(op):  # keys are an argument, not a closed-over constant: XLA would fold the noise
    return jax.jit(lambda keys, rho, w, s: aggregate_moments(op, p_bar32, keys, rho, w, s))

  moments = {spec: compiled(operators.get(spec)) for spec in config.operators}

  rows, min_p = [], 1.0
  progress = tqdm(total=len(config.rhos) * len(config.operators), disable=not config.progress)
  for rho in config.rhos:
    closed = [
      float(theory.ensemble_noise_variance(w, theory.equicorrelated_covariance(s, rho)))
      for w, s in zip(weights, sigmas, strict=True)
    ]
    single = [float(np.dot(w, s**2)) for w, s in zip(weights, sigmas, strict=True)]
    for spec in config.operators:
      progress.set_description(f"ρ={rho} {spec}")
      mean, var, lowest = jax.device_get(moments[spec](keys, rho, weights, sigmas))
      min_p = min(min_p, float(lowest))
      for j, setting in enumerate(settings):
        measured = float(var[j].mean())
        rel_err = measured / closed[j] - 1.0
        row = dict(zip(("num_teachers", "weighting", "sigmas"), setting, strict=True))
        # closed_form: wᵀCw, the linear operator's exact variance; single_teacher: Σ_k w_k σ_k²,
        # the right side of Thm IV.2; bias: the mean over tokens of |E[q(i)] − p̄(i)|.
        row.update(operator=spec, rho=float(rho), measured=measured, closed_form=closed[j])
        row.update(single_teacher=single[j], sum_w2=float(np.sum(weights[j] ** 2)))
        row.update(ratio_to_closed_form=measured / closed[j], reduction=measured / single[j])
        row.update(z_score=rel_err / (tol / 4.0), within_tolerance=abs(rel_err) <= tol)
        rows.append({**row, "bias": float(np.abs(mean[j]).mean())})
      progress.update()
  progress.close()
  return {
    "p_bar": p_bar.tolist(),
    "num_seeds": config.num_seeds,
    "vocab_size": config.vocab_size,
    "sigma": config.sigma,
    "tolerance": tol,
    "noise_bound": noise_bound(config),
    "min_teacher_probability": min_p,
    "rows": rows,
  }


def select(results, **where) -> list[dict]:
  """The rows of `results` whose fields equal `where` (e.g. operator="linear", rho=0.0)."""
  return [r for r in results["rows"] if all(r[k] == v for k, v in where.items())]


def format_table(results: dict) -> str:
  """Linear: measured vs closed form per K and ρ; all operators: measured / closed form."""
  tol = results["tolerance"]
  lines = [
    f"Thm IV.2 variance reduction: {results['num_seeds']} seeds, V={results['vocab_size']}, "
    f"Monte-Carlo tolerance ±{tol:.2%} (4 √(2/((n−1)V))); min teacher probability drawn "
    f"{results['min_teacher_probability']:.4f} (> 0: no clipping)",
  ]
  columns = [("weights", "<8"), ("σ_k", "<7"), ("ρ", ">5.2f"), ("K", ">3"), ("measured", ">11.4e")]
  columns += [("closed", ">11.4e"), ("rel.err", ">+8.2%"), ("Σwσ²", ">11.4e")]
  columns += [("reduction", ">9.3f"), (" ok", "")]
  linear = select(results, operator="linear")
  setting = ("weighting", "sigmas", "rho", "num_teachers", "measured", "closed_form")
  rows = []
  for r in linear:
    if r["num_teachers"] in (1, 2, 4, 8, 16):
      rel_err, ok = r["ratio_to_closed_form"] - 1, " ✓" if r["within_tolerance"] else " ✗"
      rows.append((*(r[k] for k in setting), rel_err, r["single_teacher"], r["reduction"], ok))
  lines += tables.lines(columns, rows, indent="")
  ok = sum(r["within_tolerance"] for r in linear)
  lines += [f"linear within tolerance: {ok}/{len(linear)} settings", ""]
  lines.append("Measured Var[q] / linear closed form wᵀCw (no closed form for non-linear ops):")
  specs = list(dict.fromkeys(r["operator"] for r in results["rows"]))
  rows = []
  for rho in sorted({r["rho"] for r in results["rows"]}):
    for weighting in _WEIGHTINGS:
      for k in (2, 4, 8, 16):
        where = {"rho": rho, "weighting": weighting, "num_teachers": k, "sigmas": "spread"}
        cells = [select(results, operator=s, **where) for s in specs]
        if all(cells):
          rows.append((rho, weighting, k, *(c[0]["ratio_to_closed_form"] for c in cells)))
  columns = [("ρ", ">5.2f"), ("weights", "<8"), ("K", ">3")] + [(s, ">13.3f") for s in specs]
  return "\n".join(lines + tables.lines(columns, rows, indent=""))
