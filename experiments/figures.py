"""Regenerates docs/figures/*.png: runs each experiment's config, then its plot.

    python experiments/figures.py [--small] [--only=name,...] [--workdir=runs/figures] [--out=DIR]

Each run goes to `<workdir>/[small_]<config>` (a rerun restores what it trained) with its
results.json; `experiments/plots/<config>.py` draws the figure from that JSON. With `--small` the
figures go to `<workdir>/small/` unless `--out` is given, so the committed ones stay untouched.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

from mtkd_jax import checkpoints, configs, experiments

HERE = os.path.dirname(os.path.abspath(__file__))
# Config (and plot) names in experiments/configs, in order; the figure is docs/figures/<name>.png.
FIGURES = ("variance_reduction", "jensen_bound", "log_loss_bound", "safety_attenuation")
FIGURES += ("bias_attenuation", "capacity", "operators", "adaptive", "meta_distillation")
FIGURES += ("stdlib_lm",)
PNG = {"stdlib_lm": "sparse_teachers.png"}  # figures named otherwise


def load_plot(name: str):
  """The module experiments/plots/<name>.py (a file next to this script, not a package)."""
  path = os.path.join(HERE, "plots", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_mtkd_plot_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
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
  unknown = sorted(only - set(FIGURES))
  if unknown:
    print(f"error: --only: unknown {unknown}; known: {list(FIGURES)}", file=sys.stderr)
    return 2
  os.makedirs(out_dir, exist_ok=True)
  for name in [n for n in FIGURES if not only or n in only]:
    start, png = time.time(), os.path.join(out_dir, PNG.get(name, f"{name}.png"))
    print(f"[figures] {name} ...", file=sys.stderr, flush=True)
    load_plot(name).plot(run(name, small=args.small, workdir=args.workdir), png)
    print(f"[figures] {png} ({time.time() - start:.0f} s)", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
