"""Runs `mtkd_jax.main` and SIGKILLs itself right after run RUN starts saving step STEP.

    python tests/_kill_worker.py RUN STEP --config=... --workdir=...

The kill comes from inside the process so that it lands at a known point (while orbax may still
be writing the checkpoint in its background thread), without sleeps or polling in the test.
"""

import os
import signal
import sys

import orbax.checkpoint as ocp

RUN, STEP = sys.argv[1], int(sys.argv[2])
del sys.argv[1:3]
_save = ocp.CheckpointManager.save


def _save_then_die(self, step, *args, **kwargs):
  saved = _save(self, step, *args, **kwargs)
  if step == STEP and os.path.basename(str(self.directory)) == RUN:
    os.kill(os.getpid(), signal.SIGKILL)
  return saved


ocp.CheckpointManager.save = _save_then_die

if __name__ == "__main__":
  from absl import app

  from mtkd_jax import main

  app.run(main.main)
