"""One registry for every name a config can hold, with one spec syntax: `"power(alpha=0.5)"`.

Components are registered by kind ("operator", "divergence", "objective", "weighting",
"sparse_operator", "model") in the module that defines them; configs name them with a spec
string and code passes functions. A spec is a name, optionally with keyword arguments that are
Python literals, parsed with `ast.literal_eval` (never evaluated):

    "linear"   "power(alpha=0.5)"   "barycenter(divergence='hellinger')"   "jsd(beta=0.9)"

An entry is either a plain component (returned as it is; a spec with arguments is an error) or a
factory (called with the spec's arguments, plus any the calling code adds). Names are unique per
kind, and every error lists the valid names.

>>> get("operator", "power(alpha=0.5)").__name__
'power(0.5)'
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

# The module that registers each kind (imported on first lookup, so this module imports nothing).
_MODULES = {
  "operator": "mtkd_jax.operators",
  "divergence": "mtkd_jax.divergences",
  "objective": "mtkd_jax.objectives",
  "weighting": "mtkd_jax.weighting",
  "sparse_operator": "mtkd_jax.sparse",
  "model": "mtkd_jax.models",
}


@dataclasses.dataclass(frozen=True)
class _Entry:
  fn: Callable
  factory: bool


_ENTRIES: dict[str, dict[str, _Entry]] = {kind: {} for kind in _MODULES}


def _check_kind(kind: str) -> None:
  if kind not in _MODULES:
    raise ValueError(f"unknown registry kind {kind!r}; kinds: {sorted(_MODULES)}")


def register(kind: str, name: str, *, factory: bool = False) -> Callable[[Callable], Callable]:
  """Decorator registering `fn` as `name` of `kind`; a factory is called with the spec's kwargs.

  >>> @register("operator", "my_linear_doc_example")
  ... def my_op(teacher_logits, *, temperatures, weights): ...
  """
  _check_kind(kind)

  def add(fn: Callable) -> Callable:
    if name in _ENTRIES[kind]:
      raise ValueError(f"{kind} name {name!r} is already registered; names: {names(kind)}")
    if not callable(fn):
      raise ValueError(f"{kind} {name!r}: must be callable, got {fn!r}")
    _ENTRIES[kind][name] = _Entry(fn, factory)
    return fn

  return add


def parse(spec: str) -> tuple[str, dict[str, Any]]:
  """`"name(a=1, b='x')"` -> `("name", {"a": 1, "b": "x"})`; arguments must be literals.

  >>> parse("power(alpha=0.5)")
  ('power', {'alpha': 0.5})
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"a spec must be a non-empty string like 'name' or 'name(k=v)', got {spec!r}")
  try:
    node = ast.parse(spec.strip(), mode="eval").body
  except SyntaxError:
    raise ValueError(f"cannot parse spec {spec!r}: expected 'name' or 'name(k=v, ...)'") from None
  if isinstance(node, ast.Name):
    return node.id, {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
    raise ValueError(f"spec {spec!r}: arguments must be given by keyword, e.g. 'power(alpha=0.5)'")
  kwargs = {}
  for kw in node.keywords:
    if kw.arg is None:
      raise ValueError(f"spec {spec!r}: '**' is not allowed")
    try:
      kwargs[kw.arg] = ast.literal_eval(kw.value)
    except ValueError:
      raise ValueError(
        f"spec {spec!r}: argument {kw.arg}= must be a Python literal, got {ast.unparse(kw.value)}"
      ) from None
  return node.func.id, kwargs


def _entries(kind: str) -> dict[str, _Entry]:
  _check_kind(kind)
  importlib.import_module(_MODULES[kind])  # registers the kind's built-in entries
  return _ENTRIES[kind]


def names(kind: str) -> list[str]:
  """The registered names of `kind`."""
  return sorted(_entries(kind))


def get(kind: str, spec: str, **kwargs) -> Any:
  """The component of `kind` named by `spec`, a factory called with the spec's and `kwargs`.

  Arguments in `kwargs` are those code supplies (e.g. a model's input size); the same argument
  in both the spec and `kwargs` is an error.
  """
  name, spec_kwargs = parse(spec)
  entries = _entries(kind)
  if name not in entries:
    raise ValueError(f"unknown {kind} {name!r}; valid names: {sorted(entries)}")
  both = sorted(set(spec_kwargs) & set(kwargs))
  if both:
    raise ValueError(f"{kind} {spec!r}: {both} given in the spec and by the caller")
  entry = entries[name]
  kwargs = {**kwargs, **spec_kwargs}
  if not entry.factory:
    if kwargs:
      raise ValueError(f"{kind} {name!r} takes no arguments, got {sorted(kwargs)}")
    return entry.fn
  try:
    return entry.fn(**kwargs)
  except TypeError as e:  # an unknown or missing keyword: say which component
    raise ValueError(f"{kind} {spec!r}: {e}") from None


def check(kind: str, spec: str, **kwargs) -> None:
  """Raises ValueError if `get(kind, spec, **kwargs)` would fail (for config validation)."""
  get(kind, spec, **kwargs)
