"""Test set-up: 8 fake CPU devices so sharded code is tested against one device."""

import atexit
import os
import shutil
import tempfile

# Must be set before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Teachers cached by their own config go to a directory of this test process (and of the jobs it
# starts), never to the user's ~/.cache; tests in one process share it, as jobs would.
if "MTKD_TEACHER_CACHE" not in os.environ:
  os.environ["MTKD_TEACHER_CACHE"] = tempfile.mkdtemp(prefix="mtkd_teachers_")
  atexit.register(shutil.rmtree, os.environ["MTKD_TEACHER_CACHE"], ignore_errors=True)

import hypothesis

hypothesis.settings.register_profile(
  "ci", max_examples=25, deadline=None, derandomize=True, print_blob=True
)
hypothesis.settings.register_profile("dev", max_examples=25, deadline=None)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")
