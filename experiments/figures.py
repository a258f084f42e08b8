"""Regenerates docs/figures/*.png: runs each experiment, then its plot. One command for all.

    python experiments/figures.py [--small] [--only=name,...] [--workdir=runs/figures]

For each entry of `FIGURES` it loads `experiments/configs/<config>.py` (`:small` with
`--small`), runs the experiment named by the config in `<workdir>/<config>` (trained teachers
and students are restored from there on a rerun), writes `results.json` there, and draws the
figure with `experiments/plots/<config>.py` from that JSON. With `--small` the figures go to
`<workdir>/small/` unless `--out` is given, so the committed full-size figures stay untouched.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

from mtkd_jax import checkpoints, configs, experiments

HERE = os.path.dirname(os.path.abspath(__file__))
# (config file in experiments/configs, figure file in docs/figures)
FIGURES = [
  ("variance_reduction", "variance_reduction.png"),
  ("jensen_bound", "jensen_bound.png"),
  ("log_loss_bound", "log_loss_bound.png"),
  ("safety_attenuation", "safety_attenuation.png"),
  ("bias_attenuation", "bias_attenuation.png"),
  ("capacity", "capacity.png"),
  ("operators", "operators.png"),
  ("adaptive", "adaptive.png"),
  ("meta_distillation", "meta_distillation.png"),
  ("stdlib_lm", "sparse_teachers.png"),
]


def load_plot(name: str):
  """The module experiments/plots/<name>.py (a file next to this script, not a package)."""
  path = os.path.join(HERE, "plots", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_mtkd_plot_{name}", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.path.join(HERE, "plots"))  # for `import style`
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.pop(0)
  return module


def run(name: str, *, small: bool, workdir: str) -> dict:
  """Runs experiment config `name` (as `python -m mtkd_jax.main` would); returns its results."""
  config = configs.load(os.path.join(HERE, "configs", f"{name}.py" + (":small" if small else "")))
  experiment = experiments.get(config.experiment)
  experiment.validate_config(config)
  run_dir = os.path.join(workdir, ("small_" if small else "") + name)
  checkpoints.check_workdir(run_dir, config)
  with checkpoints.WorkdirLock(run_dir):
    results = experiment.run(config, run_dir)
  with open(os.path.join(run_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=float)
  with open(os.path.join(run_dir, "results.json")) as f:  # plots draw exactly what the JSON holds
    return json.load(f)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="run the :small configs (quick check)")
  parser.add_argument("--only", default="", help="comma-separated config names to run")
  parser.add_argument("--workdir", default="runs/figures", help="where experiments run")
  parser.add_argument("--out", default=None, help="figure directory (default docs/figures)")
  args = parser.parse_args(argv)
  default_out = os.path.join(os.path.dirname(HERE), "docs", "figures")
  out_dir = args.out or (os.path.join(args.workdir, "small") if args.small else default_out)
  only = {s for s in args.only.split(",") if s}
  unknown = only - {name for name, _ in FIGURES}
  if unknown:
    known = [name for name, _ in FIGURES]
    print(f"error: --only: unknown {sorted(unknown)}; known: {known}", file=sys.stderr)
    return 2
  os.makedirs(out_dir, exist_ok=True)
  for name, png in FIGURES:
    if only and name not in only:
      continue
    start = time.time()
    print(f"[figures] {name} ...", file=sys.stderr, flush=True)
    results = run(name, small=args.small, workdir=args.workdir)
    load_plot(name).plot(results, os.path.join(out_dir, png))
    print(f"[figures] {os.path.join(out_dir, png)} ({time.time() - start:.0f} s)", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
