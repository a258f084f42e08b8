r"""Device check: the Pallas kernels compiled on the accelerator, the fused-loss benchmark at an
LLM shape, and the two end-to-end jobs; one summary table on stdout and one JSON file.

    make device-check                                # = python benchmarks/device_check.py
    python benchmarks/device_check.py --cpu --out=/tmp/check.json   # tiny shapes on the CPU

On the accelerator jax sees (≤ 8 min on one GPU; --budget stops starting new work after 420 s):
  kernels  every Pallas kernel compiled (interpret=False) against its plain-jnp reference,
           forward and gradient (a random row cotangent), f32 and bf16, ragged V, K ∈ {1..4},
           extreme logits and temperatures, the vocab-parallel path if there are several
           devices, `fused_mixture`, `fused_linear_kd_loss` if the package has it, and which
           implementation "auto" picks (or whether it fell back to XLA, with the error);
  bench    `fused_kd_loss` (Pallas and XLA paths) against the naive formulation (the
           plain-jnp reference under value_and_grad) at N = 8192 tokens, V = 128256,
           K ∈ {1, 2, 4}, bf16 (and `fused_linear_kd_loss` at d = 4096 if present): median time,
           peak device memory (`memory_stats()`; one process per K, the cases in order of
           expected peak, since the peak cannot be reset), compiled temporaries
           (`memory_analysis()`) and the bandwidth floor (inputs read once and the gradient
           written once, at the device's copy bandwidth measured in the same run);
  e2e      the digits job and the small LM experiment, through the CLI (E2E_JOBS below).
The JSON goes to $OUT/device_check.json when OUT is set, else to --out. Exit status 1 if any
check failed. Without an accelerator: one line "no accelerator: ..." and exit 0.

--cpu runs the same code on the CPU at tiny shapes, Pallas in interpret mode (a proof of the
script, not a measurement; tests/test_device_check.py runs it).

The GPU machine (jax/jaxlib/jax-cuda13-plugin 0.11.2, flax, optax, orbax-checkpoint, chex,
absl-py, PyYAML, setuptools preinstalled; no ml-collections, no network). Once, here, in the
repo root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      -d .whl ml-collections==1.1.0

then one call of the device tool with carry [".whl"] and this command (one shell line; the
backslashes only wrap it here):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site && { python3 -m pip install -q --no-index --no-deps \
      --no-build-isolation -e . && python3 -c 'import mtkd_jax.kernels' || { ln -sfn \
      ../kernels mtkd_jax/kernels && export PYTHONPATH=$PWD:$PYTHONPATH; }; } \
      && PYTHONUNBUFFERED=1 python3 benchmarks/device_check.py

`kernels/` is importable as `mtkd_jax.kernels` only once the project is installed: the
editable install maps it (setuptools >= 64); if that fails, a symlink and PYTHONPATH do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

# The two end-to-end jobs, as the CLI runs them today; "{workdir}" is filled in. Each is
# `python <args>` from the repo root, and writes <workdir>/results.json.
E2E_JOBS = {
  "digits": [
    "-m",
    "mtkd_jax.main",
    "--config=experiments/configs/digits.py:small",
    "--workdir={workdir}",
    "--config.progress=False",
  ],
  "stdlib_lm_small": [
    "-m",
    "mtkd_jax.main",
    "--config=experiments/configs/stdlib_lm.py:small",
    "--workdir={workdir}",
    "--config.progress=False",
  ],
}
# Appended with --cpu: the same jobs, shorter.
E2E_CPU_OVERRIDES = {"digits": ["--config.teacher_steps=4", "--config.num_steps=4"]}

LLM = dict(n=8192, v=128256, d=4096)  # tokens, vocabulary (Llama 3), hidden width
TINY = dict(n=64, v=1000, d=32)
_CASE_MARK = "DEVICE_CHECK_CASE "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- helpers


def _error(e):
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


def _normalised_error(actual, expected, rtol):
  """max |a − e| / (rtol·max|e| + rtol·|e|): ≤ 1 passes, as the interpret-mode tests' check."""
  import numpy as np

  a, e = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  if not np.all(np.isfinite(a)):
    return float("inf")
  tol = rtol * max(float(np.abs(e).max()), 1e-6) + rtol * np.abs(e)
  return float((np.abs(a - e) / tol).max())


