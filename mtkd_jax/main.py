"""CLI of the main job: teachers, distilled students, a results table, metrics and curves.

    python -m mtkd_jax.main --config=experiments/configs/digits.py --workdir=runs/digits \
        [--config.operator=geometric] [--config.mesh.data=4 --config.mesh.model=2]

Several hosts (or processes): add `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` on each (or `--distributed` where `jax.distributed.initialize()` detects the
cluster itself, e.g. on Cloud TPU or SLURM). Writes `metrics.jsonl`, `results.json`,
`curves.png` and orbax checkpoints (`checkpoints/<run>`) to the workdir; a rerun resumes.
"""

from __future__ import annotations

import json
import os
import re
import sys

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from mtkd_jax import data as data_lib
from mtkd_jax import models, operators, train
from mtkd_jax import sharding as sharding_lib
from mtkd_jax import temperature as temperature_lib
from mtkd_jax import weighting as weighting_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of checkpoints, metrics and plots.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() (auto).")


def _operator_kwargs(config) -> dict:
  """The operator hyperparameters that are set (placeholders left at None are dropped)."""
  return {k: v for k, v in config.operator_kwargs.items() if v is not None}


# --------------------------------------------------------------------------------------------
# Config validation: one-line errors naming the field, before anything is compiled.
# --------------------------------------------------------------------------------------------
def validate_config(config, num_devices: int) -> None:
  """Raises ValueError("config.<field>: ...") for the first invalid field."""

  def check(field, fn):
    try:
      fn()
    except (ValueError, TypeError) as e:
      raise ValueError(f"config.{field}: {str(e).splitlines()[0]}") from None

  k = config.num_teachers
  check("model", lambda: models.check_name(config.model))
  check("loss", lambda: train.get_loss(config.loss))
  check("operator", lambda: operators.get(config.operator, **_operator_kwargs(config)))
  for name in config.compare_operators:
    check("compare_operators", lambda name=name: operators.get(name))
  check("temperatures", lambda: temperature_lib.check_temperatures(config.temperatures, k))
  if np.ndim(config.temperatures) != 1:
    raise ValueError(f"config.temperatures: need one per teacher (K={k}), got a scalar")
  check("student_temperature", lambda: temperature_lib.check_temperatures(
    config.student_temperature, name="student_temperature"))  # fmt: skip
  check("weights", lambda: operators.check_weights(config.weights, (k, 1)))
  for field in ("teacher_hidden", "teacher_keep_fractions", "teacher_noises",
                "teacher_train_fractions"):  # fmt: skip
    if len(config[field]) != k:
      raise ValueError(f"config.{field}: need one entry per teacher (K={k}), got {config[field]}")
  check("mesh", lambda: sharding_lib.check_mesh_config(
    config.mesh.data, config.mesh.model, num_devices))  # fmt: skip
  data = num_devices // config.mesh.model if config.mesh.data == -1 else config.mesh.data
  if config.batch_size % data:
    raise ValueError(f"config.batch_size: {config.batch_size} not divisible by mesh data={data}")
  for regex, _ in config.partition_rules:
    check("partition_rules", lambda regex=regex: re.compile(regex))
  if not 0.0 <= config.label_weight <= 1.0:
    raise ValueError(f"config.label_weight: must be in [0, 1], got {config.label_weight}")
  check("weighting", lambda: _weighting(config, np.asarray(config.temperatures, np.float32)))


def _weighting(config, temperatures):
  """The adaptive weighting of the multi-teacher students (`config.weighting`), or None.

  A name of `mtkd_jax.weighting.names()` with `config.weighting_kwargs`; the teachers'
  temperatures, the fixed weights and the gate's input size default to the job's.
  """
  name = config.get("weighting") or None
  if name is None:
    return None
  kwargs = dict(config.get("weighting_kwargs") or {})
  if name in ("confidence", "label_aware", "learned"):
    kwargs.setdefault("temperatures", temperatures)
  if name == "static":
    kwargs.setdefault("weights", config.weights)
  if name == "learned":
    kwargs.setdefault("num_features", data_lib.NUM_PIXELS + data_lib.NUM_CLASSES)
    kwargs.setdefault("num_teachers", len(temperatures))
  return weighting_lib.get(name, **kwargs)


