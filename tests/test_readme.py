"""Every command of README.md, run as a new user runs it: in a shell where only the README's set-up
has been done (`source .venv/bin/activate`, nothing else in the environment, a fresh home), in a
scratch directory that mirrors the repository (symlinks), so `runs/...` workdirs land there and
the tree stays clean.

Each command found in the README (its ```sh blocks and its inline `python ...` / `make ...`
spans) must have a rule in `RULES`, and every rule must match a README command:

- `Run`: run as written (`small=True`: with the config's `:small` form, the README's quick check;
  `free_port=True`: the fixed coordinator port replaced by a free one), then the exit status and
  expected output lines are checked;
- `Equivalent`: a `make` target whose recipe (`make -n`) is the README's documented command, run
  at `:small`;
- `DryRun`: too long to run here (the reason says how long): `make -n <target>` must print the
  documented recipe;
- `Help`: too long to run here: the entry point must answer `--help` (or `--config_help`);
- `Covered`: run elsewhere (the reason says where);
- `NotRun`: would change the environment (installs); what it names is checked to exist.

The README's ```python blocks run as written too, except the fragments listed in `FRAGMENTS`.
"""

import dataclasses
import os
import re
import shutil
import subprocess

import _processes
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
VENV = os.path.join(ROOT, ".venv")
RESULTS = r"^results: runs/{}/results\.json$"


@dataclasses.dataclass(frozen=True)
class Run:
  expect: tuple[str, ...]  # regexes, each must match a line of stdout + stderr
  small: bool = False
  free_port: bool = False
  files: tuple[str, ...] = ()  # files the command must have written (relative to the scratch dir)


@dataclasses.dataclass(frozen=True)
class Equivalent:
  target: str
  recipe: tuple[str, ...]  # the lines `make -n target` must print: the documented commands
  expect: tuple[str, ...]
  files: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DryRun:
  target: str
  recipe: str  # a line `make -n` must print
  reason: str


@dataclasses.dataclass(frozen=True)
class Help:
  command: str
  expect: str
  reason: str


@dataclasses.dataclass(frozen=True)
class Covered:
  reason: str


@dataclasses.dataclass(frozen=True)
class NotRun:
  reason: str
  check: tuple[str, str]  # (file, text it must contain)


