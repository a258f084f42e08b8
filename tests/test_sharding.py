"""Tests for mtkd_jax.sharding: meshes, partition rules, per-process batch placement."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mtkd_jax import models, sharding


def test_make_mesh_shapes_and_axis_names():
  mesh = sharding.make_mesh(4, 2)
  assert mesh.axis_names == ("data", "model")
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert dict(sharding.make_mesh(model=2).shape) == {"data": 4, "model": 2}  # data=-1
  one = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  assert one.devices.size == 1


@pytest.mark.parametrize(("data", "model"), [(3, 2), (4, 3), (16, 1), (0, 8)])
def test_mesh_that_does_not_divide_the_devices_is_a_one_line_error(data, model):
  with pytest.raises(ValueError, match=r"^mesh") as err:
    sharding.make_mesh(data, model)
  assert "8 devices" in str(err.value) and "\n" not in str(err.value)
  with pytest.raises(ValueError, match=r"^mesh"):
    sharding.check_mesh_config(data, model, 8)


def test_rules_match_first_rule_and_cover_optimizer_state():
  m = models.build("mlp", in_features=8, hidden=(4,), num_classes=6)
  params = jax.eval_shape(m.init, jax.random.key(0))
  opt_state = jax.eval_shape(optax.adam(1e-3).init, params)
  rules = ((r"head/kernel$", ("model", None)), (r".*/kernel$", (None, "model")), (r".*", ()))
  mesh = sharding.make_mesh(4, 2)
  specs = sharding.match_partition_rules(rules, {"params": params, "opt": opt_state}, mesh)
  assert specs["params"]["head"]["kernel"] == P("model", None)
  assert specs["params"]["hidden_0"]["kernel"] == P(None, "model")
  assert specs["params"]["hidden_0"]["bias"] == P()
  adam = specs["opt"][0]
  assert adam.mu["hidden_0"]["kernel"] == P(None, "model")  # optax state mirrors the params
  assert adam.nu["head"]["kernel"] == P("model", None)
  assert adam.count == P()  # scalars are replicated


def test_rules_reject_indivisible_dims_and_unmatched_paths():
  tree = {"layer": {"kernel": np.zeros((4, 3))}}
  mesh = sharding.make_mesh(4, 2)
  with pytest.raises(ValueError, match=r"layer/kernel.*not divisible by mesh axis 'model'"):
    sharding.match_partition_rules(sharding.DEFAULT_RULES, tree, mesh)
  with pytest.raises(ValueError, match="no rule matches"):
    sharding.match_partition_rules(((r"bias", ()),), tree)


def test_sharded_params_hold_the_same_values():
  m = models.build("mlp", in_features=8, hidden=(4,), num_classes=6)
  mesh = sharding.make_mesh(4, 2)
  abstract = jax.eval_shape(m.init, jax.random.key(0))
  shardings = sharding.tree_shardings(mesh, sharding.DEFAULT_RULES, abstract)
  sharded = jax.jit(m.init, out_shardings=shardings)(jax.random.key(0))
  assert sharded["hidden_0"]["kernel"].sharding.spec == P(None, "model")
  assert len(sharded["hidden_0"]["kernel"].addressable_shards[0].data.shape) == 2
  assert sharded["hidden_0"]["kernel"].addressable_shards[0].data.shape == (8, 2)
  plain = m.init(jax.random.key(0))
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batch_rows_and_put_batch_round_trip():
  mesh = sharding.make_mesh(4, 2)
  rows = sharding.process_batch_rows(mesh, 16)
  assert rows == slice(0, 16)  # one process owns every row
  x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
  arr = sharding.put_batch(mesh, {"x": x[rows]}, 16)["x"]
  assert arr.sharding.spec == P("data")
  assert arr.addressable_shards[0].data.shape == (4, 3)
  np.testing.assert_array_equal(np.asarray(arr), x)
  with pytest.raises(ValueError, match="batch_size"):
    sharding.process_batch_rows(mesh, 10)


def test_put_replicated():
  mesh = sharding.make_mesh(4, 2)
  tree = {"a": np.arange(6.0).reshape(2, 3)}
  out = sharding.put_replicated(mesh, tree)
  assert out["a"].sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(out["a"]), tree["a"])