# --------------------------------------------------------------------------------------------
# The job.
# --------------------------------------------------------------------------------------------
def run(config, workdir: str) -> dict:
  """Trains the teachers and students of `config` in `workdir`; returns the results dict."""
  # ---- Devices, data, views ----------------------------------------------------------------
  mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.model)
  rules = tuple((r, tuple(s)) for r, s in config.partition_rules)
  splits = data_lib.load_digits(seed=config.data_seed)
  train_split, test_split = splits["train"], splits["test"]
  k_teachers = config.num_teachers
  views = data_lib.make_teacher_views(
    len(train_split),
    keep_fractions=tuple(config.teacher_keep_fractions),
    noises=tuple(config.teacher_noises),
    train_fractions=tuple(config.teacher_train_fractions),
    seed=config.data_seed,
  )
  op_names = [config.operator] + [o for o in config.compare_operators if o != config.operator]
  students = [(f"student_{o}", o, list(range(k_teachers))) for o in op_names]
  if config.single_teacher_students:
    students += [(f"student_from_teacher_{k}", "linear", [k]) for k in range(k_teachers)]

  # ---- Progress bar, metrics log -----------------------------------------------------------
  is_main = jax.process_index() == 0
  total = k_teachers * config.teacher_steps + len(students) * config.num_steps
  bar = _progress_bar(total, enabled=config.progress and is_main)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  offset = 0

  def fit(name, **kwargs):
    nonlocal offset

    def report(step, metrics):
      bar.n = offset + step
      bar.set_postfix_str(f"{name} loss={metrics['loss']:.4f}", refresh=True)
      if is_main:
        with open(metrics_path, "a") as f:
          f.write(json.dumps({"run": name, "step": step, **metrics}) + "\n")

    bar.set_description(name)
    state, _ = train.train(
      name=name,
      mesh=mesh,
      partition_rules=rules,
      checkpoint_dir=os.path.join(workdir, "checkpoints", name),
      checkpoint_every=config.checkpoint_every,
      keep_checkpoints=config.keep_checkpoints,
      log_every=config.log_every,
      report=report,
      **kwargs,
    )
    offset += kwargs["num_steps"]
    bar.n = offset
    bar.refresh()
    return state

  results: dict[str, dict] = {}

  # ---- Teachers (cached: a finished teacher is restored from its checkpoint) --------------
  teacher_train_logits, teacher_test_logits = [], []
  for k, view in enumerate(views):
    name = f"teacher_{k}"
    model = models.build("mlp", in_features=data_lib.NUM_PIXELS,
                         hidden=tuple(config.teacher_hidden[k]),
                         num_classes=data_lib.NUM_CLASSES)  # fmt: skip
    optimizer = train.make_optimizer(
      config.teacher_learning_rate, config.teacher_steps,
      weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
    )  # fmt: skip
    x_train = view.apply(train_split)  # [N, 64] the teacher's view of every training image
    state = fit(
      name,
      init_params=model.init,
      train_step=train.make_supervised_step(model.apply, optimizer),
      optimizer=optimizer,
      arrays={"x": x_train[view.train_rows], "y": train_split.y[view.train_rows]},
      num_steps=config.teacher_steps,
      batch_size=config.batch_size,
      seed=config.seed + k,
    )
    teacher_train_logits.append(train.predict(model.apply, state.params, x_train, mesh))
    teacher_test_logits.append(
      train.predict(model.apply, state.params, view.apply(test_split), mesh)
    )
    results[name] = train.evaluate(teacher_test_logits[-1], test_split.y)
    results[name]["description"] = (
      f"{view.pixel_mask.mean():.0%} pixels, noise {view.noise}, "
      f"{len(view.train_rows)} train ex., width {config.teacher_hidden[k]}"
    )
  teacher_train_logits = np.stack(teacher_train_logits, axis=1)  # [N, K, V]
  teacher_test_logits = np.stack(teacher_test_logits, axis=0)  # [K, N_test, V]

  # ---- Students: one per operator, one per single teacher ---------------------------------
  student = models.build(config.model, in_features=data_lib.NUM_PIXELS,
                         hidden=tuple(config.student_hidden),
                         num_classes=data_lib.NUM_CLASSES)  # fmt: skip
  temperatures = np.asarray(config.temperatures, np.float32)
  weights = np.asarray(config.weights, np.float32)
  for name, op_name, ks in students:
    kwargs = _operator_kwargs(config) if op_name == config.operator else {}
    operator = operators.get(op_name, **kwargs)
    w = weights[ks] / weights[ks].sum()  # a single teacher gets weight 1
    optimizer = train.make_optimizer(
      config.learning_rate, config.num_steps,
      weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
    )  # fmt: skip
    # Adaptive weighting (config.weighting) for the students of all K teachers.
    weighting = _weighting(config, temperatures) if len(ks) == k_teachers else None
    trainable = weighting_lib.is_trainable(weighting)
    step = train.make_train_step(
      student.apply, optimizer, operator=operator, loss=train.get_loss(config.loss),
      temperatures=temperatures[ks], weights=w, student_temperature=config.student_temperature,
      label_weight=config.label_weight, implementation=config.implementation,
      weighting=weighting,
    )  # fmt: skip
    init_params = student.init
    if trainable:  # the gate's parameters train next to the student's
      init_params = lambda rng, weighting=weighting: {
        "student": student.init(rng),
        "weighting": weighting.init(jax.random.fold_in(rng, 1)),
      }
    state = fit(
      name,
      init_params=init_params,
      train_step=step,
      optimizer=optimizer,
      arrays={
        "x": train_split.x,
        "y": train_split.y,
        "teacher_logits": teacher_train_logits[:, ks],
      },
      num_steps=config.num_steps,
      batch_size=config.batch_size,
      seed=config.seed + 100,  # every student: same init and batch order; only q differs
    )
    student_params = state.params["student"] if trainable else state.params
    results[name] = train.evaluate(
      train.predict(student.apply, student_params, test_split.x, mesh), test_split.y
    )
    results[name]["description"] = f"distilled from {op_name} q over teachers {ks}"
  bar.close()

  # ---- The aggregate q itself, and the average teacher (Thm IV.9, Cor IV.10) --------------
  for op_name in op_names:
    kwargs = _operator_kwargs(config) if op_name == config.operator else {}
    log_q = operators.get(op_name, **kwargs)(
      teacher_test_logits, temperatures=temperatures, weights=weights
    )  # [N_test, V]
    results[f"ensemble_q_{op_name}"] = train.evaluate(np.asarray(log_q), test_split.y)
    results[f"ensemble_q_{op_name}"]["description"] = "the target itself (needs all teachers)"
  teacher_losses = [results[f"teacher_{k}"]["log_loss"] for k in range(k_teachers)]
  results["average teacher"] = {
    "accuracy": float(np.mean([results[f"teacher_{k}"]["accuracy"] for k in range(k_teachers)])),
    "log_loss": float(np.dot(weights, teacher_losses)),
    "description": "Σ_k w_k log-loss_k (Cor IV.10 reference)",
  }
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
    plot_curves(metrics_path, os.path.join(workdir, "curves.png"))
  return results


