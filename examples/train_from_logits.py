"""From stored teacher logits to a trained, reloaded and evaluated student, on a mesh.

    python examples/train_from_logits.py [--workdir=DIR] [--steps=200]

Three noisy teachers' logits `[K, N, V]` (teacher axis first) of a random linear problem; the
geometric mixture of them is distilled into an MLP, first one jitted step by hand, then with
`train.train` on a mesh over every local device (checkpoints in the workdir), and the student is
reloaded from its checkpoint and evaluated on held-out data.
"""

import argparse
import tempfile

import jax
import numpy as np

from mtkd_jax import models, objectives, operators, sharding, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--workdir", help="checkpoints go here (default: a temporary directory)")
parser.add_argument("--steps", type=int, default=200, help="training steps")
args = parser.parse_args()
scratch = tempfile.TemporaryDirectory(prefix="mtkd_example_")  # removed at exit
workdir = args.workdir or scratch.name

# ---- Data: x [N, D], labels y [N], teacher logits [K, N, V] (teacher axis first) ----------------
K, N, D, V, B = 3, 4096, 16, 8, 64
rng = np.random.default_rng(0)
x = rng.normal(size=(N, D)).astype(np.float32)
truth = x @ rng.normal(size=(D, V)).astype(np.float32)  # [N, V]
y = truth.argmax(-1).astype(np.int32)
teacher_logits = np.stack([truth + rng.normal(scale=s, size=(N, V)) for s in (0.5, 1.0, 2.0)])
data = {"x": x[:3072], "y": y[:3072], "teacher_logits": teacher_logits[:, :3072].astype(np.float32)}
test = {"x": x[3072:], "y": y[3072:], "teacher_logits": teacher_logits[:, 3072:]}

# ---- The objective, the step, one jitted call -------------------------------------------------
student = models.build("mlp", in_features=D, hidden=(64,), num_classes=V)
objective = objectives.mixture(operators.geometric, temperatures=[1.0, 1.0, 2.0])
weights = [0.5, 0.3, 0.2]
optimizer = train.make_optimizer(1e-2, args.steps, warmup_steps=10)
step = train.make_train_step(student.apply, optimizer, objective=objective, weights=weights)
init = train.init_params(student.init)  # rng -> {"student": ..., "weighting": {}}
params = init(jax.random.key(0))
state = train.TrainState(step=np.int32(0), params=params, opt_state=optimizer.init(params))
batch = {k: v[:, :B] if k == "teacher_logits" else v[:B] for k, v in data.items()}
state, metrics = jax.jit(step)(state, batch)
print(f"one jitted step: loss {float(metrics['loss']):.4f}")

# ---- train.train on a mesh over every local device, checkpointed in the workdir ---------------
mesh = sharding.make_mesh(data=-1, model=1)
loop = train.Loop(mesh=mesh, partition_rules=sharding.DEFAULT_RULES, workdir=workdir)
kw = dict(init_params=init, optimizer=optimizer, loop=loop)
state, last = train.train(
  "student", train_step=step, arrays=data, num_steps=args.steps, batch_size=B, seed=0, **kw
)
done = f"last loss {last['loss']:.4f}" if last else "already trained in this workdir"
print(f"train.train: {args.steps} steps on {mesh.devices.size} devices, {done}")

# ---- Reload the student from the workdir and evaluate it on held-out data ---------------------
restored = train.restore("student", **kw)
for name, s in (("trained", state), (f"reloaded (step {int(restored.step)})", restored)):
  logits = train.predict(student.apply, s.params["student"], test["x"], mesh)  # [N_test, V]
  kd = float(objective(logits, test["teacher_logits"], np.asarray(weights)).mean())
  acc = train.evaluate(logits, test["y"])["accuracy"]
  print(f"{name} student: test KD loss {kd:.6f}, accuracy {acc:.4f} (chance {1 / V:.3f})")