def _pseudo_random(shape, seed, dtype):
  """Logits uniform in [−4, 4) from an integer hash of the indices, as one fusion that writes
  `dtype` directly: jax.random would leave f32 or random-bit temporaries as large as the
  inputs, which would set the device's peak memory before any case is measured."""
  import jax
  import jax.numpy as jnp

  def make(seed):  # a traced seed: XLA must not constant-fold a GiB-sized result
    x = jnp.broadcast_to(seed * jnp.uint32(0x9E3779B9), shape)
    for ax, size in enumerate(shape):
      x = x * jnp.uint32(size | 1) + jax.lax.broadcasted_iota(jnp.uint32, shape, ax)
    for shift, mul in ((16, 0x7FEB352D), (15, 0x846CA68B)):  # the lowbias32 hash
      x = (x ^ (x >> shift)) * jnp.uint32(mul)
    x = x ^ (x >> 16)
    return ((x >> 8).astype(jnp.float32) * (8.0 / (1 << 24)) - 4.0).astype(dtype)

  return jax.jit(make)(jnp.uint32(seed))


def _memory(device):
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return stats or {}


def _temp_bytes(compiled):
  try:
    return int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:
    return None


def _median_ms(fn, args, budget_s, max_reps=30):
  import jax
  import numpy as np

  jax.block_until_ready(fn(*args))  # warm-up (compiled already)
  times, t_end = [], time.perf_counter() + budget_s
  while len(times) < 3 or (time.perf_counter() < t_end and len(times) < max_reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * float(np.median(times)), len(times)


# ----------------------------------------------------------------------------- kernels


def _kernel_cases(cpu):
  """(name, op, dtype, K, B, V, extreme): ragged V everywhere (V % block ≠ 0)."""
  if cpu:  # small, and few: interpret mode compiles slowly and runs ~200× slower than XLA
    return [
      ("linear", "float32", 3, 10, 700, False),  # two passes, ragged rows and vocabulary
      ("geometric", "bfloat16", 1, 3, 200, False),  # one pass
    ]
  shapes = [(1, 8, 1000), (2, 16, 4096 + 256), (4, 8, 32000), (3, 4, 128256)]
  cases = [
    (op, dt, k, b, v, False)
    for op in ("linear", "geometric")
    for dt in ("float32", "bfloat16")
    for k, b, v in shapes
  ]
  return cases + [(op, "float32", 2, 4, 4096 + 300, True) for op in ("linear", "geometric")]


def _kd_inputs(op, dtype, k, b, v, extreme, seed=0):
  import jax
  import jax.numpy as jnp

  ks = jax.random.split(jax.random.key(seed + 17 * k + v), 5)
  if extreme:  # logits ±1e4, temperatures 1e-3 and 1e3, masked (−inf) teacher tokens
    zt = jax.random.uniform(ks[0], (k, b, v), minval=-1e4, maxval=1e4)
    zt = zt.at[:, :, :7].set(-jnp.inf).at[0, 1, 10:20].set(-jnp.inf)
    zs = jax.random.uniform(ks[1], (b, v), minval=-1e4, maxval=1e4)
    temps = jnp.array([1e-3, 1e3] * k)[:k]
    ts = 1e-3
  else:
    zt = 3.0 * jax.random.normal(ks[0], (k, b, v))
    zs = 3.0 * jax.random.normal(ks[1], (b, v))
    temps = jax.random.uniform(ks[3], (k,), minval=0.5, maxval=2.0)
    ts = 1.5
  w = jax.nn.softmax(jax.random.normal(ks[2], (k, b)), axis=0)
  ct = jax.random.uniform(ks[4], (b,), minval=0.5, maxval=1.5)
  kw = dict(temperatures=temps, weights=w, student_temperature=ts, operator=op)
  return zs.astype(dtype), zt.astype(dtype), kw, ct


def _value_and_vjp(loss):
  """jit of (s, t, ct) -> (loss(s, t), ∂⟨ct, loss⟩/∂s): forward and backward in one program.

  The arrays are arguments, never closed over: XLA would constant-fold them (a minute on CPU).
  """
  import jax

  def f(s, t, ct):
    out, vjp = jax.vjp(lambda s: loss(s, t), s)
    return out, vjp(ct)[0]

  return jax.jit(f)


def _custom_calls(hlo_text):
  """Pallas kernels in a lowered module: Triton or Mosaic GPU calls, or Mosaic TPU calls."""
  names = ("__gpu$xla.gpu.triton", "mosaic_gpu", "tpu_custom_call")
  return sum(hlo_text.count(f"@{name}") + hlo_text.count(f'"{name}"') for name in names)


def _check_kd_case(kernels, op, dtype, k, b, v, extreme, interpret):
  zs, zt, kw, ct = _kd_inputs(op, dtype, k, b, v, extreme)
  rtol = 1e-4 if extreme else 2e-5
  grad_rtol = 1e-2 if dtype == "bfloat16" else rtol
  ours = _value_and_vjp(
    lambda s, t: kernels.fused_kd_loss(s, t, implementation="pallas", interpret=interpret, **kw)
  )
  ref = _value_and_vjp(lambda s, t: kernels.fused_kd_loss_reference(s, t, **kw))
  t0 = time.perf_counter()
  lowered = ours.lower(zs, zt, ct)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  (out, g), (ref_out, ref_g) = compiled(zs, zt, ct), ref(zs, zt, ct)
  fwd, grad = _normalised_error(out, ref_out, rtol), _normalised_error(g, ref_g, grad_rtol)
  return dict(
    ok=fwd <= 1 and grad <= 1 and g.dtype == zs.dtype,
    fwd_err=fwd,
    grad_err=grad,
    rtol=rtol,
    grad_rtol=grad_rtol,
    compile_s=round(compile_s, 2),
    custom_calls=_custom_calls(lowered.as_text()),
  )


def _check_vocab_parallel(kernels, interpret, ops):
  import jax
  import jax.numpy as jnp

  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("vocab",))
  out = {}
  for op in ops:
    zs, zt, kw, ct = _kd_inputs(op, "float32", 3, 4, n * 640, False)
    zt = zt.at[:, :, 5].set(-jnp.inf)
    ours = _value_and_vjp(
      lambda s, t, kw=kw: kernels.fused_kd_loss_vocab_parallel(
        s, t, mesh=mesh, axis_name="vocab", implementation="pallas", interpret=interpret, **kw
      )
    )
    ref = _value_and_vjp(lambda s, t, kw=kw: kernels.fused_kd_loss_reference(s, t, **kw))
    (o, g), (ro, rg) = ours(zs, zt, ct), ref(zs, zt, ct)
    out[op] = dict(fwd_err=_normalised_error(o, ro, 2e-5), grad_err=_normalised_error(g, rg, 2e-5))
  ok = all(r["fwd_err"] <= 1 and r["grad_err"] <= 1 for r in out.values())
  return dict(ok=ok, devices=n, **out)


