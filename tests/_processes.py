"""Runs a test's worker processes side by side (multi-process jax.distributed tests)."""

import socket
import subprocess


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
