"""Dumps the synthetic store of tests/test_store.py, as one process of a job, or dies midway.

    python tests/_store_worker.py OUT [--kill-after=CHUNK] [--hold=SECONDS]
        [--distributed=PORT,PROCESS_ID,NUM_PROCESSES]

`--kill-after` SIGKILLs the process right after it has written chunk CHUNK (a known point,
without sleeps in the test); `--hold` keeps the dump (and its lock) open that long after the
first chunk, for the concurrent-dump test.
"""

import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

K, V, L, N, ROWS_PER_CHUNK = 3, 300, 5, 23, 4  # V > 256: uint16 indices; 6 chunks, last short


def source():
  from mtkd_jax import store

  r = np.random.default_rng(0)
  table = (3 * r.standard_normal((K, V, V))).astype(np.float32)  # logits of teacher j: table[j][x]
  tokens = r.integers(0, V, (N, L + 1)).astype(np.int32)
  configs = tuple({"family": name, "layers": 2} for name in "abc")
  src = store.TeacherSource(("a", "b", "c"), tokens, lambda x: jnp.asarray(table[:, x]), V, configs)
  return src, table


def dump(out, after_chunk=None):
  from mtkd_jax import store

  src, _ = source()
  return store.write_store(
    out,
    src,
    k=7,
    generation_temperatures=[1.0, 2.0, 0.5],
    batch_size=3,
    rows_per_chunk=ROWS_PER_CHUNK,
    after_chunk=after_chunk,
  )


if __name__ == "__main__":
  out, opts = sys.argv[1], dict(a.lstrip("-").split("=") for a in sys.argv[2:])
  if "distributed" in opts:
    port, pid, nproc = opts["distributed"].split(",")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(nproc), process_id=int(pid))
  kill, hold = int(opts.get("kill-after", -1)), float(opts.get("hold", 0))

  def after_chunk(c):
    if c == kill:
      os.kill(os.getpid(), signal.SIGKILL)
    if hold:
      print("holding", flush=True)
      time.sleep(hold)

  dump(out, after_chunk)
  print("done", flush=True)