def _check_mixture(kernels, interpret, backend, ops):
  import jax

  out = {}
  for op in ops:
    _, zt, kw, _ = _kd_inputs(op, "float32", 3, 5, 1300, False)
    kw = dict(temperatures=kw["temperatures"], weights=kw["weights"], operator=op)
    try:
      got = jax.jit(
        lambda t, kw=kw: kernels.fused_mixture(
          t, implementation="pallas", interpret=interpret, **kw
        )
      )(zt)
    except NotImplementedError as e:
      if backend != "gpu":
        raise
      return dict(ok=True, skipped=f"{_error(e)} (auto uses the XLA path there)")
    out[op] = _normalised_error(got, kernels.fused_mixture_reference(zt, **kw), 1e-5)
  return dict(ok=all(e <= 1 for e in out.values()), fwd_err=out)


def _check_auto(kernels, interpret):
  """Which path "auto" takes at a mid-size shape, and the fallback warning if any."""
  import jax

  zs, zt, kw, _ = _kd_inputs("linear", "bfloat16", 4, 16, 32000, False)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loss = jax.jit(lambda s, t: kernels.fused_kd_loss(s, t, **kw))
    text = loss.lower(zs, zt).as_text()
    jax.block_until_ready(loss(zs, zt))
  fell_back = [str(w.message) for w in caught if "falls back" in str(w.message)]
  path = "pallas" if _custom_calls(text) else "xla"
  return dict(ok=True, path=path, fallback_warning=fell_back[0] if fell_back else None)


