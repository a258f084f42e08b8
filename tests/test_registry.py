"""Tests for mtkd_jax.registry (one spec syntax for all names) and mtkd_jax.configs (one loader)."""

import os

import pytest

from mtkd_jax import configs, operators, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  ("spec", "expected"),
  [
    ("linear", ("linear", {})),
    (" power(alpha=0.5) ", ("power", {"alpha": 0.5})),
    (
      "barycenter(divergence='hellinger', num_steps=3)",
      ("barycenter", {"divergence": "hellinger", "num_steps": 3}),
    ),
    ("static(weights=(0.5, 0.5))", ("static", {"weights": (0.5, 0.5)})),
    ("jsd(beta=-1e-3)", ("jsd", {"beta": -0.001})),
  ],
)
def test_parse(spec, expected):
  assert registry.parse(spec) == expected


@pytest.mark.parametrize(
  ("spec", "message"),
  [
    ("power(0.5)", "by keyword"),
    ("power(alpha=x)", "must be a Python literal"),
    ("power(alpha=__import__('os').getcwd())", "must be a Python literal"),
    ("power(**{'alpha': 1})", r"'\*\*' is not allowed"),
    ("power(alpha=", "cannot parse"),
    ("", "non-empty"),
    ("a.b", "by keyword"),
  ],
)
def test_parse_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    registry.parse(spec)


def test_get_builds_factories_with_spec_and_caller_arguments():
  assert registry.get("operator", "linear") is operators.linear
  assert registry.get("operator", "power(alpha=2)").__name__ == "power(2)"
  model = registry.get("model", "mlp(hidden=(4,))", in_features=3, num_classes=2)
  assert callable(model.init) and callable(model.apply)
  with pytest.raises(ValueError, match=r"\['hidden'\] given in the spec and by the caller"):
    registry.get("model", "mlp(hidden=(4,))", in_features=3, num_classes=2, hidden=(5,))


def test_errors_list_the_valid_names():
  with pytest.raises(ValueError, match=r"unknown operator 'median'; valid names: \['barycenter'"):
    registry.get("operator", "median")
  with pytest.raises(ValueError, match=r"operator 'linear' takes no arguments, got \['alpha'\]"):
    registry.get("operator", "linear(alpha=1.0)")
  with pytest.raises(ValueError, match=r"operator 'power\(beta=1\)'.*unexpected keyword"):
    registry.get("operator", "power(beta=1)")
  with pytest.raises(ValueError, match="unknown registry kind 'optimizer'"):
    registry.get("optimizer", "adam")


def test_duplicates_are_rejected_and_nothing_is_replaced():
  with pytest.raises(ValueError, match=r"operator name 'linear' is already registered"):
    registry.register("operator", "linear")(lambda *a, **k: None)
  assert registry.get("operator", "linear") is operators.linear


def test_every_kind_has_its_entries():
  assert {"linear", "geometric", "power", "entropic", "barycenter"} <= set(
    registry.names("operator")
  )
  assert {"mixture_kd", "sum_of_kls"} <= set(registry.names("objective"))
  assert {"mlp", "byte_lm"} <= set(registry.names("model"))


def test_parse_arg():
  arg = configs.parse_arg("small,seed=3,lr=1", small=False, seed=0, lr=0.1, name="x")
  assert (arg.small, arg.seed, arg.lr, arg.name) == (True, 3, 1.0, "x")
  assert configs.parse_arg(None, small=False).small is False
  with pytest.raises(
    ValueError, match=r"config argument 'smal' unknown; valid: \['seed', 'small'\]"
  ):
    configs.parse_arg("smal", small=False, seed=0)
  with pytest.raises(ValueError, match="expected int"):
    configs.parse_arg("seed=x", seed=0)
  with pytest.raises(ValueError, match="needs a value"):
    configs.parse_arg("seed", seed=0)


def test_load_with_and_without_argument():
  path = os.path.join(ROOT, "experiments", "configs", "digits.py")
  full, small = configs.load(path), configs.load(path + ":small,seed=2")
  assert small.num_steps < full.num_steps and small.seed == 2 and full.seed == 0
  with pytest.raises(ValueError, match="not found"):
    configs.load(os.path.join(ROOT, "experiments", "configs", "nope.py"))


def test_describe_lists_every_field_with_its_comment():
  text = configs.describe(os.path.join(ROOT, "experiments", "configs", "digits.py:small"))
  assert "--config.num_steps=60  # update steps per student" in text
  assert "--config.mesh={'data': -1, 'model': 1}  # -1: all remaining devices" in text
