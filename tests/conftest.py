"""Test set-up: 8 fake CPU devices so sharded code is tested against one device."""

import atexit
import os
import shutil
import tempfile

# Must be set before jax is imported anywhere in the test process. The in-process tests compile
# hundreds of tiny programs once each, so XLA:CPU compiles them with its cheap backend passes
# (about a quarter less CPU time for tests/test_sparse.py and tests/test_fused_kd.py; the same
# semantics: every test compares against its reference as before, and the in-process experiment
# tests still match tests/data/results_small to 1e-6). Subprocesses that inherit the environment
# (store workers, the teachers CLI, the device check) compile the same way; the jobs compared with
# stored results (CLI runs, notebooks, the README's commands) set their own XLA_FLAGS or none,
# as users do. `XLA_FLAGS=--xla_force_host_platform_device_count=8 make test` runs it all at
# full optimisation.
os.environ.setdefault(
  "XLA_FLAGS",
  "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
  "--xla_llvm_disable_expensive_passes=true",
)
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