DIGITS = "python -m mtkd_jax.main --config=experiments/configs/digits.py"
RULES = {
  # ---- Set-up and installs -----------------------------------------------------------------
  "source .venv/bin/activate": Covered("the set-up of every command here"),
  "pip install -e .": NotRun("installs into the user's environment", ("setup.py", "mtkd_jax")),
  "pip install -e . -c constraints.txt": NotRun(
    "installs into the user's environment", ("constraints.txt", "jax==")
  ),
  "pip install -e '.[cuda]'": NotRun("installs CUDA wheels", ("setup.py", '"cuda12":')),
  "pip install -e '.[tpu]'": NotRun("installs TPU wheels", ("setup.py", '"tpu":')),
  ".ci/run": NotRun("make test and make test-newest: see those", (".ci/run", "make test-newest")),
  # ---- The two make targets and the main job -------------------------------------------------
  "make run": Equivalent(
    "run",
    recipe=(
      ".venv/bin/python -m mtkd_jax.main --config=experiments/configs/digits.py "
      "--workdir=runs/digits",
      ".venv/bin/python experiments/plots/digits.py runs/digits",
    ),
    expect=(r"^student_linear +0\.\d+ +\d+\.\d+ ", r"^average teacher ", RESULTS.format("digits")),
    files=("runs/digits/results.json", "runs/digits/curves.png"),
  ),
  "python experiments/plots/digits.py runs/digits": Covered("the second line of make run"),
  f"{DIGITS}:small --workdir=runs/digits_small": Covered(
    "make run's rule runs this command (its workdir: runs/digits)"
  ),
  "python -m pytest tests/test_readme.py": Covered("this test"),
  "make test": DryRun("test", "ruff check .", "the whole suite: 10-20 min"),
  "make test-newest": DryRun(
    "test-newest", "-m pytest -n 2 -q -m", "installs the newest jax, then tests"
  ),
  # ---- Operators, mesh, processes ------------------------------------------------------------
  f"{DIGITS} --workdir=runs/geo --config.operator=geometric": Run(
    (r"^student_geometric ", RESULTS.format("geo")), small=True
  ),
  f'{DIGITS} --workdir=runs/pow --config.operator="power(alpha=0.5)"': Run(
    (r"^student_power\S* ", RESULTS.format("pow")), small=True
  ),
  "XLA_FLAGS=--xla_force_host_platform_device_count=8 "
  f"{DIGITS} --workdir=runs/mesh --config.mesh.data=4 --config.mesh.model=2": Run(
    (r"^student_linear ", RESULTS.format("mesh")), small=True
  ),
  "for i in 0 1; do XLA_FLAGS=--xla_force_host_platform_device_count=2 "
  f"{DIGITS} --workdir=runs/two_processes --config.mesh.model=2 "
  "--coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=$i & done; wait": Run(
    (r"^student_linear ", RESULTS.format("two_processes")), small=True, free_port=True
  ),
  # ---- Experiments, checks, figures ----------------------------------------------------------
  "python -m mtkd_jax.main --config=experiments/configs/<name>.py[:small] --workdir=runs/<name>": (
    Covered("a template: make run runs it for digits at :small")
  ),
  "python -m mtkd_jax.main --config=experiments/configs/<name>.py:small --workdir=runs/<name>": (
    Covered("a template: make run runs it for digits at :small")
  ),
  "python -m mtkd_jax.axioms": Help(
    "python -m mtkd_jax.axioms --help", "usage: python -m mtkd_jax.axioms", "about 25 min"
  ),
  "make axioms": DryRun("axioms", ".venv/bin/python -m mtkd_jax.axioms", "about 25 min"),
  "python -m mtkd_jax.weighting_checks": Help(
    "python -m mtkd_jax.weighting_checks --help",
    "usage: python -m mtkd_jax.weighting_checks",
    "part of the axioms' 25 min",
  ),
  "make figures": DryRun(
    "figures", ".venv/bin/python experiments/figures.py", "every experiment: 10-45 min"
  ),
  "make notebooks": DryRun(
    "notebooks", "../.venv/bin/jupyter execute --inplace --timeout=-1 $nb", "about 45 min"
  ),
  "python experiments/figures.py": Help(
    "python experiments/figures.py --help", "--small", "every experiment: 10-45 min"
  ),
  "python -m mtkd_jax.main --config=experiments/configs/stdlib_lm.py --workdir=runs/stdlib_lm": (
    Help(
      "python -m mtkd_jax.main --config=experiments/configs/stdlib_lm.py --config_help",
      "--config.depth=",
      "about 8-20 min with cached teachers (its :small form: 2-5 min)",
    )
  ),
  "python -m mtkd_jax.teachers dump --config=experiments/configs/stdlib_lm.py --out=DIR": Help(
    "python -m mtkd_jax.teachers --help", "python -m mtkd_jax.teachers dump", "trains LM teachers"
  ),
  "python -m mtkd_jax.teachers verify --out=DIR": Help(
    "python -m mtkd_jax.teachers --help", "python -m mtkd_jax.teachers verify", "needs a dump"
  ),
  # ---- Devices and benchmarks ----------------------------------------------------------------
  "make device-check": Run((r"^no accelerator: jax .* sees only \d+ CPU device",)),
  "make device-check ARGS=--cpu": DryRun(
    "device-check ARGS=--cpu",
    "benchmarks/device_check.py --cpu",
    "every kernel and both jobs: minutes",
  ),
  "make bench": DryRun("bench", "benchmarks/kd_loss.py", "the benchmark table: minutes"),
  # ---- Examples --------------------------------------------------------------------------------
  "python examples/train_from_logits.py": Covered("tests/test_examples.py (8 devices)"),
  "python examples/flax_teachers.py": Covered("tests/test_examples.py (8 devices)"),
}


def readme_commands() -> list[str]:
  """The commands of README.md: each line of its ```sh blocks (continuations joined, comments
  dropped) and each inline code span that starts with a command."""
  with open(README, encoding="utf-8") as f:
    text = f.read()
  commands = []
  for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
      if line:
        commands.append(line)
  prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
  for span in re.findall(r"`([^`]+)`", prose):
    span = " ".join(span.split())
    if re.match(r"(python|make|pip|source) \S", span) or span == ".ci/run":
      commands.append(span)
  return list(dict.fromkeys(commands))


