"""Device mesh with axes ("data", "model"), partition rules as config data, batch placement.

Partition rules are an ordered tuple of `(regex, spec)` pairs; a parameter (or optimizer-state
leaf) whose "/"-joined path matches `regex` first gets `PartitionSpec(*spec)`. The same rules
serve the optimizer state because optax states mirror the parameter paths
(`.../mu/hidden_0/kernel`). A config holds them as plain tuples, e.g.

    partition_rules = ((r".*/kernel$", (None, "model")), (r".*", ()))
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mtkd_jax import data as data_lib

AXES = ("data", "model")

# Shard the output dimension of every dense kernel over "model"; replicate everything else.
DEFAULT_RULES = ((r".*/kernel$", (None, "model")), (r".*", ()))


def make_mesh(data: int = -1, model: int = 1, *, devices: Sequence | None = None) -> Mesh:
  """A 2-D mesh with axes ("data", "model") over `devices` (all global devices by default).

  Args:
    data: size of the data axis; -1 takes all devices left after `model`.
    model: size of the model axis.
    devices: the devices to use; default `jax.devices()` (all processes).

  Returns:
    `jax.sharding.Mesh` of shape (data, model).

  >>> make_mesh(1, 1, devices=jax.devices()[:1]).shape
  {'data': 1, 'model': 1}
  """
  n = len(jax.devices() if devices is None else devices)
  if model < 1 or n % model:
    raise ValueError(f"mesh.model: {model} does not divide the {n} devices")
  if data == -1:
    data = n // model
  if data < 1 or data * model != n:
    raise ValueError(f"mesh: data={data} x model={model} does not match the {n} devices")
  # Auto axes: XLA propagates shardings from the explicit in/out shardings of the step
  # (jax>=0.7 defaults make_mesh to Explicit axes, which would demand sharding annotations
  # on every intermediate).
  auto = (AxisType.Auto,) * len(AXES)
  if devices is None:
    return jax.make_mesh((data, model), AXES, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(data, model), AXES, axis_types=auto)


def check_mesh_config(data: int, model: int, num_devices: int) -> None:
  """Validates a mesh shape against a device count without building it (for config checks)."""
  if model < 1 or num_devices % model:
    raise ValueError(f"mesh.model: {model} does not divide the {num_devices} devices")
  if data != -1 and (data < 1 or data * model != num_devices):
    raise ValueError(f"mesh: data={data} x model={model} does not match the {num_devices} devices")


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def match_partition_rules(rules, tree, mesh: Mesh | None = None):
  """PartitionSpec for every leaf of `tree` from the first matching rule.

  Args:
    rules: sequence of `(regex, spec)`; `spec` a tuple of mesh axis names or None per dim.
    tree: pytree of arrays or `jax.ShapeDtypeStruct` (e.g. from `jax.eval_shape`).
    mesh: if given, checks that every sharded dimension is divisible by its axis size.

  Returns:
    A pytree of `PartitionSpec` with the structure of `tree`. Scalars are replicated.

  >>> match_partition_rules(DEFAULT_RULES, {"head": {"kernel": np.zeros((4, 2))}})
  {'head': {'kernel': PartitionSpec(None, 'model')}}
  """
  compiled = [(re.compile(r), tuple(s)) for r, s in rules]

  def spec_for(path, leaf):
    name = "/" + _path_str(path)
    shape = np.shape(leaf)
    if not shape:
      return PartitionSpec()
    spec = next((spec for regex, spec in compiled if regex.search(name)), None)
    if spec is None:
      raise ValueError(f"partition_rules: no rule matches {name!r}; add a final ('.*', ())")
    if len(spec) > len(shape):
      raise ValueError(f"partition_rules: spec {spec} has more dims than {name} {shape=}")
    if mesh is not None:
      for dim, axis in zip(shape, spec, strict=False):
        axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
        size = math.prod(mesh.shape[a] for a in axes)
        if dim % size:
          raise ValueError(
            f"partition_rules: {name} {shape=} dim {dim} is not divisible by mesh "
            f"axis {axis!r} of size {size}"
          )
    return PartitionSpec(*spec)

  return jax.tree_util.tree_map_with_path(spec_for, tree)


def tree_shardings(mesh: Mesh, rules, tree):
  """NamedSharding for every leaf of `tree` from the partition rules."""
  specs = match_partition_rules(rules, tree, mesh)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs)


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding on `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, example_axis: int = 0) -> NamedSharding:
  """The example axis (leading by default) over "data", all other axes replicated."""
  return NamedSharding(mesh, PartitionSpec(*[None] * example_axis, "data"))


def process_batch_rows(mesh: Mesh, global_batch_size: int) -> slice:
  """The contiguous rows of the global batch that this process's devices hold.

  Args:
    mesh: the mesh; the batch is sharded over its "data" axis.
    global_batch_size: B, divisible by the "data" axis size.

  Returns:
    `slice(lo, hi)` into the global batch; this process loads only these rows.
  """
  data = mesh.shape["data"]
  if global_batch_size % data:
    raise ValueError(f"batch_size: {global_batch_size} is not divisible by mesh data={data}")
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
  starts = [idx[0].start or 0 for idx in index_map.values()]
  stops = [global_batch_size if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
  lo, hi = min(starts), max(stops)
  # Rows of one process must be contiguous for make_array_from_process_local_data.
  shards = sorted(set(zip(starts, stops, strict=True)))
  if sum(b - a for a, b in shards) != hi - lo:
    raise ValueError(f"mesh: this process's data shards are not contiguous: {shards}")
  return slice(lo, hi)


def put_batch(mesh: Mesh, local_batch, global_batch_size: int):
  """Assembles global arrays sharded over "data" from this process's rows.

  Args:
    mesh: the mesh.
    local_batch: dict of numpy arrays [B_local, ...] (rows `process_batch_rows(...)`); the
      example axis of "teacher_logits" [K, B_local, ..., V] is the second.
    global_batch_size: B.

  Returns:
    dict of global `jax.Array`s [B, ...] sharded over "data" along their example axis.
  """
  out = {}
  for key, x in local_batch.items():
    axis = data_lib.example_axis(key)
    shape = (*x.shape[:axis], global_batch_size, *x.shape[axis + 1 :])
    out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, axis), x, shape)
  return out


def put_replicated(mesh: Mesh, tree):
  """Places identical host values (on every process) as fully replicated global arrays."""
  sharding = replicated(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]),
    tree,
  )
