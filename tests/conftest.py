"""Test set-up: 8 fake CPU devices so sharded code is tested against one device."""

import atexit
import os
import shutil
import tempfile

# Must be set before jax is imported anywhere in the test process. The tests compile hundreds of
# small programs once each, so XLA:CPU compiles them with its cheap backend passes
# (`_processes.CHEAP_XLA_FLAGS`: about a quarter less CPU time for tests/test_sparse.py and
# tests/test_fused_kd.py, half for the adaptive notebook; the same semantics: every test compares
# against its reference as before). Subprocesses that inherit the environment (store workers, the
# teachers CLI, the device check) compile the same way; the digits CLI runs, examples, multi-process
# jobs and the adaptive notebook set one device (or their mesh) and the same passes, and still match
# tests/data/results_small to 1e-6. The variance-reduction, guarantees and LM runs do not (some of
# their numbers move beyond 1e-6 with the passes), so those run with no XLA_FLAGS, as do the
# README's commands, as users run them.
from _processes import CHEAP_XLA_FLAGS

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {CHEAP_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Teachers cached by their own config go to a directory of this test process (and of the jobs it
# starts), never to the user's ~/.cache; tests in one process share it, as jobs would.
if "MTKD_TEACHER_CACHE" not in os.environ:
  os.environ["MTKD_TEACHER_CACHE"] = tempfile.mkdtemp(prefix="mtkd_teachers_")
  atexit.register(shutil.rmtree, os.environ["MTKD_TEACHER_CACHE"], ignore_errors=True)
# Compiled programs go to jax's persistent compilation cache, one directory for the session (and
# the jobs its tests start): many tests compile the same `:small` jobs, notebooks and CLI runs,
# and on 2 cores compiling, not computing, is most of their time. Every program is still compiled
# once per session from a fresh clone; a cache hit runs the executable XLA compiled for it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mtkd_jax_compiled_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import hypothesis

hypothesis.settings.register_profile(
  "ci", max_examples=25, deadline=None, derandomize=True, print_blob=True
)
hypothesis.settings.register_profile("dev", max_examples=25, deadline=None)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")
