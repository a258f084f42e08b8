"""Experiments: each is a config file plus a module with one contract (plots live elsewhere).

A module `mtkd_jax.experiments.<name>` implements:

- `validate_config(config) -> None`: raises `ValueError("config.<field>: ...")` for the first
  invalid field, before anything is trained or written;
- `run(config, workdir) -> results`: trains and measures, returns a JSON-able dict; it writes
  checkpoints and metrics under `workdir` (a rerun resumes) and never draws;
- `format_table(results) -> str`: the text table the CLI prints.

Its config, `experiments/configs/<name>.py`, sets `config.experiment = "<name>"`. The launcher
(`python -m mtkd_jax.main --config=<file>[:small] --workdir=<dir>`) validates, runs, writes
`<workdir>/results.json` and prints the table; `experiments/plots/<name>.py` draws the figure
from that JSON (`make figures` runs both for every experiment).
"""

import importlib
from types import ModuleType

CONTRACT = ("validate_config", "run", "format_table")


def get(name: str) -> ModuleType:
  """The experiment module `mtkd_jax.experiments.<name>`; a ValueError names a missing one."""
  try:
    module = importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise ValueError(f"config.experiment: no experiment module {__name__}.{name}") from None
  missing = [f for f in CONTRACT if not hasattr(module, f)]
  if missing:
    raise ValueError(f"config.experiment: {module.__name__} lacks {missing}")
  return module
