"""Side-by-side: value and gradients of the KD loss *including the output projections*.

For each (N, K, dtype, teachers) at d = 256, V = 32768, in one process, median ms of:
  naive   h @ W (and h_k @ W_k for teachers given as pairs), softmax per teacher, the linear
          mixture by einsum, T_S²·KL(q ‖ p_S), `jax.value_and_grad` w.r.t. (h, W)
  ours    mtkd_jax.kernels.fused_linear_kd_loss(...).mean(), value and grad w.r.t. (h, W)
  floor   the projections and their gradients alone, in the same token chunks as ours: per
          chunk z = h W, z_k = h_k W_k, dz = z − Σ_k z_k (one elementwise pass), dh = dz Wᵀ,
          dW += hᵀ dz: (K + 3) matmuls of C·d·V (K = 0 teacher matmuls for logits)
and the compiled temporary bytes (`jit(...).lower(...).compile().memory_analysis()`, nothing
run) of ours and of naive, also at N = 16384 and at V = 131072 (compile only).

  python benchmarks/fused_linear_kd.py --quick   # target row (N=4096, K=4, pairs, f32) + memory
  python benchmarks/fused_linear_kd.py           # all timed rows + memory rows
"""

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax.kernels import default_token_chunk, fused_linear_kd_loss

D, V, TS = 256, 32768, 2.0


def _setup(k):
  temps = jnp.linspace(0.5, 2.0, k) if k > 1 else jnp.ones((1,))
  return temps, jnp.full((k,), 1.0 / k)


def _teacher_logits(teachers):
  if isinstance(teachers, (list, tuple)):
    return jnp.stack([jnp.dot(a, b, preferred_element_type=jnp.float32) for a, b in teachers])
  return teachers.astype(jnp.float32)


def naive_loss(h, w_s, teachers, temps, w):
  z = jnp.dot(h, w_s, preferred_element_type=jnp.float32)  # [N, V]
  p = jax.nn.softmax(_teacher_logits(teachers) / temps[:, None, None], axis=-1)  # [K, N, V]
  q = jnp.einsum("k,knv->nv", w, p)
  log_p_s = jax.nn.log_softmax(z / TS, axis=-1)
  return (TS**2 * jnp.sum(q * (jnp.log(q) - log_p_s), axis=-1)).mean()


def ours_loss(h, w_s, teachers, temps, w):
  loss = fused_linear_kd_loss(
    h, w_s, teachers, temperatures=temps, weights=w, student_temperature=TS
  )
  return loss.mean()