def _check_linear_kd(kernels, interpret):
  import jax
  import jax.numpy as jnp

  out = {}
  for dtype in ("float32", "bfloat16"):
    ks = jax.random.split(jax.random.key(3), 4)
    n, d, v, k = 40, 64, 1000, 3
    h = jax.random.normal(ks[0], (n, d)).astype(dtype)
    head = (jax.random.normal(ks[1], (d, v)) / 8).astype(dtype)
    zt = (3 * jax.random.normal(ks[2], (k, n, v))).astype(dtype)
    kw = dict(
      temperatures=jnp.array([1.0, 2.0, 0.5]),
      weights=jnp.array([0.2, 0.3, 0.5]),
      student_temperature=1.5,
    )

    def vg(fn, kw=kw):
      return jax.jit(jax.value_and_grad(lambda x, m, t: fn(x, m, t, **kw).sum(), argnums=(0, 1)))

    fused = lambda h, w, t, **a: kernels.fused_linear_kd_loss(
      h, w, t, implementation="pallas", interpret=interpret, token_chunk=16, **a
    )
    (val, (gh, gw)) = vg(fused)(h, head, zt)
    (rval, (rgh, rgw)) = vg(kernels.fused_linear_kd_loss_reference)(h, head, zt)
    rtol = 1e-2 if dtype == "bfloat16" else 1e-4
    out[dtype] = dict(
      fwd_err=_normalised_error(val, rval, rtol),
      grad_h_err=_normalised_error(gh, rgh, rtol),
      grad_w_err=_normalised_error(gw, rgw, rtol),
    )
  ok = all(e <= 1 for r in out.values() for e in r.values())
  return dict(ok=ok, **out)


def run_kernels(args, kernels, backend):
  import jax

  interpret = args.cpu
  ops = ("linear",) if args.cpu else ("linear", "geometric")
  rows = []

  def record(name, fn):
    t0 = time.perf_counter()
    try:
      row = fn()
    except Exception as e:
      row = dict(ok=False, error=_error(e), traceback=traceback.format_exc()[-3000:])
    row = dict(name=name, seconds=round(time.perf_counter() - t0, 2), **row)
    rows.append(row)
    status = "ok" if row["ok"] else f"FAILED {row.get('error', '')}"
    print(f"[kernels {time.perf_counter() - args.t0:5.0f}s] {name}: {status}", file=sys.stderr)

  for op, dtype, k, b, v, extreme in _kernel_cases(args.cpu):
    name = f"fused_kd_loss {op} {dtype} K={k} B={b} V={v}" + (" extreme" if extreme else "")
    record(name, lambda c=(op, dtype, k, b, v, extreme): _check_kd_case(kernels, *c, interpret))
  if jax.device_count() > 1:
    record(
      f"fused_kd_loss_vocab_parallel x{jax.device_count()}",
      lambda: _check_vocab_parallel(kernels, interpret, ops),
    )
  else:
    rows.append(dict(name="fused_kd_loss_vocab_parallel", ok=True, skipped="one device"))
  mixture_ops = ("geometric",) if args.cpu else ops  # --cpu: the other operator than above
  record("fused_mixture", lambda: _check_mixture(kernels, interpret, backend, mixture_ops))
  if hasattr(kernels, "fused_linear_kd_loss"):
    record("fused_linear_kd_loss", lambda: _check_linear_kd(kernels, interpret))
  else:
    rows.append(dict(name="fused_linear_kd_loss", ok=True, skipped="not in mtkd_jax.kernels"))
  record("implementation='auto'", lambda: _check_auto(kernels, interpret))  # CPU: XLA
  return rows


# ----------------------------------------------------------------------------- bench


