"""Adaptive teacher weighting on digits: class-specialist teachers and a safety floor (paper §VI).

Specialists are right on their own classes and confidently wrong elsewhere, so adaptive weights
can pick the right teacher per example. One student per scheme (same operator, init and batches,
several seeds), the average teacher under each scheme's own weights (Cor IV.10); a conservative
safety teacher with and without `safety_floor` (Cor IV.12 on sensitive inputs); and the learned
gate's convergence at each of `gate_learning_rates`.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtkd_jax import data as data_lib
from mtkd_jax import objectives, operators, theory, train
from mtkd_jax import weighting as weighting_lib
from mtkd_jax.experiments import common, tables
from mtkd_jax.experiments.tables import mean_std

SCHEMES = ("static", "confidence", "label_aware", "learned", "hierarchical")
LOGGED = ("loss", "effective_num_teachers", "weight_entropy", "kl_q_student")
GATE_LOGGED = ("gate_loss", "gate_grad_norm")  # logged by a learned gate's step only
_MASKED = -30.0  # logit of the class the safety teacher never outputs (probability ≈ 0)


def validate_config(config) -> None:
  common.check_numbers(
    config,
    positive_ints="teacher_hidden teacher_steps gate_hidden student_hidden num_seeds num_steps "
    "batch_size",
    non_negative_ints="seed data_seed warmup_steps",
    positive="teacher_learning_rate confidence_tau label_tau gate_learning_rates "
    "safety_temperature learning_rate",
    non_negative="gate_loss_weight weight_decay",
    unit="hierarchical_epsilon safety_floor safety_threshold",
  )
  require, v = common.require, data_lib.NUM_CLASSES
  subsets = [tuple(s) for s in config.class_subsets]
  require(len(subsets) >= 2, "class_subsets", f"need ≥ 2 teachers, got {len(subsets)}")
  for s in subsets:
    ok = s and all(0 <= c < v for c in s)
    require(ok, "class_subsets", f"classes must be in [0, {v}), got {s}")
  ok = set().union(*subsets) == set(range(v))
  require(ok, "class_subsets", f"every class needs a teacher, got {subsets}")
  for name in config.schemes:
    require(name in SCHEMES, "schemes", f"unknown scheme {name!r}; valid: {SCHEMES}")
  for name in config.safety_schemes:
    ok = name in SCHEMES and name != "learned"
    require(ok, "safety_schemes", f"{name!r} is not a stateless scheme of {SCHEMES}")
  u = config.unsafe_class
  ok = 0 <= u < v and u not in config.sensitive_classes
  require(ok, "unsafe_class", f"must be a class not among the sensitive ones, got {u}")


def specialist_views(config, train_y: np.ndarray) -> list[data_lib.TeacherView]:
  """Full-pixel, noise-free views: teacher k trains on the classes of its subset; the last
  (safety) teacher on every class but the unsafe one."""
  full = np.ones(data_lib.NUM_PIXELS, bool)
  subsets = [tuple(s) for s in config.class_subsets]
  subsets.append(tuple(c for c in range(data_lib.NUM_CLASSES) if c != config.unsafe_class))
  clean, views = {"pixel_mask": full, "noise": 0.0}, []
  for k, s in enumerate(subsets):
    rows = np.flatnonzero(np.isin(train_y, s))
    views.append(data_lib.TeacherView(seed=config.data_seed + k, train_rows=rows, **clean))
  return views


def _teacher_config(config):
  """`config` with one `teacher_hidden` entry per teacher (for `common.train_teachers`)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.teacher_hidden = (tuple(config.teacher_hidden),) * (len(config.class_subsets) + 1)
  return c


def make_hook(
  name: str, config, val_accuracy: np.ndarray, *, temperatures, num_features=None, **safety
):
  """The weighting of scheme `name` for `train.make_train_step` (hook or `weighting.Learned`);
  `safety` (safety_teacher=, floor=, threshold=) puts the hook's weights through the floor."""
  k, classes = len(val_accuracy), data_lib.NUM_CLASSES
  if name == "learned":
    gate = {"hidden": config.gate_hidden, "loss_weight": config.gate_loss_weight}
    return weighting_lib.get(
      "learned", num_features=num_features, num_teachers=k, temperatures=temperatures, **gate
    )
  confidence = {"temperatures": temperatures, "tau": config.confidence_tau}
  label_aware = {"temperatures": temperatures, "tau": config.label_tau}
  kwargs = {
    "static": {"weights": np.ones(k) / k},
    "confidence": confidence,
    "label_aware": label_aware,
    # token = confidence, task = label-aware pooled per class over the batch, context = a
    # static prior ∝ each teacher's validation accuracy; ε-smoothed (continuity).
    "hierarchical": {
      "token": {"name": "confidence", **confidence},
      "task": {"name": "label_aware", **label_aware, "domain_key": "y", "num_domains": classes},
      "context": {"name": "static", "weights": val_accuracy / val_accuracy.sum()},
      "epsilon": config.hierarchical_epsilon,
    },
  }[name]
  return weighting_lib.get(name, **kwargs, **safety)


