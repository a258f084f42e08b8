"""Prop V.2, finite-sample approximation: with enough capacity, KL(q ‖ p_S) → 0 on N points.

N fixed inputs (digits images) each get a target q = Σ_k w_k p_k from K random teachers (logits
i.i.d. N(0, `teacher_scale`²): the targets carry no structure a small model could exploit, so
fitting them is memorisation). One-hidden-layer MLP students of growing width are trained
full-batch on L_mix = KL(q ‖ p_S) with the library's update step (`train.make_train_step`), the
loop a `lax.scan`, `vmap`ped over initialisation seeds. The final mean KL(q ‖ p_S) over the N
points should fall toward 0 once the parameter count passes the N·(V − 1) numbers that define the
targets (a width-N hidden layer can interpolate any N logit vectors exactly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mtkd_jax import data as data_lib
from mtkd_jax import losses, models, operators, train
from mtkd_jax.experiments import common


def validate_config(config) -> None:
  """Raises ValueError("config.<field>: ...") for the first invalid field."""
  if not config.widths or min(config.widths) < 1:
    raise ValueError(f"config.widths: need positive hidden widths, got {config.widths}")
  if not 1 <= config.num_points <= 1079:
    raise ValueError(
      f"config.num_points: need 1 ≤ N ≤ 1079 (digits train split), got {config.num_points}"
    )
  if config.num_steps < 1 or config.num_seeds < 1:
    raise ValueError(
      f"config.num_steps/num_seeds: need ≥ 1, got {config.num_steps}, {config.num_seeds}"
    )


def problem(config):
  """The N fixed points: inputs x [N, 64], teacher logits [N, K, V], target log q [N, V]."""
  x = data_lib.load_digits(seed=config.seed)["train"].x[: config.num_points]  # [N, 64]
  rng = np.random.default_rng([config.seed, 5])
  shape = (config.num_points, config.num_teachers, data_lib.NUM_CLASSES)
  teacher_logits = (config.teacher_scale * rng.standard_normal(shape)).astype(np.float32)
  weights = np.full(config.num_teachers, 1.0 / config.num_teachers, np.float32)
  log_q = operators.linear(
    np.moveaxis(teacher_logits, 1, 0), temperatures=np.ones(config.num_teachers), weights=weights
  )
  return x, teacher_logits, weights, np.asarray(log_q)


def fit(config, width: int, x, teacher_logits, weights, log_q) -> dict:
  """Trains `num_seeds` students of one width (vmapped) for `num_steps` full-batch steps."""
  model = models.build(
    "mlp", in_features=x.shape[1], hidden=(width,), num_classes=data_lib.NUM_CLASSES
  )
  optimizer = train.make_optimizer(config.learning_rate, config.num_steps, warmup_steps=20)
  step = train.make_train_step(
    model.apply,
    optimizer,
    operator=operators.linear,
    loss=losses.mixture_kd,
    temperatures=np.ones(config.num_teachers),
    weights=weights,
    implementation="xla",
  )
  batch = {
    "x": jnp.asarray(x),
    "y": jnp.asarray(log_q.argmax(-1), jnp.int32),
    "teacher_logits": jnp.asarray(teacher_logits),
  }

  def one_seed(key):
    params = model.init(key)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    def body(state, _):
      state, metrics = step(state, batch)
      return state, metrics["kl_q_student"]

    state, curve = jax.lax.scan(body, state, None, length=config.num_steps)
    final = losses.mixture_kd(model.apply(state.params, batch["x"]), jnp.asarray(log_q))  # [N]
    return final.mean(), final.max(), curve

  keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
  mean_kl, max_kl, curves = jax.device_get(jax.jit(jax.vmap(one_seed))(keys))
  num_params = sum(p.size for p in jax.tree.leaves(jax.eval_shape(model.init, keys[0])))
  every = max(1, config.num_steps // 100)
  return {
    "width": width,
    "num_params": int(num_params),
    "final_kl": mean_kl.tolist(),  # [seeds] mean over the N points
    "final_max_kl": max_kl.tolist(),  # [seeds] worst point
    "curve_steps": list(range(0, config.num_steps, every)),
    "curve": curves[:, ::every].mean(axis=0).tolist(),  # batch KL(q ‖ p_S) before each step
  }


def run(config, workdir: str) -> dict:
  """Sweeps the student width; returns the final KL per width and seed."""
  del workdir
  x, teacher_logits, weights, log_q = problem(config)
  rows = []
  for width in tqdm(config.widths, disable=not config.progress, desc="widths"):
    rows.append(fit(config, width, x, teacher_logits, weights, log_q))
  return {
    "num_points": config.num_points,
    "vocab_size": data_lib.NUM_CLASSES,
    "target_dof": config.num_points * (data_lib.NUM_CLASSES - 1),  # N·(V − 1)
    "target_entropy": float(-(np.exp(log_q) * log_q).sum(-1).mean()),
    "rows": rows,
  }


def format_table(results: dict) -> str:
  """Final KL(q ‖ p_S) per width."""
  lines = [
    f"Prop V.2: N={results['num_points']} points, V={results['vocab_size']}, "
    f"N·(V−1)={results['target_dof']} target degrees of freedom; mean H(q) = "
    f"{results['target_entropy']:.3f} nats",
    f"{'width':>6} {'params':>8} {'mean KL(q‖p_S)':>15} {'± over seeds':>12} {'worst point':>12}",
  ]
  for r in results["rows"]:
    kl = np.asarray(r["final_kl"])
    lines.append(
      f"{r['width']:>6} {r['num_params']:>8} {kl.mean():>15.3e} {kl.std():>12.1e} "
      f"{max(r['final_max_kl']):>12.3e}"
    )
  return "\n".join(lines)


def make_figure(results: dict, png_path: str) -> None:
  """Final KL vs parameter count (log-log), and the training curves per width."""
  plt = common.pyplot()
  rows = results["rows"]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
  ax = axes[0]
  params = [r["num_params"] for r in rows]
  kl = np.asarray([r["final_kl"] for r in rows])  # [widths, seeds]
  ax.plot(params, kl.mean(axis=1), "o-", color="C0", label="mean over the N points")
  for j in range(kl.shape[1]):
    ax.plot(params, kl[:, j], ".", color="C0", alpha=0.4)
  ax.plot(
    params, [max(r["final_max_kl"]) for r in rows], "s--", color="C3", ms=4, label="worst point"
  )
  ax.axvline(results["target_dof"], color="k", ls=":", label="N·(V−1) target dof")
  for r in rows:
    ax.annotate(
      f"w={r['width']}",
      (r["num_params"], np.mean(r["final_kl"])),
      fontsize=7,
      textcoords="offset points",
      xytext=(3, 4),
    )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("student parameters")
  ax.set_ylabel("final KL(q ‖ p_S)")
  ax.set_title(f"Prop V.2: capacity drives KL(q‖p_S) → 0 on N={results['num_points']} points")
  ax.legend(fontsize=8)
  ax = axes[1]
  shades = plt.cm.viridis(np.linspace(0, 0.9, len(rows)))
  for r, c in zip(rows, shades, strict=True):
    ax.plot(r["curve_steps"], r["curve"], color=c, lw=1.2, label=f"width {r['width']}")
  ax.set_yscale("log")
  ax.set_xlabel("full-batch step")
  ax.set_ylabel("KL(q ‖ p_S) (mean over seeds)")
  ax.set_title("Training curves")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
