"""Regenerates docs/figures/*.png from the experiment modules: one command for every figure.

    python -m mtkd_jax.experiments.figures [--small] [--only=name,...] [--workdir=runs/figures]

For each entry of `EXPERIMENTS` it loads `experiments/configs/<config>.py` (`get_config()`, then
the config file's `apply_small(c)` with `--small`), runs `mtkd_jax.experiments.<module>.run` in
`<workdir>/<module>` (trained teachers and students are restored from there on a rerun), writes
`results.json` there, and calls the module's `make_figure(results, docs/figures/<png>)`. With
`--small` the figures go to `<workdir>/small/` unless `--out` is given, so the committed
full-size figures are not overwritten by a quick check.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time

# (experiment module in mtkd_jax.experiments, config file in experiments/configs, figure file).
# Other experiments append their entry here; the module must define run and make_figure.
EXPERIMENTS = [
  ("variance_reduction", "variance_reduction", "variance_reduction.png"),
  ("jensen_bound", "jensen_bound", "jensen_bound.png"),
  ("log_loss_bound", "log_loss_bound", "log_loss_bound.png"),
  ("safety_attenuation", "safety_attenuation", "safety_attenuation.png"),
  ("bias_attenuation", "bias_attenuation", "bias_attenuation.png"),
  ("capacity", "capacity", "capacity.png"),
  ("operators_comparison", "operators", "operators.png"),
  ("adaptive", "adaptive", "adaptive.png"),
  ("meta_distillation", "meta_distillation", "meta_distillation.png"),
  ("stdlib_lm", "stdlib_lm", "sparse_teachers.png"),
]

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(_ROOT, "experiments", "configs")
FIGURE_DIR = os.path.join(_ROOT, "docs", "figures")


def load_config(config_name: str, *, small: bool = False, config_dir: str = CONFIG_DIR):
  """`get_config()` of experiments/configs/<config_name>.py, made small with `apply_small`."""
  path = os.path.join(config_dir, f"{config_name}.py")
  spec = importlib.util.spec_from_file_location(f"_mtkd_figures_{config_name}", path)
  if spec is None or spec.loader is None or not os.path.exists(path):
    raise ValueError(f"config file {path!r} not found")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if small:
    if not hasattr(module, "apply_small"):
      raise ValueError(f"{path} has no apply_small(c) for --small")
    module.apply_small(config)
  return config


def make(module_name: str, config_name: str, png: str, *, small: bool, workdir: str,
         out_dir: str, config_dir: str = CONFIG_DIR) -> dict:  # fmt: skip
  """Runs one experiment and writes its figure; returns its results."""
  module = importlib.import_module(f"mtkd_jax.experiments.{module_name}")
  config = load_config(config_name, small=small, config_dir=config_dir)
  if hasattr(module, "validate_config"):
    module.validate_config(config)
  run_dir = os.path.join(workdir, ("small_" if small else "") + module_name)
  os.makedirs(run_dir, exist_ok=True)
  results = module.run(config, run_dir)
  with open(os.path.join(run_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=float)
  # The figure is drawn from the JSON round trip: exactly what results.json holds.
  with open(os.path.join(run_dir, "results.json")) as f:
    results = json.load(f)
  os.makedirs(out_dir, exist_ok=True)
  module.make_figure(results, os.path.join(out_dir, png))
  return results


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="run the small configs (quick check)")
  parser.add_argument("--only", default="", help="comma-separated module names to run")
  parser.add_argument("--workdir", default="runs/figures", help="where experiments run")
  parser.add_argument("--out", default=None, help="figure directory (default docs/figures)")
  parser.add_argument("--config_dir", default=CONFIG_DIR, help="experiments/configs directory")
  args = parser.parse_args(argv)
  out_dir = args.out or (os.path.join(args.workdir, "small") if args.small else FIGURE_DIR)
  only = {s for s in args.only.split(",") if s}
  unknown = only - {m for m, _, _ in EXPERIMENTS}
  if unknown:
    print(f"error: --only: unknown {sorted(unknown)}; known: {[m for m, _, _ in EXPERIMENTS]}",
          file=sys.stderr)  # fmt: skip
    return 2
  for module_name, config_name, png in EXPERIMENTS:
    if only and module_name not in only:
      continue
    start = time.time()
    print(f"[figures] {module_name} ...", file=sys.stderr, flush=True)
    make(module_name, config_name, png, small=args.small, workdir=args.workdir, out_dir=out_dir,
         config_dir=args.config_dir)  # fmt: skip
    print(f"[figures] {os.path.join(out_dir, png)} ({time.time() - start:.0f} s)", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