def _distil(config, hook, arrays, temperatures, student, x_test, learning_rate=None):
  """One student per seed; returns (params [S, ...], metrics [S, T], test logits [S, N, V])."""
  lr = config.learning_rate if learning_rate is None else learning_rate
  optimizer = common.optimizer(config, lr, config.num_steps)
  objective = objectives.mixture(operators.linear, temperatures=temperatures)
  uniform = np.ones(len(temperatures)) / len(temperatures)
  targets = {"objective": objective, "weights": uniform, "weighting": hook}
  step = train.make_train_step(student.apply, optimizer, **targets)
  keys = jax.vmap(jax.random.key)(jnp.asarray([config.seed + s for s in range(config.num_seeds)]))
  loop = {"num_steps": config.num_steps, "batch_size": config.batch_size, "data_seed": config.seed}
  init = train.init_params(student.init, hook)
  params, metrics = train.train_seeds(
    step, init, optimizer, arrays, keys=keys, metrics=LOGGED + GATE_LOGGED, **loop
  )
  apply_all = jax.jit(jax.vmap(student.apply, in_axes=(0, None)))
  return params, metrics, np.asarray(apply_all(params["student"], x_test))


def _weights_on(hook, arrays, params, student):
  """Weights [K, N] of a scheme on a whole split (a learned gate: the first seed's)."""
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}
  teacher_logits = batch["teacher_logits"]  # [K, N, V]
  if weighting_lib.is_trainable(hook):
    first = jax.tree.map(lambda p: p[0], params)
    z = student.apply(first["student"], batch["x"])
    return np.asarray(hook(first["weighting"], teacher_logits, batch, z))
  return np.asarray(jax.jit(hook)(teacher_logits, batch))


def _gate_gradient(hook, arrays, student):
  """Full-batch gate loss and ‖∇_φ gate loss‖ at params with a leading seed axis: [S] each."""
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}

  def one(params):
    z = student.apply(params["student"], batch["x"])
    t = batch["teacher_logits"]  # [K, N, V]
    loss = lambda phi: hook.loss(hook(phi, t, batch, z), t, batch).mean()
    value, grad = jax.value_and_grad(loss)(params["weighting"])
    return value, optax.tree.norm(grad)

  return jax.jit(jax.vmap(one))