def _bandwidth_and_matmul(cpu):
  """Device copy bandwidth (bytes read + written per second) and bf16 matmul FLOP/s."""
  import jax
  import jax.numpy as jnp

  x = _pseudo_random((1 << (20 if cpu else 30),), 1, jnp.bfloat16)  # 2 GiB on the device
  copy = jax.jit(lambda x: x + 1)  # one read, one write: XLA cannot elide it
  ms, _ = _median_ms(copy, (x,), 1.0)
  bandwidth = 2 * x.nbytes / (ms / 1e3)
  del x
  m = 256 if cpu else 8192
  a = _pseudo_random((m, m), 2, jnp.bfloat16)
  mm_ms, _ = _median_ms(jax.jit(lambda a: a @ a), (a,), 1.0)
  return bandwidth, 2 * m**3 / (mm_ms / 1e3)


def _bench_case(kind, k, cpu):
  """One subprocess: the cases of one (kind, K), each timed, in order of expected peak."""
  import jax
  import jax.numpy as jnp

  from mtkd_jax import kernels

  shape = TINY if cpu else LLM
  n, v, d = shape["n"], shape["v"], shape["d"]
  dev = jax.devices()[0]
  dtype = jnp.bfloat16
  zt = _pseudo_random((k, n, v), 10 + k, dtype)  # [K, N, V]
  temps, w = jnp.linspace(0.5, 2.0, k) if k > 1 else jnp.ones((1,)), jnp.full((k,), 1.0 / k)
  kw = dict(temperatures=temps, weights=w, student_temperature=2.0)
  if kind == "kd":
    zs = _pseudo_random((n, v), 3, dtype)
    args, argnums = (zs, zt), 0
    cases = {  # ascending expected peak: the peak of the process can only grow
      "pallas": lambda s, t: kernels.fused_kd_loss(
        s, t, implementation="pallas", interpret=cpu, **kw
      ),
      "xla": lambda s, t: kernels.fused_kd_loss(s, t, implementation="xla", **kw),
      "naive": lambda s, t: kernels.fused_kd_loss_reference(s, t, **kw),
    }
    bytes_once = (k + 2) * n * v * 2  # K + 1 inputs read, one [N, V] gradient written
    flops = 0
  else:
    h = _pseudo_random((n, d), 4, dtype) * 0.05
    head = _pseudo_random((d, v), 5, dtype) * 0.05
    args, argnums = (h, head, zt), (0, 1)
    cases = {
      "pallas": lambda h, w, t: kernels.fused_linear_kd_loss(
        h, w, t, implementation="pallas", interpret=cpu, **kw
      ),
      "naive": lambda h, w, t: kernels.fused_linear_kd_loss_reference(h, w, t, **kw),
    }
    bytes_once = k * n * v * 2 + 2 * 2 * (n * d + d * v)  # teachers, h and W read, grads out
    flops = 3 * 2 * n * d * v  # logits, ∂/∂h, ∂/∂W
  jax.block_until_ready(args)
  inputs = _memory(dev).get("bytes_in_use")
  rows = {}
  for name, loss in cases.items():
    row = rows[name] = {}
    try:
      f = jax.jit(jax.value_and_grad(lambda *a, loss=loss: loss(*a).mean(), argnums=argnums))
      t0 = time.perf_counter()
      compiled = f.lower(*args).compile()
      row["compile_s"] = round(time.perf_counter() - t0, 2)
      row["temp_bytes"] = _temp_bytes(compiled)
      before = _memory(dev).get("peak_bytes_in_use")
      row["ms"], row["reps"] = _median_ms(compiled, args, 0.3 if cpu else 2.0)
      peak = _memory(dev).get("peak_bytes_in_use")
      if peak is not None and inputs is not None:
        row["peak_bytes"] = peak
        row["peak_above_inputs"] = peak - inputs
        row["peak_exact"] = before is None or peak > before  # else: ≤, set by an earlier case
    except Exception as e:
      row.update(error=_error(e), traceback=traceback.format_exc()[-3000:])
  return dict(
    kind=kind,
    K=k,
    N=n,
    V=v,
    d=d if kind == "linear" else None,
    dtype="bfloat16",
    bytes_once=bytes_once,
    flops=flops,
    input_bytes=inputs,
    cases=rows,
  )


