"""Side-by-side timing of the multi-teacher KD loss (value and gradient) on this machine.

For each (K, rows, V, dtype) it times, in one process, in 3 rounds of blocks (median ms):
  naive-einsum  softmax per teacher, einsum('k,kbv->bv') mixture, KL by hand, jax.grad
  naive-optax   the same mixture, optax.losses.kl_divergence, jax.grad
  ours          mtkd_jax.kernels.fused_kd_loss(implementation="xla") (custom_vjp)
  mem floor     a jitted read of each input once plus one [B, V] write
  exp floor     a jitted, fused Σ exp(x) over (K + 2)·B·V elements, no output buffer
plus the geometric operator and a single-teacher KL of the same shape (K = 1) at each (rows, V,
dtype), and the compiled temporary bytes (`memory_analysis().temp_size_in_bytes`).

  python benchmarks/kd_loss.py --quick     # the target row only: K=4, rows=64, V=32768, f32
  python benchmarks/kd_loss.py             # the full table (~5-10 min on 2 cores)
"""

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtkd_jax.kernels import fused_kd_loss


def _naive_einsum(zs, zt, temps, w, ts):
  p = jax.nn.softmax(zt.astype(jnp.float32) / temps[:, None, None], axis=-1)  # [K, B, V]
  q = jnp.einsum("k,kbv->bv", w, p)
  log_p_s = jax.nn.log_softmax(zs.astype(jnp.float32) / ts, axis=-1)
  return ts**2 * jnp.sum(q * (jnp.log(q) - log_p_s), axis=-1)


def _naive_optax(zs, zt, temps, w, ts):
  p = jax.nn.softmax(zt.astype(jnp.float32) / temps[:, None, None], axis=-1)
  q = jnp.einsum("k,kbv->bv", w, p)
  log_p_s = jax.nn.log_softmax(zs.astype(jnp.float32) / ts, axis=-1)
  return ts**2 * optax.losses.kl_divergence(log_p_s, q)


def _value_and_grad(loss):
  return jax.jit(jax.value_and_grad(lambda zs, zt: loss(zs, zt).mean()))


def _memory_floor(zs, zt):
  """Reads K + 1 inputs once, writes one [B, V] array in the student's dtype."""
  return sum((zt[k] for k in range(zt.shape[0])), zs)


def _exp_floor(zs, zt):
  """(K + 2)·B·V exps, fused into reductions (exp(−x) so XLA cannot share it with exp(x))."""
  f32 = lambda x: x.astype(jnp.float32)
  return jnp.sum(jnp.exp(f32(zt))) + jnp.sum(jnp.exp(f32(zs))) + jnp.sum(jnp.exp(-f32(zs)))


def _temp_bytes(fn, *args):
  return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def _time(fns, args, budget_s, rounds=3):
  """Median ms of each function: `rounds` rounds, each running every function in a block of
  consecutive calls (the first of a block discarded). Blocks keep each function in its steady
  state, as in a training loop (round-robin single calls made ours ~40% slower: the naive
  functions' 84 MB of temporaries evict its buffers); rounds spread load spikes over all."""
  for f in fns.values():
    jax.block_until_ready(f(*args))  # compile and warm up
  t0 = time.perf_counter()
  for f in fns.values():
    jax.block_until_ready(f(*args))
  reps = int(np.clip(budget_s / max(time.perf_counter() - t0, 1e-4) / rounds, 2, 10))
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, f in fns.items():
      jax.block_until_ready(f(*args))
      for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times[name].append(time.perf_counter() - t)
  return {name: 1e3 * float(np.median(v)) for name, v in times.items()}, reps * rounds