def matmul_floor(h, w_s, teachers, chunk):
  """(dh, dW): the chunked projections and their gradients, no softmax."""
  n = h.shape[0]
  f32 = jnp.float32
  pairs = isinstance(teachers, (list, tuple))

  def body(i, carry):
    dh, dw = carry
    sl = lambda x, ax=0: jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=ax)
    h_c = sl(h)
    dz = jnp.dot(h_c, w_s, preferred_element_type=f32)  # [C, V]
    if pairs:
      for a, b in teachers:
        dz = dz - jnp.dot(sl(a), b, preferred_element_type=f32)
    dz = dz.astype(w_s.dtype)
    dh = jax.lax.dynamic_update_slice_in_dim(
      dh, jnp.dot(dz, w_s.T, preferred_element_type=f32), i * chunk, 0
    )
    dims = (((0,), (0,)), ((), ()))
    return dh, dw + jax.lax.dot_general(h_c, dz, dims, preferred_element_type=f32)

  init = (jnp.zeros((n, h.shape[1]), f32), jnp.zeros(w_s.shape, f32))
  return jax.lax.fori_loop(0, n // chunk, body, init)


def _fns(k, n, teachers_kind):
  temps, w = _setup(k)
  grad = lambda f: jax.jit(jax.value_and_grad(lambda h, ws, t: f(h, ws, t, temps, w), (0, 1)))
  chunk = default_token_chunk(V, k, n)
  chunk = max(c for c in range(8, chunk + 1, 8) if n % c == 0)  # the floor has no ragged tail
  floor = jax.jit(lambda h, ws, t: matmul_floor(h, ws, t, chunk))
  return {"naive": grad(naive_loss), "ours": grad(ours_loss), "floor": floor}


def _avals(n, k, dtype, teachers_kind, v=V):
  sds = jax.ShapeDtypeStruct
  if teachers_kind == "pairs":
    t = [(sds((n, D), dtype), sds((D, v), dtype)) for _ in range(k)]
  else:
    t = sds((k, n, v), dtype)
  return sds((n, D), dtype), sds((D, v), dtype), t


def _inputs(n, k, dtype, teachers_kind):
  ks = jax.random.split(jax.random.key(n + k), 2 * k + 2)
  rnd = lambda key, shape, scale: (scale * jax.random.normal(key, shape)).astype(dtype)
  h, w_s = rnd(ks[0], (n, D), 1.0), rnd(ks[1], (D, V), 0.2)
  if teachers_kind == "pairs":
    t = [(rnd(ks[2 + 2 * i], (n, D), 1.0), rnd(ks[3 + 2 * i], (D, V), 0.2)) for i in range(k)]
  else:
    t = rnd(ks[2], (k, n, V), 3.0)
  return h, w_s, t


def _temp_mb(fn, *avals):
  return fn.lower(*avals).compile().memory_analysis().temp_size_in_bytes / 2**20


def _time(fns, args, rounds):
  """Median wall ms and process CPU ms (all threads) per function; rounds interleave the
  functions so load spikes hit all of them. On a shared machine the CPU time is the steadier
  measure of work (wall time also counts waiting for a core)."""
  for f in fns.values():
    jax.block_until_ready(f(*args))  # compile and warm up
  times = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  for _ in range(rounds):
    for name, f in fns.items():
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(f(*args))
      times[name].append(time.perf_counter() - t)
      cpu[name].append(time.process_time() - c)
  out = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
  return out | {f"cpu-{name}": 1e3 * float(np.median(v)) for name, v in cpu.items()}


def timed_row(n, k, dtype, kind, rounds):
  fns = _fns(k, n, kind)
  ms = _time(fns, _inputs(n, k, dtype, kind), rounds)
  avals = _avals(n, k, dtype, kind)
  mem = {f"temp-{name}": _temp_mb(fns[name], *avals) for name in ("naive", "ours")}
  return dict(N=n, K=k, dtype=jnp.dtype(dtype).name, teachers=kind, V=V, **ms, **mem)


def memory_row(n, k, dtype, kind, v):
  temps, w = _setup(k)
  grad = lambda f: jax.jit(jax.value_and_grad(lambda h, ws, t: f(h, ws, t, temps, w), (0, 1)))
  avals = _avals(n, k, dtype, kind, v)
  mem = {"temp-ours": _temp_mb(grad(ours_loss), *avals)}
  # XLA:CPU aborts (a failed CHECK, not an exception) compiling the naive version once a
  # [N, V] array has 2^31 elements: there its lower bound, the K + 1 f32 [N, V] logits.
  big = n * v >= 2**31
  mem["temp-naive"] = (k + 1) * n * v * 4 / 2**20 if big else _temp_mb(grad(naive_loss), *avals)
  return dict(N=n, K=k, dtype=jnp.dtype(dtype).name, teachers=kind, V=v, naive_bound=big, **mem)


def _fmt(rows):
  head = (
    "| N | V | K | dtype | teachers | naive ms | ours ms | matmul floor ms | naive / ours "
    "| ours / floor | CPU-time naive / ours | CPU-time ours / floor | temp naive MiB "
    "| temp ours MiB | ours / naive temp |"
  )
  lines = [head, "|" + "---|" * 15]
  for r in rows:
    t = lambda key, r=r: f"{r[key]:.0f}" if key in r else "–"
    speed = f"{r['naive'] / r['ours']:.2f}×" if "ours" in r else "–"
    floor = f"{r['ours'] / r['floor']:.2f}" if "ours" in r else "–"
    cpu_speed = f"{r['cpu-naive'] / r['cpu-ours']:.2f}×" if "ours" in r else "–"
    cpu_floor = f"{r['cpu-ours'] / r['cpu-floor']:.2f}" if "ours" in r else "–"
    lines.append(
      f"| {r['N']} | {r['V']} | {r['K']} | {r['dtype']} | {r['teachers']} | {t('naive')} "
      f"| {t('ours')} | {t('floor')} | {speed} | {floor} | {cpu_speed} | {cpu_floor} "
      f"| {'≥ ' if r.get('naive_bound') else ''}{r['temp-naive']:.0f} "
      f"| {r['temp-ours']:.1f} | {r['temp-ours'] / r['temp-naive']:.3f} |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="target row + memory rows only")
  parser.add_argument("--rounds", type=int, default=3, help="timed calls per function")
  parser.add_argument("--output", default=None, help="also write the markdown table here")
  args = parser.parse_args(argv)
  f32, bf16 = jnp.float32, jnp.bfloat16
  if args.quick:
    timed = [(4096, 4, f32, "pairs")]
  else:
    timed = [
      (n, k, dt, kind)
      for kind in ("pairs", "logits")
      for dt in (f32, bf16)
      for n in (1024, 4096)
      for k in (1, 2, 4)
      if not (kind == "logits" and n == 4096)  # [K, N, V] inputs of 2 GiB: memory rows only
    ]
  memory = [
    (n, 4, dt, kind, v)
    for dt in (f32, bf16)
    for kind in ("pairs", "logits")
    for n, v in ((1024, V), (4096, V), (16384, V), (16384, 131072))
  ]
  print(
    f"# jax {jax.__version__}, {platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at start",
    file=sys.stderr,
  )
  rows, t0 = [], time.perf_counter()
  for i, cfg in enumerate(timed):
    rows.append(timed_row(*cfg, rounds=args.rounds))
    r = rows[-1]
    print(_fmt(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(
      f"[{i + 1}/{len(timed)} {time.perf_counter() - t0:.0f}s] N={r['N']} K={r['K']} "
      f"{r['dtype']} {r['teachers']}: naive {r['naive']:.0f} ms, ours {r['ours']:.0f} ms, "
      f"floor {r['floor']:.0f} ms, load {os.getloadavg()[0]:.1f}",
      file=sys.stderr,
      flush=True,
    )
  for cfg in memory:
    rows.append(memory_row(*cfg))
    print(_fmt(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
  table = _fmt(rows)
  print(table)
  print(f"\nload average at end: {os.getloadavg()[0]:.1f}", file=sys.stderr)
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
