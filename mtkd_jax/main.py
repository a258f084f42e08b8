"""Launcher: `python -m mtkd_jax.main --config=experiments/configs/<name>.py[:small] --workdir=W`.

Validates the config (`config.experiment` names the module `mtkd_jax.experiments.<name>`),
checks the workdir, runs the experiment, writes `<workdir>/results.json` and prints its table.
Override config fields with `--config.<field>=<value>`; `--config_help` lists them. Several
hosts or processes: add `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on
each (or `--distributed` where `jax.distributed.initialize()` detects the cluster itself, e.g.
Cloud TPU or SLURM). Compiled programs are kept in `~/.cache/mtkd_jax/xla` for the next run
(`$JAX_COMPILATION_CACHE_DIR` chooses another directory).
"""

from __future__ import annotations

import json
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mtkd_jax import checkpoints, configs, experiments, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of checkpoints, metrics, results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() (auto).")
_CONFIG_HELP = flags.DEFINE_bool("config_help", False, "List the config's fields and exit.")


def main(argv):
  del argv
  if _CONFIG_HELP.value:
    print(configs.describe(flags.FLAGS["config"].config_filename))
    return
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # a rerun loads what XLA compiled before
    jax.config.update("jax_compilation_cache_dir", checkpoints.user_cache("xla"))
  if _COORDINATOR.value or _DISTRIBUTED.value:
    if jax.config.jax_platforms in (None, "", "cpu"):  # CPU processes talk through gloo
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    if not workdir:
      raise ValueError("--workdir: needs a directory for checkpoints, metrics and results")
    if not config.get("experiment"):
      raise ValueError("config.experiment: the config names no experiment module")
    experiment = experiments.get(config.experiment)
    experiment.validate_config(config)
    checkpoints.check_workdir(workdir, config)
    lock = checkpoints.WorkdirLock(workdir).__enter__()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    results = experiment.run(config, workdir)
  except (checkpoints.CheckpointError, train.NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  finally:
    lock.__exit__(None, None, None)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    print(experiment.format_table(results))
    print(f"results: {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