def _run_python(argv, timeout, env=None):
  env = {**os.environ, **(env or {})}
  t0 = time.perf_counter()
  try:
    p = subprocess.run(
      [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    rc, out = p.returncode, p.stdout + p.stderr
  except subprocess.TimeoutExpired as e:
    rc = "timeout"
    out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
  return rc, out, time.perf_counter() - t0


def run_bench(args, kernels):
  bandwidth, matmul = _bandwidth_and_matmul(args.cpu)
  print(
    f"[bench {time.perf_counter() - args.t0:5.0f}s] copy bandwidth {bandwidth / 1e9:.0f} GB/s, "
    f"bf16 matmul {matmul / 1e12:.1f} TFLOP/s",
    file=sys.stderr,
  )
  kinds = ["kd"] + (["linear"] if hasattr(kernels, "fused_linear_kd_loss") else [])
  results = []
  for kind in kinds:
    for k in args.ks:
      left = args.deadline - time.perf_counter()
      if left < 20:
        results.append(dict(kind=kind, K=k, error="skipped: time budget spent"))
        continue
      argv = [os.path.abspath(__file__), f"--_case={kind}:{k}"] + (["--cpu"] if args.cpu else [])
      rc, out, secs = _run_python(argv, timeout=left)  # nothing runs past the budget
      lines = [ln for ln in out.splitlines() if ln.startswith(_CASE_MARK)]
      if rc == 0 and lines:
        res = json.loads(lines[-1][len(_CASE_MARK) :])
      else:
        res = dict(kind=kind, K=k, error=f"case process rc={rc}", output_tail=out[-3000:])
      res["seconds"] = round(secs, 1)
      for row in res.get("cases", {}).values():
        if "ms" in row:
          row["floor_ms"] = 1e3 * res["bytes_once"] / bandwidth
          if res["flops"]:
            row["matmul_floor_ms"] = 1e3 * res["flops"] / matmul
      results.append(res)
      print(
        f"[bench {time.perf_counter() - args.t0:5.0f}s] {kind} K={k}: {_bench_line(res)}",
        file=sys.stderr,
      )
  return dict(
    copy_bandwidth_bytes_per_s=bandwidth,
    matmul_flops_per_s=matmul,
    rows=results,
    targets=_targets(results),
  )


def _targets(results):
  """The fused loss's targets at the largest K: Pallas peak ≤ 1/4 and time ≤ 1/2 of naive,
  time ≤ 2× the bandwidth floor (None where a number is missing)."""
  rows = [r for r in results if r.get("kind") == "kd" and "cases" in r]
  if not rows:
    return None
  row = max(rows, key=lambda r: r["K"])
  ours, naive = row["cases"].get("pallas", {}), row["cases"].get("naive", {})
  ratio = lambda a, b: a / b if a is not None and b else None
  out = dict(
    K=row["K"],
    peak_vs_naive=ratio(ours.get("peak_above_inputs"), naive.get("peak_above_inputs")),
    time_vs_naive=ratio(ours.get("ms"), naive.get("ms")),
    time_vs_floor=ratio(ours.get("ms"), ours.get("floor_ms")),
  )
  limits = dict(peak_vs_naive=0.25, time_vs_naive=0.5, time_vs_floor=2.0)
  out["met"] = {k: None if out[k] is None else out[k] <= lim for k, lim in limits.items()}
  return out


def _bench_line(res):
  if "cases" not in res:
    return res.get("error", "?")
  return ", ".join(
    f"{n} {c['ms']:.2f} ms" if "ms" in c else f"{n} FAILED {c.get('error', '')}"
    for n, c in res["cases"].items()
  )


# ----------------------------------------------------------------------------- e2e


def run_e2e(args):
  rows = []
  for name, argv in E2E_JOBS.items():
    if args.jobs and name not in args.jobs:
      continue
    left = args.deadline - time.perf_counter()
    if left < 20:
      rows.append(dict(name=name, ok=False, error="skipped: time budget spent"))
      continue
    workdir = tempfile.mkdtemp(prefix=f"device_check_{name}_")
    cmd = [a.replace("{workdir}", workdir) for a in argv]
    if args.cpu:
      cmd += E2E_CPU_OVERRIDES.get(name, [])
    env = {"JAX_PLATFORMS": "cpu"} if args.cpu else {}
    rc, out, secs = _run_python(cmd, timeout=left, env=env)
    row = dict(name=name, command="python " + " ".join(cmd), rc=rc, seconds=round(secs, 1))
    path = os.path.join(workdir, "results.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        text = f.read()
      row["results"] = json.loads(text) if len(text) < 200_000 else f"{len(text)} bytes"
    row["ok"] = rc == 0 and "results" in row
    shutil.rmtree(workdir, ignore_errors=True)  # checkpoints: only results.json is kept
    if not row["ok"]:
      row["output_tail"] = out[-3000:]
    rows.append(row)
    status = "ok" if row["ok"] else f"FAILED rc={rc}"
    print(
      f"[e2e {time.perf_counter() - args.t0:5.0f}s] {name}: {status} ({secs:.0f} s)",
      file=sys.stderr,
    )
  return rows


# ----------------------------------------------------------------------------- summary


def _mb(x):
  return "-" if x is None else f"{x / 2**20:.0f}"


def _worst(row, prefix):
  """The largest normalised error under keys `prefix...err`, in nested per-case dicts."""
  found = []
  for key, value in row.items():
    if isinstance(value, dict):
      found += [x for x in [_worst(value, prefix)] if x is not None]
      if key.startswith(prefix) and key.endswith("err"):  # {operator: error}
        found += [x for x in value.values() if isinstance(x, float)]
    elif key.startswith(prefix) and key.endswith("err") and isinstance(value, float):
      found.append(value)
  return max(found) if found else None


def summary_table(report):
  lines = [f"# device check: {report['device']} ({report['backend']}), jax {report['jax']}"]
  lines += [
    "",
    "errors: max |ours − reference| / tolerance (≤ 1 passes); Pallas calls: kernels "
    "in the compiled module (0: interpreted)",
    "",
    "| kernel check | ok | fwd err | grad err | compile s | Pallas calls |",
    "|---|---|---|---|---|---|",
  ]
  for r in report.get("kernels", []):
    if "skipped" in r:
      lines.append(f"| {r['name']} | skipped: {r['skipped']} | | | | |")
    elif "error" in r:
      lines.append(f"| {r['name']} | FAILED: {r['error']} | | | | |")
    elif "path" in r:
      lines.append(f"| {r['name']} | {r['path']} | {r['fallback_warning'] or ''} | | | |")
    else:
      fe, ge = _worst(r, "fwd_"), _worst(r, "grad_")
      fmt = lambda x: "" if x is None else f"{x:.3g}"
      lines.append(
        f"| {r['name']} | {'yes' if r['ok'] else 'NO'} | {fmt(fe)} | {fmt(ge)} "
        f"| {r.get('compile_s', '')} | {r.get('custom_calls', '')} |"
      )
  bench = report.get("bench")
  if bench:
    lines += [
      "",
      f"copy bandwidth {bench['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s (read + write), "
      f"bf16 matmul {bench['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s",
      "",
      "| loss | K | N | V | impl | ms | floor ms | × floor | × naive time "
      "| peak above inputs MiB | × naive peak | temp MiB |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in bench["rows"]:
      if "cases" not in res:
        lines.append(f"| {res['kind']} | {res['K']} | | | | {res.get('error', '')} |||||||")
        continue
      naive = res["cases"].get("naive", {})
      for name, c in res["cases"].items():
        head = f"| {res['kind']} | {res['K']} | {res['N']} | {res['V']} | {name} "
        if "ms" not in c:
          lines.append(head + f"| FAILED: {c.get('error', '')} |||||||")
          continue
        floor = max(c["floor_ms"], c.get("matmul_floor_ms", 0.0))
        peak = c.get("peak_above_inputs")
        exact = "" if c.get("peak_exact", True) else "≤ "
        ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b else "-"
        lines.append(
          head + f"| {c['ms']:.2f} | {floor:.2f} | {c['ms'] / floor:.2f} "
          f"| {ratio(c['ms'], naive.get('ms'))} | {exact}{_mb(peak)} "
          f"| {ratio(peak, naive.get('peak_above_inputs'))} | {_mb(c.get('temp_bytes'))} |"
        )
  targets = (bench or {}).get("targets")
  if targets:
    fmt = lambda k: "-" if targets[k] is None else f"{targets[k]:.2f} (met: {targets['met'][k]})"
    lines.append(
      f"\ntargets at K={targets['K']}: Pallas peak / naive {fmt('peak_vs_naive')} (≤ 0.25), "
      f"time / naive {fmt('time_vs_naive')} (≤ 0.5), time / floor {fmt('time_vs_floor')} (≤ 2)"
    )
  if report.get("e2e"):
    lines += ["", "| end-to-end job | ok | seconds |", "|---|---|---|"]
    for r in report["e2e"]:
      ok = "yes" if r["ok"] else f"NO: {r.get('error', r.get('rc'))}"
      lines.append(f"| {r['name']} | {ok} | {r.get('seconds', '')} |")
  lines.append(f"\nall ok: {report['ok']}, {report['elapsed_s']:.0f} s")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU, Pallas interpreted")
  p.add_argument("--out", default="runs/device_check.json", help="JSON path when $OUT is unset")
  p.add_argument("--sections", default="kernels,bench,e2e", help="comma-separated subset")
  p.add_argument("--jobs", default="", help="comma-separated subset of E2E_JOBS (default all)")
  p.add_argument("--ks", default="1,2,4", help="teacher counts K of the benchmark")
  p.add_argument("--budget", type=float, default=420.0, help="seconds before no new work starts")
  p.add_argument("--_case", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.sections = set(filter(None, args.sections.split(",")))
  args.jobs = set(filter(None, args.jobs.split(",")))
  args.ks = [int(k) for k in args.ks.split(",") if k]
  return args


def main(argv=None):
  args = _parse(argv)
  args.t0 = time.perf_counter()
  args.deadline = args.t0 + args.budget
  if args.cpu:
    os.environ["JAX_PLATFORMS"] = "cpu"
  # Several processes share the device (case processes, the end-to-end jobs): allocate on
  # demand instead of jax's default 75 % up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax

  if args._case:
    kind, k = args._case.split(":")
    print(_CASE_MARK + json.dumps(_bench_case(kind, int(k), args.cpu)), flush=True)
    return 0
  try:
    devices = jax.devices()
  except RuntimeError as e:
    print(f"no accelerator: jax {jax.__version__} found no devices ({_error(e)})")
    return 0
  backend = devices[0].platform
  if backend == "cpu" and not args.cpu:
    print(
      f"no accelerator: jax {jax.__version__} sees only {len(devices)} CPU device(s); "
      "nothing to check (--cpu runs the script itself at tiny shapes)"
    )
    return 0

  from mtkd_jax import kernels

  report = dict(
    device=getattr(devices[0], "device_kind", backend),
    backend=backend,
    devices=len(devices),
    jax=jax.__version__,
    python=platform.python_version(),
    host=platform.node(),
    cpu_mode=args.cpu,
    has_fused_linear_kd_loss=hasattr(kernels, "fused_linear_kd_loss"),
  )
  with contextlib.suppress(Exception):
    import jaxlib

    report["jaxlib"] = jaxlib.__version__
  if "kernels" in args.sections:
    report["kernels"] = run_kernels(args, kernels, backend)
  if "bench" in args.sections:
    try:
      report["bench"] = run_bench(args, kernels)
    except Exception as e:
      report["bench_error"] = _error(e)
      report["bench_traceback"] = traceback.format_exc()[-3000:]
  if "e2e" in args.sections:
    report["e2e"] = run_e2e(args)
  bench_ok = "bench_error" not in report and all(
    "cases" in r and all("ms" in c for c in r["cases"].values())
    for r in report.get("bench", {}).get("rows", [])
  )
  report["ok"] = (
    all(r["ok"] for r in report.get("kernels", []))
    and bench_ok
    and all(r["ok"] for r in report.get("e2e", []))
  )
  report["elapsed_s"] = time.perf_counter() - args.t0
  print(summary_table(report))
  out = os.path.join(os.environ["OUT"], "device_check.json") if os.environ.get("OUT") else args.out
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1, default=str)
  print(f"json: {out}")
  return 0 if report["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