def _gate_convergence(config, make_learned, arrays, temps, student, x_test, y_test):
  """The learned gate trained jointly with the student at each of `config.gate_learning_rates`:
  its objective and gradient norm along training (per seed, averaged over windows of steps) and
  the full-batch gradient norm at initialisation and at the end (the stationarity reached)."""
  out = {}
  window = max(1, config.num_steps // 40)
  keys = jax.vmap(jax.random.key)(jnp.asarray([config.seed + s for s in range(config.num_seeds)]))
  for lr in config.gate_learning_rates:
    hook = make_learned()
    params, metrics, test_z = _distil(config, hook, arrays, temps, student, x_test, lr)
    grad_at = _gate_gradient(hook, arrays, student)
    loss0, grad0 = grad_at(jax.vmap(train.init_params(student.init, hook))(keys))
    loss_t, grad_t = grad_at(params)
    n = config.num_steps // window * window
    mean_windows = lambda m, n=n: m[:, :n].reshape(m.shape[0], -1, window).mean(-1).tolist()
    out[f"{lr:g}"] = {
      "steps": (np.arange(n // window) * window + window).tolist(),  # end of each window
      "gate_loss": mean_windows(metrics["gate_loss"]),  # [S, windows], minibatch
      "gate_grad_norm": mean_windows(metrics["gate_grad_norm"]),  # [S, windows], minibatch
      "full_gate_loss_init": np.asarray(loss0).tolist(),  # [S]
      "full_gate_loss_final": np.asarray(loss_t).tolist(),
      "full_grad_norm_init": np.asarray(grad0).tolist(),
      "full_grad_norm_final": np.asarray(grad_t).tolist(),
      "grad_norm_ratio": (np.asarray(grad_t) / np.asarray(grad0)).tolist(),
      "test_accuracy": _summary(test_z, y_test)["per_seed_accuracy"],
    }
  return out


def _summary(test_logits, y):
  """Mean and std over seeds of the test accuracy and log-loss, and the per-seed values."""
  evals = [train.evaluate(z, y) for z in test_logits]  # per seed
  per_seed = {f"per_seed_{k}": [e[k] for e in evals] for k in ("accuracy", "log_loss")}
  return {**common.seed_summary(evals), **per_seed}


def run(config, workdir: str) -> dict:
  """Trains the teachers, one student per scheme (and per seed), and the safety scenario."""
  from tqdm import tqdm

  loop = train.Loop.from_config(config, workdir)
  splits = data_lib.load_digits(seed=config.data_seed)
  train_split, test_split = splits["train"], splits["test"]
  views = specialist_views(config, train_split.y)
  _, _, train_logits, test_logits = common.train_teachers(_teacher_config(config), loop, views)
  k_spec = len(config.class_subsets)
  u = config.unsafe_class
  safety_k = k_spec  # the safety teacher is the last one: it never outputs the unsafe class
  train_logits[safety_k, :, u] = _MASKED
  test_logits[safety_k, :, u] = _MASKED
  y_train, y_test = train_split.y, test_split.y

  teacher_results = {}
  classes = [list(s) for s in config.class_subsets] + [[c for c in range(10) if c != u]]
  for k in range(k_spec + 1):
    name = f"teacher_{k}" if k < k_spec else "safety teacher"
    teacher_results[name] = {**train.evaluate(test_logits[k], y_test), "classes": classes[k]}
  # The static context prior: each teacher's accuracy over the whole training split (a
  # specialist is right on roughly the share of examples its classes cover).
  train_acc = np.array([np.mean(train_logits[k].argmax(-1) == y_train) for k in range(k_spec)])

  student = common.digits_model(config.student_hidden)
  results: dict = {"teachers": teacher_results, "schemes": {}, "safety": {}}
  num_runs = len(config.schemes) + 2 * len(config.safety_schemes)
  bar = tqdm(total=num_runs, desc="adaptive", file=sys.stderr, disable=not config.progress)

  # Part 1: the specialists, one student per scheme.
  temps = np.ones(k_spec, np.float32)
  arrays = {"x": train_split.x, "y": y_train, "teacher_logits": train_logits[:k_spec]}
  test_arrays = {"x": test_split.x, "y": y_test, "teacher_logits": test_logits[:k_spec]}
  features = data_lib.NUM_PIXELS + data_lib.NUM_CLASSES
  hook_of = lambda name: make_hook(
    name, config, train_acc, temperatures=temps, num_features=features
  )
  weights_by_class, average = {}, {}
  covers = np.array([[c in s for c in range(10)] for s in config.class_subsets])  # [K, V]
  for name in config.schemes:
    hook = hook_of(name)
    params, metrics, test_z = _distil(config, hook, arrays, temps, student, test_split.x)
    w = _weights_on(hook, arrays, params, student)  # [K, N]
    weights_by_class[name] = [w[:, y_train == c].mean(1).tolist() for c in range(10)]
    w_test = _weights_on(hook, test_arrays, params, student)  # [K, N_test]
    average[name] = common.average_teacher(test_logits[:k_spec], y_test, w_test)
    results["schemes"][name] = {
      **_summary(test_z, y_test),
      "train_effective_num_teachers": float(metrics["effective_num_teachers"][:, -20:].mean()),
      "train_weight_entropy": float(metrics["weight_entropy"][:, -20:].mean()),
      "weight_on_right_teacher": float(np.mean((w * covers[:, y_train]).sum(0))),
    }
    bar.update()
  results["weights_by_class"] = weights_by_class
  results["average_teacher"] = average  # per scheme, under its own weights on the test inputs
  if config.gate_learning_rates:
    learned = lambda: hook_of("learned")
    test = (test_split.x, y_test)
    results["gate_convergence"] = _gate_convergence(config, learned, arrays, temps, student, *test)

  # Part 2: safety, the conservative teacher with and without the floor.
  temps4 = np.array([1.0] * k_spec + [config.safety_temperature], np.float32)
  sens_train = np.isin(y_train, config.sensitive_classes).astype(np.float32)
  sens_test = np.isin(y_test, config.sensitive_classes)
  sensitive = sens_train > 0
  arrays4 = {"x": train_split.x, "y": y_train, "sensitivity": sens_train}
  arrays4["teacher_logits"] = train_logits
  prior4 = np.append(train_acc, train_acc.mean())
  floor = {"safety_teacher": safety_k, "floor": config.safety_floor}
  floor["threshold"] = config.safety_threshold
  for name in config.safety_schemes:
    for floored in (False, True):
      hook = make_hook(name, config, prior4, temperatures=temps4, **(floor if floored else {}))
      params, _, test_z = _distil(config, hook, arrays4, temps4, student, test_split.x)
      w = _weights_on(hook, arrays4, params, student)  # [K, N]
      on_sensitive = {"weights": w[:, sensitive], "safety_teacher": safety_k}
      logits = jnp.asarray(train_logits[:, sensitive])
      q, bound = theory.safety_bound(logits, temperatures=temps4, **on_sensitive)
      q, bound = np.asarray(q), np.asarray(bound)
      p_student = jax.nn.softmax(test_z, -1)  # [S, N_test, V]
      hist, _ = np.histogram(w[safety_k, sensitive], bins=20, range=(0, 1))
      results["safety"][f"{name}{'+floor' if floored else ''}"] = {
        **_summary(test_z, y_test),
        "min_safety_weight_sensitive": float(w[safety_k, sensitive].min()),
        "mean_safety_weight_sensitive": float(w[safety_k, sensitive].mean()),
        "mean_safety_weight_other": float(w[safety_k, ~sensitive].mean()),
        "target_unsafe_mass_sensitive": float(q[:, u].mean()),
        "cor_iv12_max_violation": float((q[:, u] - bound[:, u]).max()),
        "student_unsafe_mass_sensitive": float(p_student[:, sens_test, u].mean()),
        "student_unsafe_rate_sensitive": float(np.mean(test_z[:, sens_test].argmax(-1) == u)),
        "safety_weight_hist": hist.tolist(),
      }
      bar.update()
  bar.close()
  sizes = {"num_seeds": config.num_seeds, "num_steps": config.num_steps}
  safety = {"floor": config.safety_floor, "unsafe_class": u}
  results["config"] = {**safety, "sensitive_classes": list(config.sensitive_classes), **sizes}
  return results


def format_table(results: dict) -> str:
  """Test accuracy and log-loss per scheme; the safety teacher's weights and unsafe mass."""
  cfg = results["config"]
  lines = [
    f"Adaptive weighting, class-specialist teachers ({cfg['num_seeds']} seeds, "
    f"{cfg['num_steps']} steps, mean ± std over seeds)",
  ]
  columns = [("scheme", "<14"), ("test acc", ">17"), ("test log-loss", ">18")]
  columns += [("w on right", ">11.3f"), ("eff. K", ">7.2f"), ("H(w)", ">6.3f")]
  columns += [("avg teacher LL", ">15.4f"), ("beats it", ">9")]
  rows = []
  for n, r in results["schemes"].items():
    keys = ("weight_on_right_teacher", "train_effective_num_teachers", "train_weight_entropy")
    average = results["average_teacher"][n]["log_loss"]  # under the scheme's own weights
    beats = "yes" if r["log_loss"] < average else "NO"
    rows.append((n, mean_std(r, "accuracy"), mean_std(r, "log_loss", 9), *(r[k] for k in keys)))
    rows[-1] += (average, beats)
  lines += tables.lines(columns, rows, indent="", rule=True)
  lines.append("(average teacher: Σ_k w_k(x) log-loss_k(x) on the test set, Cor IV.10)")
  teacher = lambda n, r: f"{n} {r['accuracy']:.3f}/{r['log_loss']:.2f} on {r['classes']}"
  teachers = ", ".join(teacher(n, r) for n, r in results["teachers"].items())
  lines += [
    "",
    f"Teachers (test): {teachers}",
    "",
    f"Safety: floor {cfg['floor']} on sensitive classes {cfg['sensitive_classes']}, "
    f"unsafe class {cfg['unsafe_class']}",
  ]
  columns = {  # header: (key, format)
    "min w*": ("min_safety_weight_sensitive", ">7.3f"),
    "mean w*": ("mean_safety_weight_sensitive", ">8.3f"),
    "q(u) tgt": ("target_unsafe_mass_sensitive", ">9.4f"),
    "IV.12 viol": ("cor_iv12_max_violation", ">11.2e"),
    "p_S(u) test": ("student_unsafe_mass_sensitive", ">12.4f"),
    "rate": ("student_unsafe_rate_sensitive", ">6.3f"),
    "test acc": ("accuracy", ">9.4f"),
  }
  header = [("scheme", "<20")] + [(h, spec) for h, (_, spec) in columns.items()]
  rows = [(n, *(r[key] for key, _ in columns.values())) for n, r in results["safety"].items()]
  return "\n".join(lines + tables.lines(header, rows, indent="", rule=True))
