"""Runs a test's worker processes side by side (multi-process jax.distributed tests), and the
compiler flags of the test processes."""

import socket
import subprocess

# XLA:CPU's cheap backend passes: the tests compile hundreds of small programs once each, and these
# flags take about half the CPU time off compiling them. The digits and adaptive runs still match
# their stored fixtures (tests/data/results_small) to 1e-6 under them; the variance-reduction,
# guarantees and LM runs do not, and run without them (tests/conftest.py).
CHEAP_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def free_port() -> int:
  """A free TCP port on 127.0.0.1 for the coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_all(commands, *, env, cwd, timeout):
  """Starts every command at once, waits for all; asserts each exited 0 (showing their logs)."""
  procs = [
    subprocess.Popen(
      cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for cmd in commands
  ]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
  return logs