# --------------------------------------------------------------------------------------------
# Output: table, curves.
# --------------------------------------------------------------------------------------------
def format_table(results: dict) -> str:
  """The results table: test accuracy and log-loss of every model."""
  lines = [f"{'model':<24} {'test acc':>9} {'test log-loss':>14}  notes", "-" * 100]
  for name, r in results.items():
    lines.append(f"{name:<24} {r['accuracy']:>9.4f} {r['log_loss']:>14.4f}  {r['description']}")
  avg = results["average teacher"]["log_loss"]
  lines.append("-" * 100)
  for name, r in results.items():
    if name.startswith("student_") and "teacher_" not in name:
      verdict = "beats" if r["log_loss"] < avg else "does NOT beat"
      lines.append(
        f"{name} {verdict} the average teacher log-loss: {r['log_loss']:.4f} vs {avg:.4f}"
      )
  return "\n".join(lines)


def plot_curves(metrics_path: str, png_path: str) -> None:
  """Training curves (loss, batch accuracy, KL(q‖p_S), gradient norm) per run, as a PNG."""
  import matplotlib  # only the CLI needs matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs: dict[str, dict[int, dict]] = {}
  with open(metrics_path) as f:
    for line in f:
      row = json.loads(line)
      runs.setdefault(row["run"], {})[row["step"]] = row  # a resumed run overwrites its steps
  keys = [("loss", "training loss"), ("accuracy", "batch accuracy"),
          ("kl_q_student", "KL(q ‖ p_S)"), ("grad_norm", "gradient norm")]  # fmt: skip
  fig, axes = plt.subplots(2, 2, figsize=(11, 7))
  for ax, (key, title) in zip(axes.ravel(), keys, strict=True):
    for i, (name, rows) in enumerate(runs.items()):
      steps = sorted(s for s in rows if key in rows[s])
      if steps:  # one colour per run in every panel (teachers have no KL to q)
        ax.plot(steps, [rows[s][key] for s in steps], label=name, lw=1, color=f"C{i % 10}")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_yscale("log" if key in ("loss", "kl_q_student") else "linear")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)