def run_config(k, b, v, dtype, budget_s):
  ks = jax.random.split(jax.random.key(k * 1000 + b + v), 2)
  zt = (3 * jax.random.normal(ks[0], (k, b, v))).astype(dtype)
  zs = (3 * jax.random.normal(ks[1], (b, v))).astype(dtype)
  temps = jnp.linspace(0.5, 2.0, k) if k > 1 else jnp.ones((1,))
  w, ts = jnp.full((k,), 1.0 / k), 2.0
  ours = lambda op: _value_and_grad(
    lambda s, t: fused_kd_loss(
      s,
      t,
      temperatures=temps,
      weights=w,
      student_temperature=ts,
      operator=op,
      implementation="xla",
    )
  )
  single = _value_and_grad(
    lambda s, t: fused_kd_loss(
      s,
      t[:1],
      temperatures=1.0,
      weights=jnp.ones((1,)),
      student_temperature=ts,
      implementation="xla",
    )
  )
  fns = {
    "naive-einsum": _value_and_grad(lambda s, t: _naive_einsum(s, t, temps, w, ts)),
    "naive-optax": _value_and_grad(lambda s, t: _naive_optax(s, t, temps, w, ts)),
    "ours": ours("linear"),
    "geometric": ours("geometric"),
    "single-teacher": single,
    "mem-floor": jax.jit(_memory_floor),
    "exp-floor": jax.jit(_exp_floor),
  }
  ms, reps = _time(fns, (zs, zt), budget_s)
  row = dict(K=k, rows=b, V=v, dtype=jnp.dtype(dtype).name, reps=reps, **ms)
  row["temp-ours"] = _temp_bytes(fns["ours"], zs, zt)
  row["temp-naive"] = _temp_bytes(fns["naive-einsum"], zs, zt)
  row["temp-geometric"] = _temp_bytes(fns["geometric"], zs, zt)
  return row


def _fmt_table(rows):
  head = (
    "| K | rows | V | dtype | naive einsum ms | naive optax ms | ours ms | mem floor ms "
    "| exp floor ms | speed-up vs naive | ours / max(floors) | geometric ms "
    "| 1-teacher KL ms | geometric / 1-teacher | temp ours MB | temp naive MB | 3·B·V·4 MB |"
  )
  lines = [head, "|" + "---|" * 17]
  for r in rows:
    naive = min(r["naive-einsum"], r["naive-optax"])
    floor = max(r["mem-floor"], r["exp-floor"])
    lines.append(
      f"| {r['K']} | {r['rows']} | {r['V']} | {r['dtype']} | {r['naive-einsum']:.2f} "
      f"| {r['naive-optax']:.2f} | {r['ours']:.2f} | {r['mem-floor']:.2f} "
      f"| {r['exp-floor']:.2f} | {naive / r['ours']:.1f}× | {r['ours'] / floor:.2f} "
      f"| {r['geometric']:.2f} | {r['single-teacher']:.2f} "
      f"| {r['geometric'] / r['single-teacher']:.2f} | {r['temp-ours'] / 1e6:.1f} "
      f"| {r['temp-naive'] / 1e6:.1f} | {3 * r['rows'] * r['V'] * 4 / 1e6:.1f} |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="K=4, rows=64, V=32768, f32 only")
  parser.add_argument("--budget", type=float, default=None, help="seconds of timing per row")
  parser.add_argument("--output", default=None, help="also write the markdown table here")
  args = parser.parse_args(argv)
  if args.quick:
    configs = [(4, 64, 32768, jnp.float32)]
  else:
    configs = [
      (k, b, v, d)
      for d in (jnp.float32, jnp.bfloat16)
      for v in (32768, 131072)
      for b in (8, 64)
      for k in (1, 2, 4, 8)
    ]
  budget = args.budget or (6.0 if args.quick else 3.0)
  print(
    f"# jax {jax.__version__}, {platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at start",
    file=sys.stderr,
  )
  rows, t0 = [], time.perf_counter()
  for i, (k, b, v, d) in enumerate(configs):
    rows.append(run_config(k, b, v, d, budget))
    r = rows[-1]
    print(
      f"[{i + 1}/{len(configs)} {time.perf_counter() - t0:.0f}s] K={k} rows={b} V={v} "
      f"{r['dtype']}: ours {r['ours']:.2f} ms, naive {r['naive-einsum']:.2f} ms, "
      f"floors {r['mem-floor']:.2f}/{r['exp-floor']:.2f} ms",
      file=sys.stderr,
      flush=True,
    )
  table = _fmt_table(rows)
  print(table)
  print(f"\nload average at end: {os.getloadavg()[0]:.1f}", file=sys.stderr)
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
