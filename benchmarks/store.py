"""Teacher store v2 on this machine: bytes per position, open time, batch read throughput.

  python benchmarks/store.py --workdir=W [--small] [--set field=value ...]

1. Bytes per position per teacher, everything on disk included (chunks with their CRC-32C,
   zarr.json, manifest, tokens shared out), for k ∈ {4, 16, 64} in bf16 and log8, of the
   stdlib_lm teachers (trained or restored in W) on the student windows, next to v1 (int32 +
   bf16, 6k B) and dense bf16 (2V B).
2. Time to open a synthetic store of 1e6 and 1e8 positions (metadata only).
3. A student batch (`batch_size` random windows, every array of `arrays(64)`) read from the v2
   store against `np.take` from raw memmaps holding the same decoded bytes.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from mtkd_jax import configs, data, store, teachers, train
from mtkd_jax.experiments import stdlib_lm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))


def _bytes(directory):
  return sum(
    os.path.getsize(os.path.join(r, f))
    for r, _, fs in os.walk(directory)
    for f in fs
    if f not in ("dump.json", "dump.lock")
  )


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--small", action="store_true")
  parser.add_argument("--set", action="append", default=[], help="config field=value")
  parser.add_argument("--ks", default="4,16,64")
  args = parser.parse_args()
  config = configs.load("experiments/configs/stdlib_lm.py" + (":small" if args.small else ""))
  for item in args.set:
    key, value = item.split("=")
    *path, last = key.split(".")
    target = config
    for p in path:
      target = target[p]
    target[last] = type(target[last])(value)
  config.progress = False
  loop = train.Loop.from_config(config, args.workdir)
  corpus = stdlib_lm.load_corpus(config)
  model = stdlib_lm.build_teacher_model(config)
  params = stdlib_lm.train_teachers(config, loop, corpus)
  source = stdlib_lm._teacher_source(config, model, corpus, params)
  n, length = source.tokens.shape[0], source.tokens.shape[1] - 1
  num_t, v = len(source.names), source.vocab_size
  positions = n * length

  # ---- 1. Sizes ---------------------------------------------------------------------------
  print(f"bytes per position per teacher ({n} windows of {length} bytes, V={v}, K={num_t})")
  print(f"{'k':>4} {'v2 bf16':>9} {'v2 log8':>9} {'v1':>7} {'dense bf16':>11}")
  dirs = {}
  for k in [int(k) for k in args.ks.split(",")]:
    row = []
    for dtype in ("bfloat16", "log8"):
      d = dirs[k, dtype] = os.path.join(args.workdir, f"bench_store_k{k}_{dtype}")
      teachers.write_store(d, source, k=k, generation_temperatures=1.0, dtype=dtype)
      tokens = store.open_store(d).manifest["tokens"]["bytes"]
      row.append((_bytes(d) - tokens) / positions / num_t)
    print(f"{k:>4} {row[0]:>9.1f} {row[1]:>9.1f} {6 * k:>7} {2 * v:>11}")

  # ---- 2. Open time -----------------------------------------------------------------------
  import test_store

  with tempfile.TemporaryDirectory() as tmp:
    for num in (10**6, 10**8):
      d = os.path.join(tmp, str(num))
      test_store.synthetic_store(d, num)
      t0 = time.perf_counter()
      store.open_store(d)
      print(f"open a synthetic store of {num:.0e} positions: {time.perf_counter() - t0:.3f} s")

  # ---- 3. Read throughput -----------------------------------------------------------------
  k = max(int(k) for k in args.ks.split(","))
  s = store.open_store(dirs[k, "bfloat16"])
  arrays = s.arrays(k)
  with tempfile.TemporaryDirectory() as tmp:
    raw = {}
    for key, col in arrays.items():
      full = np.asarray(col)
      path = os.path.join(tmp, key)
      full.tofile(path)
      raw[key] = np.memmap(path, full.dtype, "r", shape=full.shape)
    b = config.batch_size
    nbytes = sum(np.take(a, np.arange(b), axis=0).nbytes for a in raw.values())
    for name, src in (("v2 store", arrays), ("raw memmap", raw)):
      data.get_batch(src, b, seed=0, step=0)  # warm
      steps = 50
      t0 = time.perf_counter()
      for step in range(steps):
        data.get_batch(src, b, seed=1, step=step)
      dt = (time.perf_counter() - t0) / steps
      print(
        f"{name:<11} batch of {b} windows: {dt * 1e3:7.2f} ms ({nbytes / dt / 2**20:7.1f} MiB/s)"
      )


if __name__ == "__main__":
  main()
