"""Experiment configs: `get_config(arg)` files addressed as `path/to/config.py[:arg]`.

A config file defines `get_config(arg=None)` returning an `ml_collections.ConfigDict`. Its
argument string, e.g. `small` or `small,seed=1` (as in `--config=experiments/configs/adaptive.py:
small,seed=1`), is parsed once by `parse_arg`, and a single `if arg.small:` block at the end of
`get_config` shrinks the run. `load` is the one loader that the CLI's `--config` flag, the
figures script, the notebooks and the tests all use.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `"small,seed=1"` against `defaults` (e.g. `small=False, seed=0`).

  A bare name sets a boolean default to True; `name=value` parses the value as a Python literal
  of the default's type (a string where it does not parse). Unknown names are an error that lists
  the known ones.

  >>> parse_arg("small,seed=1", small=False, seed=0)
  seed: 1
  small: true
  <BLANKLINE>
  """
  out = ml_collections.ConfigDict(defaults)
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    name, eq, value = token.partition("=")
    name = name.strip()
    if name not in defaults:
      raise ValueError(f"config argument {name!r} unknown; valid: {sorted(defaults)}")
    if not eq:
      if not isinstance(defaults[name], bool):
        raise ValueError(f"config argument {name!r} needs a value ({name}=...)")
      out[name] = True
      continue
    try:
      parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      parsed = value.strip()
    kind = type(defaults[name])
    if kind is float and isinstance(parsed, int):
      parsed = float(parsed)
    if not isinstance(parsed, kind):
      raise ValueError(f"config argument {name}={value!r}: expected {kind.__name__}")
    out[name] = parsed
  return out


def load(path: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file `path`, written `file.py` or `file.py:arg`.

  >>> load("experiments/configs/adaptive.py:small").num_seeds  # doctest: +SKIP
  2
  """
  filename, _, arg = path.partition(".py:")
  filename = filename if filename.endswith(".py") else filename + ".py"
  if not os.path.isfile(filename):
    raise ValueError(f"config file {filename!r} not found")
  name = "_mtkd_config_" + os.path.splitext(os.path.basename(filename))[0]
  spec = importlib.util.spec_from_file_location(name, filename)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def describe(path: str) -> str:
  """Every field of the config file `path[:arg]` with its value and its comment in the file.

  >>> print(describe("experiments/configs/digits.py"))  # doctest: +SKIP
  seed = 0  # seed of initialisations and batch order ...
  """
  config = load(path)
  filename = path.partition(".py:")[0]
  filename = filename if filename.endswith(".py") else filename + ".py"
  comments = {}
  for line in open(filename, encoding="utf-8"):
    match = re.match(r"\s*c\.([\w.]+)\s*=.*?#\s*(.*)$", line)
    if match:
      comments.setdefault(match.group(1), match.group(2).strip())
  lines = []

  def walk(node, prefix):
    for key, value in node.items():
      name = prefix + key
      if isinstance(value, ml_collections.ConfigDict) and name not in comments:
        walk(value, name + ".")
      else:
        shown = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
        note = f"  # {comments[name]}" if name in comments else ""
        lines.append(f"--config.{name}={shown!r}{note}")

  walk(config, "")
  return "\n".join(lines)
