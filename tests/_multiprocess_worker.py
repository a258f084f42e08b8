"""A tiny distillation run, shared by the 1-device, 8-device and 2-process equality tests.

As a script it is one process of a `jax.distributed` job on 127.0.0.1:

    python tests/_multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES OUT_JSON CKPT_DIR

Process 0 writes the per-step metrics and the final (all-gathered) parameters to OUT_JSON.
"""

import json
import sys

import numpy as np

NUM_STEPS = 12
BATCH = 32


def tiny_problem():
  """Digits inputs, three fixed random-projection teachers (logits precomputed), an MLP."""
  from mtkd_jax import data, models, objectives, operators, train

  split = data.load_digits()["train"]
  rng = np.random.default_rng(0)
  proj = rng.normal(size=(3, 64, 10)).astype(np.float32)  # [K, D, V]
  onehot = np.eye(10, dtype=np.float32)[split.y]
  teacher_logits = np.einsum("nd,kdv->knv", split.x, proj) + 4.0 * onehot[None]  # [K, N, V]
  arrays = {"x": split.x, "y": split.y, "teacher_logits": teacher_logits.astype(np.float32)}
  student = models.build("mlp", in_features=64, hidden=(16,), num_classes=10)
  optimizer = train.make_optimizer(1e-2, NUM_STEPS, warmup_steps=2)
  step = train.make_train_step(
    student.apply,
    optimizer,
    objective=objectives.mixture(
      operators.linear, temperatures=[1.0, 2.0, 1.5], student_temperature=2.0
    ),
    weights=[0.5, 0.3, 0.2],
  )
  return student, optimizer, step, arrays


def run_tiny(mesh, workdir=None, num_steps=NUM_STEPS):
  """Runs the tiny problem on `mesh` (checkpoints in `workdir`/checkpoints/tiny); returns
  (per-step metrics list, final student params as numpy)."""
  from jax.experimental import multihost_utils

  from mtkd_jax import sharding, train

  student, optimizer, step, arrays = tiny_problem()
  history = []
  loop = train.Loop(
    mesh=mesh,
    partition_rules=sharding.DEFAULT_RULES,
    workdir=workdir,
    checkpoint_every=5,
    log_every=1,
    report=lambda name, s, m: history.append({"step": s, **m}),
  )
  state, _ = train.train(
    "tiny",
    init_params=train.init_params(student.init),
    train_step=step,
    optimizer=optimizer,
    arrays=arrays,
    num_steps=num_steps,
    batch_size=BATCH,
    seed=0,
    loop=loop,
  )
  params = multihost_utils.process_allgather(state.params["student"], tiled=True)
  return history, {k: {n: np.asarray(a).tolist() for n, a in v.items()} for k, v in params.items()}


if __name__ == "__main__":
  port, pid, nproc, out, ckpt = sys.argv[1:6]
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(nproc), process_id=int(pid))
  from mtkd_jax import sharding

  mesh = sharding.make_mesh(4, 2)  # 2 processes x 4 local devices
  assert jax.process_count() == int(nproc) and len(jax.local_devices()) == 4
  history, params = run_tiny(mesh, workdir=ckpt)
  if jax.process_index() == 0:
    with open(out, "w") as f:
      json.dump({"history": history, "params": params}, f)
  jax.distributed.shutdown()
