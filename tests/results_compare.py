"""Compares two results dicts: the same keys (after renaming operator specs) and numbers to 1e-6."""

from __future__ import annotations

import math
import re

# Operator specs before the registry's keyword syntax -> after (results keys and values).
_RENAMES = [
  (r"power\(([-0-9.e]+)\)", r"power(alpha=\1)"),
  (r"entropic\(([-0-9.e]+)\)", r"entropic(beta=\1)"),
  (r"barycenter\(([a-z_]+)\)", r"barycenter(divergence='\1')"),
]


def rename(s: str) -> str:
  for old, new in _RENAMES:
    s = re.sub(old, new, s)
  return s


def differences(old, new, *, rtol=1e-6, atol=1e-6, path="") -> list[str]:
  """Where `new` differs from `old` (with old keys/strings renamed), as readable lines."""
  out = []
  if isinstance(old, dict):
    if not isinstance(new, dict):
      return [f"{path}: dict vs {type(new).__name__}"]
    old = {rename(k): v for k, v in old.items()}
    for k in sorted(set(old) | set(new)):
      if k not in new or k not in old:
        out.append(f"{path}/{k}: only in {'old' if k in old else 'new'}")
      else:
        out += differences(old[k], new[k], rtol=rtol, atol=atol, path=f"{path}/{k}")
  elif isinstance(old, list):
    if not isinstance(new, list) or len(old) != len(new):
      return [f"{path}: list of {len(old)} vs {new if not isinstance(new, list) else len(new)}"]
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
      out += differences(a, b, rtol=rtol, atol=atol, path=f"{path}[{i}]")
  elif isinstance(old, bool) or old is None or isinstance(old, str):
    if (rename(old) if isinstance(old, str) else old) != new:
      out.append(f"{path}: {old!r} vs {new!r}")
  elif isinstance(old, int | float):
    if not isinstance(new, int | float) or isinstance(new, bool):
      out.append(f"{path}: {old!r} vs {new!r}")
    elif not (math.isnan(old) and math.isnan(new)) and not math.isclose(
      old, new, rel_tol=rtol, abs_tol=atol
    ):
      out.append(f"{path}: {old!r} vs {new!r}")
  return out


if __name__ == "__main__":
  import json
  import sys

  a, b = (json.load(open(p)) for p in sys.argv[1:3])
  diffs = differences(a, b)
  print("\n".join(diffs[:40]) or "identical (to 1e-6)")
  sys.exit(1 if diffs else 0)