def _progress_bar(total: int, enabled: bool):
  from tqdm import tqdm

  return tqdm(total=total, disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def run_experiment(config, workdir: str) -> int:
  """Runs `mtkd_jax.experiments.<config.experiment>`: its `run(config, workdir) -> results`.

  The module may define `validate_config(config)` (raising ValueError naming the field) and
  `format_table(results) -> str`; the results are written to `<workdir>/results.json`.
  """
  import importlib

  try:
    module = importlib.import_module(f"mtkd_jax.experiments.{config.experiment}")
  except ModuleNotFoundError:
    print(f"error: config.experiment: no module mtkd_jax.experiments.{config.experiment}",
          file=sys.stderr)  # fmt: skip
    return 2
  try:
    if hasattr(module, "validate_config"):
      module.validate_config(config)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.makedirs(workdir, exist_ok=True)
  results = module.run(config, workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1, default=float)
    print(module.format_table(results) if hasattr(module, "format_table") else results)
    print(f"results: {os.path.join(workdir, 'results.json')}")
  return 0


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if _COORDINATOR.value or _DISTRIBUTED.value:
    if jax.config.jax_platforms in (None, "", "cpu"):  # CPU processes talk through gloo
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  config, workdir = _CONFIG.value, _WORKDIR.value
  if config.get("experiment"):  # experiments/configs/<name>.py naming mtkd_jax.experiments.<x>
    sys.exit(run_experiment(config, workdir))
  try:
    validate_config(config, jax.device_count())
    train.check_workdir(workdir, config)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  results = run(config, workdir)
  if jax.process_index() == 0:
    print(format_table(results))
    print(f"metrics: {os.path.join(workdir, 'metrics.jsonl')}; curves: "
          f"{os.path.join(workdir, 'curves.png')}")  # fmt: skip


if __name__ == "__main__":
  # `import mtkd_jax.main` from experiment code must get this module, not define the flags twice.
  sys.modules.setdefault("mtkd_jax.main", sys.modules["__main__"])
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
