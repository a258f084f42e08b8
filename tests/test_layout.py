"""The package's shape: imports flow CLI → experiments → library, no cycles; a thin launcher."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {
  "mtkd_jax": os.path.join(ROOT, "mtkd_jax"),
  "mtkd_jax.kernels": os.path.join(ROOT, "kernels"),
}


def _modules():
  """{module name: path} of every module of the package (kernels/ installs as mtkd_jax.kernels)."""
  out = {}
  for package, directory in PACKAGES.items():
    for dirpath, _, files in os.walk(directory):
      rel = os.path.relpath(dirpath, directory)
      prefix = package if rel == "." else f"{package}.{rel.replace(os.sep, '.')}"
      if prefix.startswith("mtkd_jax.kernels") and package == "mtkd_jax":
        continue
      for f in files:
        if f.endswith(".py"):
          name = prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"
          out[name] = os.path.join(dirpath, f)
  return out


def _imports(name, path, modules):
  """Every package module `name` imports, at any depth of the file (lazy imports count too)."""
  tree = ast.parse(open(path).read())
  # A module's `if __name__ == "__main__":` block is its command, not the library: skip it.
  tree.body = [n for n in tree.body if not _is_main_block(n)]
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base])
        base = base.rstrip(".")
      # `from pkg import mod` depends on pkg.mod; `from pkg import name` on pkg itself.
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
      continue
    found |= {t for t in targets if t in modules and t != name}
  return found


def _is_main_block(node) -> bool:
  return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


def test_no_import_cycles():
  modules = _modules()
  graph = {name: _imports(name, path, modules) for name, path in modules.items()}
  # A package's __init__ re-exporting its own submodules is not a cycle of the library.
  for name in graph:
    graph[name] = {m for m in graph[name] if not (name.startswith(m + ".") and m != "mtkd_jax")}
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycle = [*stack[stack.index(nxt) :], nxt]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)


# Entry points that launch experiments: `python -m mtkd_jax.main` and the store's
# `python -m mtkd_jax.teachers dump`, whose command (not its library functions) finds the
# experiment that names the teachers.
LAUNCHERS = ("mtkd_jax.main", "mtkd_jax.teachers")


def test_the_library_never_imports_the_cli_or_the_experiments():
  modules = _modules()
  for name, path in modules.items():
    deps = _imports(name, path, modules)
    assert "mtkd_jax.main" not in deps, name
    if not name.startswith("mtkd_jax.experiments") and name not in LAUNCHERS:
      assert not any(d.startswith("mtkd_jax.experiments") for d in deps), (name, deps)


def test_launcher_is_thin_and_nothing_reaches_into_sys_modules():
  modules = _modules()
  assert len(open(modules["mtkd_jax.main"]).read().splitlines()) <= 100
  for name, path in modules.items():
    text = open(path).read()
    assert "sys.modules" not in text, name
    assert "__file__" not in text, f"{name} computes a path from __file__"
