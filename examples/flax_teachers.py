"""Teachers as Flax models run inside the distillation step (`teacher_apply`), on digits.

    python examples/flax_teachers.py [--workdir=DIR] [--steps=200]

Three Flax (linen) MLPs of different widths are trained on different thirds of scikit-learn's
bundled digits; their frozen parameters then go to the student's step, which evaluates them on
every batch (no stored logits) and distils their linear mixture into an MLP student. Everything
runs with `train.train` on a mesh over every local device; the student is checkpointed in the
workdir (the teachers, in a few seconds, are not).
"""

import argparse
import tempfile

import flax.linen as nn
import jax.numpy as jnp

from mtkd_jax import data, models, objectives, operators, sharding, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--workdir", help="checkpoints go here (default: a temporary directory)")
parser.add_argument("--steps", type=int, default=200, help="training steps of each model")
args = parser.parse_args()
scratch = tempfile.TemporaryDirectory(prefix="mtkd_example_")  # removed at exit
workdir = args.workdir or scratch.name


class Teacher(nn.Module):  # any Flax model whose apply(params, x) gives logits [B, V]
  width: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(self.width)(x)))


splits = data.load_digits()
train_set, test = splits["train"], splits["test"]
mesh = sharding.make_mesh(data=-1, model=1)  # every local device on the "data" axis
loop = train.Loop(mesh=mesh, partition_rules=sharding.DEFAULT_RULES, workdir=workdir)
teachers = [Teacher(width) for width in (16, 32, 64)]

# ---- Teachers: supervised training, each on its own third of the training set ------------------
teacher_params = []
for k, teacher in enumerate(teachers):
  rows = slice(k * len(train_set) // 3, (k + 1) * len(train_set) // 3)
  optimizer = train.make_optimizer(1e-2, args.steps)
  state, _ = train.train(
    f"teacher_{k}",
    init_params=lambda rng, t=teacher: t.init(rng, train_set.x[:1]),
    train_step=train.make_supervised_step(teacher.apply, optimizer),
    optimizer=optimizer,
    arrays={"x": train_set.x[rows], "y": train_set.y[rows]},
    num_steps=args.steps,
    batch_size=64,
    seed=k,
    loop=train.Loop(mesh=mesh, partition_rules=sharding.DEFAULT_RULES),  # no workdir
  )
  teacher_params.append(state.params)
  acc = train.evaluate(train.predict(teacher.apply, state.params, test.x, mesh), test.y)
  print(f"teacher_{k} (width {teacher.width}): test accuracy {acc['accuracy']:.4f}")


# ---- The student's step runs the frozen teachers on each batch: [K, B, V], teacher axis first ---
def teacher_apply(params, batch):
  return jnp.stack([t.apply(p, batch["x"]) for t, p in zip(teachers, params, strict=True)])


student = models.build("mlp", in_features=64, hidden=(64,), num_classes=10)
optimizer = train.make_optimizer(1e-2, args.steps)
step = train.make_train_step(
  student.apply,
  optimizer,
  objective=objectives.mixture(operators.linear, temperatures=[2.0, 2.0, 2.0]),
  weights=[1 / 3, 1 / 3, 1 / 3],
  teacher_apply=teacher_apply,
)
state, last = train.train(
  "student",
  init_params=train.init_params(student.init),
  train_step=step,
  optimizer=optimizer,
  arrays={"x": train_set.x, "y": train_set.y},  # no teacher_logits: the step computes them
  num_steps=args.steps,
  batch_size=64,
  seed=0,
  loop=loop,
  teacher_params=teacher_params,
)
acc = train.evaluate(train.predict(student.apply, state.params["student"], test.x, mesh), test.y)
print(f"student (from all 3 teachers, {args.steps} steps on {mesh.devices.size} devices): ", end="")
print(f"test accuracy {acc['accuracy']:.4f}, log-loss {acc['log_loss']:.4f}")