def test_every_readme_command_has_a_rule_and_every_rule_a_command():
  commands = readme_commands()
  assert [c for c in commands if c not in RULES] == [], "README commands without a rule"
  assert [c for c in RULES if c not in commands] == [], "rules for commands the README lacks"
  for command, rule in RULES.items():
    if isinstance(rule, NotRun):
      path, needle = rule.check
      with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        assert needle in f.read(), (command, path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  """A directory that mirrors the repository through symlinks (no runs/ of the user's)."""
  if not os.path.exists(os.path.join(VENV, "bin", "activate")):
    pytest.skip(".venv is missing (make creates it)")
  path = tmp_path_factory.mktemp("readme")
  for name in os.listdir(ROOT):
    if name not in (".git", "runs"):
      os.symlink(os.path.join(ROOT, name), path / name)
  # One fresh home per session, shared by its xdist workers: the digits runs share their cached
  # teachers (locked while in use).
  session = tmp_path_factory.getbasetemp()
  home = (session.parent if os.environ.get("PYTEST_XDIST_WORKER") else session) / "readme_home"
  home.mkdir(exist_ok=True)
  os.symlink(home, path / "home")
  yield path
  shutil.rmtree(path, ignore_errors=True)


def _shell(command: str, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
  """`command` in bash with only the README's set-up: a clean environment, .venv activated, and
  a fresh home in the scratch directory (the teacher cache goes there)."""
  env = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": str(cwd / "home"),
    "LANG": "C.UTF-8",
    "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
  }
  return subprocess.run(
    ["bash", "-c", f"source .venv/bin/activate && {command}"],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _small(command: str) -> str:
  """The command with its config's `:small` form (the README's quick check)."""
  small, n = re.subn(r"(--config=experiments/configs/\w+\.py)(?=\s)", r"\1:small", command)
  assert n == 1, command
  return small


def _check_output(result, expect, command):
  out = result.stdout + result.stderr
  assert result.returncode == 0, f"{command}\n{out[-3000:]}"
  for pattern in expect:
    assert re.search(pattern, out, re.M), f"{command}: no line matches {pattern!r}\n{out[-3000:]}"


def _params(kinds):
  slow = lambda r: isinstance(r, Equivalent) or (isinstance(r, Run) and r.small)  # > 20 s each
  return [
    pytest.param(c, marks=[pytest.mark.slow] if slow(r) else [], id=c[:60])
    for c, r in RULES.items()
    if isinstance(r, kinds)
  ]


@pytest.mark.parametrize("command", _params((Run, Equivalent)))
def test_readme_command_runs(command, scratch):
  rule = RULES[command]
  if isinstance(rule, Equivalent):
    dry = _shell(f"make -n {rule.target}", scratch, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert [line for line in lines if line in rule.recipe] == list(rule.recipe), dry.stdout
    with open(README, encoding="utf-8") as f:  # the README documents the recipe's first line
      assert f"{command} # = {rule.recipe[0].removeprefix('.venv/bin/')}" in " ".join(
        f.read().split()
      )
    run = " && ".join(_small(c) if "--config=" in c else c for c in rule.recipe)
  else:
    run = _small(command) if rule.small else command
    if rule.free_port:
      run = run.replace("127.0.0.1:12345", f"127.0.0.1:{_processes.free_port()}")
  _check_output(_shell(run, scratch), rule.expect, command)
  for path in rule.files:
    assert os.path.isfile(scratch / path), path


@pytest.mark.parametrize("command", _params((DryRun, Help)))
def test_readme_command_too_long_here_exists(command, scratch):
  rule = RULES[command]
  if isinstance(rule, DryRun):
    result = _shell(f"make -n {rule.target}", scratch, timeout=60)
    assert result.returncode == 0 and rule.recipe in result.stdout, (command, result.stdout)
  else:
    result = _shell(rule.command, scratch, timeout=120)
    assert result.returncode in (0, 1), (command, result.stderr[-2000:])  # absl --help: 1
    out = result.stdout + result.stderr
    assert rule.expect in out and "Traceback" not in out, (command, out[-2000:])


# The README's Python blocks: each runs as written unless listed here as a fragment.
FRAGMENTS = {"fused_linear_kd_loss(": "h_s, W_s, h_1, W_1, h_2, W_2 and mask are the user's arrays"}


@pytest.mark.slow  # about 28 s at load 10 (a jit of the step)
def test_readme_python_blocks_run():
  with open(README, encoding="utf-8") as f:
    blocks = re.findall(r"^```python\n(.*?)^```", f.read(), re.M | re.S)
  ran = 0
  for block in blocks:
    if any(marker in block for marker in FRAGMENTS):
      continue
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    ran += 1
    if "metrics" in namespace:
      assert np.isfinite(float(namespace["metrics"]["loss"]))
  assert ran >= 1 and len(blocks) == ran + len(FRAGMENTS), (ran, len(blocks))
