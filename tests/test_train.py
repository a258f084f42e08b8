"""Tests for mtkd_jax.train: the update step, metrics, sharding equality, checkpoints, resume."""

import functools
import json
import os
import signal
import subprocess
import sys

import _multiprocess_worker as tiny
import _processes
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mtkd_jax import checkpoints, models, objectives, operators, registry, sharding, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def _random_problem(seed=0, k=3, b=16, v=10, d=12):
  r = np.random.default_rng(seed)
  batch = {
    "x": r.normal(size=(b, d)).astype(np.float32),
    "y": r.integers(0, v, b).astype(np.int32),
    "teacher_logits": (2.0 * r.normal(size=(k, b, v))).astype(np.float32),  # [K, B, V]
  }
  model = models.build("mlp", in_features=d, hidden=(8,), num_classes=v)
  return model, batch


def _state(model, optimizer, seed=0):
  params = train.init_params(model.init)(jax.random.key(seed))
  return train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def _step(
  model,
  optimizer,
  *,
  operator,
  loss="mixture_kd",
  temperatures,
  student_temperature=1.0,
  implementation="auto",
  divergence="forward_kl",
  **kw,
):
  objective = objectives.mixture if loss == "mixture_kd" else objectives.sum_of_kls
  obj = objective(
    operator,
    temperatures=temperatures,
    student_temperature=student_temperature,
    divergence=divergence,
    implementation=implementation,
  )
  return train.make_train_step(model.apply, optimizer, objective=obj, **kw)


def _one_step(model, batch, **kw):
  optimizer = optax.sgd(0.1)
  return jax.jit(_step(model, optimizer, **kw))(_state(model, optimizer), batch)


KW = dict(temperatures=[1.0, 2.0, 0.5], weights=[0.5, 0.3, 0.2], student_temperature=1.5)


@pytest.mark.parametrize("op", [operators.linear, operators.geometric])
def test_fused_kernel_path_matches_composed_path(op, monkeypatch):
  from mtkd_jax import kernels

  calls = []
  fused_kd_loss = kernels.fused_kd_loss

  def counting(*args, **kwargs):
    calls.append(kwargs["operator"])
    return fused_kd_loss(*args, **kwargs)

  monkeypatch.setattr(kernels, "fused_kd_loss", counting)
  model, batch = _random_problem()
  fused_state, fused_m = _one_step(model, batch, operator=op, **KW)
  assert calls == [op.__name__]  # the registered operator goes through the kernel
  # Any other function is composed (operator + losses.mixture_kd): a wrapper, a partial, or the
  # registered operator with implementation="composed". Same loss and update, no kernel call.
  for other, impl in [
    (lambda t, **kw: op(t, **kw), "auto"),
    (functools.partial(op), "auto"),
    (op, "composed"),
  ]:
    comp_state, comp_m = _one_step(model, batch, operator=other, implementation=impl, **KW)
    assert calls == [op.__name__]
    np.testing.assert_allclose(fused_m["loss"], comp_m["loss"], rtol=1e-5)
    _tree_close(fused_state.params, comp_state.params)


def test_fused_implementations_need_a_fusable_operator():
  with pytest.raises(ValueError, match=r"implementation='xla' needs operators\.linear"):
    objectives.mixture(
      functools.partial(operators.linear), temperatures=[1.0], implementation="xla"
    )
  with pytest.raises(ValueError, match="implementation: must be one of"):
    objectives.mixture(operators.linear, temperatures=[1.0], implementation="cuda")


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd(beta=0.9)"])
@pytest.mark.parametrize("op", [operators.linear, operators.geometric])
def test_divergences_fused_equal_composed(op, divergence):
  """objectives.mixture(divergence=...): the fused kernel and autodiff of the composed loss agree
  on the loss and the update."""
  model, batch = _random_problem(seed=8)
  kw = dict(KW, divergence=divergence)
  fused_state, fused_m = _one_step(model, batch, operator=op, **kw)
  comp_state, comp_m = _one_step(model, batch, operator=op, implementation="composed", **kw)
  np.testing.assert_allclose(fused_m["loss"], comp_m["loss"], rtol=1e-5)
  _tree_close(fused_state.params, comp_state.params)
  fwd_m = _one_step(model, batch, operator=op, **KW)[1]
  assert abs(float(fwd_m["loss"]) - float(fused_m["loss"])) > 1e-4  # a different objective


def test_divergence_specs():
  assert registry.get("divergence", "jsd(beta=0.9)").beta == 0.9
  assert set(registry.names("divergence")) == {"forward_kl", "reverse_kl", "jsd"}
  with pytest.raises(ValueError, match=r"beta must be in \(0, 1\)"):
    registry.get("divergence", "jsd(beta=1.5)")
  with pytest.raises(ValueError, match="sum_of_kls is a sum of forward KLs"):
    objectives.sum_of_kls(operators.linear, temperatures=[1.0], divergence="reverse_kl")


def test_objectives_by_registry_name():
  obj = registry.get("objective", "sum_of_kls", operator=operators.linear, temperatures=[1.0, 2.0])
  assert isinstance(obj, objectives.Objective) and obj.num_teachers == 2
  with pytest.raises(ValueError, match=r"unknown objective 'l2'; valid names: .*mixture_kd"):
    registry.get("objective", "l2", operator=operators.linear, temperatures=[1.0])


def test_params_tree_is_the_same_with_and_without_a_gate():
  from mtkd_jax import weighting

  model, _ = _random_problem(seed=5)
  gate = weighting.get("learned", num_features=12 + 10, num_teachers=3)
  plain = train.init_params(model.init)(jax.random.key(0))
  gated = train.init_params(model.init, gate)(jax.random.key(0))
  assert set(plain) == set(gated) == {"student", "weighting"}
  assert plain["weighting"] == {} and jax.tree.leaves(gated["weighting"])
  _tree_close(plain["student"], gated["student"], rtol=0, atol=0)


def test_teacher_logits_must_be_teacher_axis_first():
  """[B, K, V] with B != K is a one-line error showing the user's shape; B = K is caught too."""
  model, batch = _random_problem(seed=6, k=3, b=16)
  bad = dict(batch, teacher_logits=np.moveaxis(batch["teacher_logits"], 0, 1))  # [B, K, V]
  with pytest.raises(
    ValueError, match=r"must be \[K, \*y.shape, V\] = \[3, 16, V\].*\(16, 3, 10\)"
  ):
    _one_step(model, bad, operator=operators.linear, **KW)
  with pytest.raises(ValueError, match="needs 'teacher_logits'"):
    _one_step(model, {"x": batch["x"], "y": batch["y"]}, operator=operators.linear, **KW)


def test_loss_and_metrics_match_hand_computation():
  model, batch = _random_problem(seed=1)
  op = operators.get("power", alpha=0.5)
  state, m = _one_step(model, batch, operator=op, **KW)
  params = model.init(jax.random.key(0))
  z_s = np.asarray(model.apply(params, batch["x"]), np.float64)  # [B, V]
  z_t = batch["teacher_logits"]  # [K, B, V]
  t, w, t_s = np.array(KW["temperatures"]), np.array(KW["weights"]), KW["student_temperature"]

  def log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))

  log_pk = log_softmax(z_t / t[:, None, None])  # [K, B, V]
  pk = np.exp(log_pk)
  q = np.einsum("k,kbv->bv", w, np.sqrt(pk)) ** 2
  q = q / q.sum(-1, keepdims=True)  # power(1/2) pool
  log_ps = log_softmax(z_s / t_s)
  kl = (q * (np.log(q) - log_ps)).sum(-1)
  np.testing.assert_allclose(m["loss"], t_s**2 * kl.mean(), rtol=1e-4)
  np.testing.assert_allclose(m["kl_q_student"], kl.mean(), rtol=1e-4)
  per_teacher = (pk * (log_pk - log_ps[None])).sum(-1).mean(-1)  # [K]
  np.testing.assert_allclose(m["per_teacher_kl"], per_teacher, rtol=1e-4)
  lin = np.einsum("k,kbv->bv", w, pk)
  gap = np.einsum("k,kb->b", w, (pk * (log_pk - np.log(lin)[None])).sum(-1)).mean()
  np.testing.assert_allclose(m["jensen_gap"], gap, rtol=1e-4)
  np.testing.assert_allclose(m["accuracy"], np.mean(z_s.argmax(-1) == batch["y"]), rtol=1e-6)
  ce = -log_softmax(z_s)[np.arange(len(batch["y"])), batch["y"]].mean()
  np.testing.assert_allclose(m["log_loss"], ce, rtol=1e-4)
  np.testing.assert_allclose(m["effective_num_teachers"], 1 / np.sum(w**2), rtol=1e-6)
  assert m["grad_norm"] > 0
  assert int(state.step) == 1


def test_sum_of_kls_has_the_mixture_gradient_for_linear():
  # Paper §IV-B: with λ = w and the linear operator, L_multi − L_mix = Jensen gap (student-free),
  # so one SGD step moves the parameters identically. (Here T_S = 1 for one student temp.)
  kw = dict(KW, student_temperature=1.0)
  model, batch = _random_problem(seed=2)
  s_mix, m_mix = _one_step(model, batch, operator=operators.linear, **kw)
  s_sum, m_sum = _one_step(model, batch, operator=operators.linear, loss="sum_of_kls", **kw)
  np.testing.assert_allclose(m_sum["loss"] - m_mix["loss"], m_mix["jensen_gap"], rtol=1e-4)
  assert m_mix["jensen_gap"] > 1e-3
  for a, b in zip(jax.tree.leaves(s_mix.params), jax.tree.leaves(s_sum.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # ... and differ for the geometric operator, whose target is not the linear mixture.
  s_geo, _ = _one_step(model, batch, operator=operators.geometric, **kw)
  diff = max(
    np.abs(a - b).max()
    for a, b in zip(jax.tree.leaves(s_geo.params), jax.tree.leaves(s_sum.params), strict=True)
  )
  assert diff > 1e-5


def test_frozen_teachers_in_step_match_precomputed_batch():
  model, batch = _random_problem(seed=3)
  teachers = [models.build("mlp", in_features=12, hidden=(h,), num_classes=10) for h in (4, 6, 8)]
  teacher_params = [t.init(jax.random.key(10 + i)) for i, t in enumerate(teachers)]

  def teacher_apply(params_list, b):
    return jnp.stack([t.apply(p, b["x"]) for t, p in zip(teachers, params_list, strict=True)])

  pre = dict(batch, teacher_logits=np.asarray(teacher_apply(teacher_params, batch)))
  optimizer = optax.adam(1e-2)
  kw = dict(operator=operators.geometric, **KW)
  in_step = _step(model, optimizer, teacher_apply=teacher_apply, **kw)
  s1, m1 = jax.jit(in_step)(_state(model, optimizer), batch, teacher_params)
  s2, m2 = jax.jit(_step(model, optimizer, **kw))(_state(model, optimizer), pre)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_weighting_hook_receives_teachers_and_sets_weights():
  model, batch = _random_problem(seed=4)
  one_hot = lambda z, b: jnp.array([0.0, 1.0, 0.0])  # all weight on teacher 1
  _, m = _one_step(model, batch, operator=operators.linear, weighting=one_hot, **KW)
  np.testing.assert_allclose(m["effective_num_teachers"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(m["kl_q_student"], m["per_teacher_kl"][1], rtol=1e-5)


@pytest.mark.parametrize(
  ("kwargs", "field"),
  [
    (dict(temperatures=[1.0, 0.0, 1.0]), "temperatures"),
    (dict(temperatures=[1.0, -2.0, 1.0]), "temperatures"),
    (dict(weights=[0.5, 0.5]), "weights"),
    (dict(student_temperature=0.0), "student_temperature"),
    (dict(operator="linear"), "operator"),
    (dict(label_weight=1.5), "label_weight"),
  ],
)
def test_bad_arguments_fail_before_compilation(kwargs, field):
  model, _ = _random_problem()
  args = dict(operator=operators.linear, **KW)
  args.update(kwargs)
  with pytest.raises(ValueError, match=field) as err:
    _step(model, optax.sgd(0.1), **args)
  assert "\n" not in str(err.value)
  with pytest.raises(ValueError, match=r"objective: must be an objectives\.Objective"):
    train.make_train_step(model.apply, optax.sgd(0.1), objective=operators.linear, weights=[1.0])


def test_train_seeds_equals_separate_runs():
  """The vmapped loop trains each key as a plain scan of the step would (batches by data_seed)."""
  from mtkd_jax import data

  model, batch = _random_problem(seed=7, b=32)
  optimizer = optax.adam(1e-2)
  step = _step(model, optimizer, operator=operators.linear, **KW)
  keys = jax.vmap(jax.random.key)(jnp.arange(2))
  params, metrics = train.train_seeds(
    step,
    train.init_params(model.init),
    optimizer,
    batch,
    keys=keys,
    num_steps=5,
    batch_size=8,
    data_seed=3,
    metrics=("loss",),
  )
  assert metrics["loss"].shape == (2, 5) and set(metrics) == {"loss"}
  for s in range(2):
    state = _state(model, optimizer, seed=s)
    for t in range(5):
      idx = data.batch_indices(32, 8, seed=3, step=t)
      b = {k: np.take(v, idx, axis=data.example_axis(k)) for k, v in batch.items()}
      state, m = jax.jit(step)(state, b)
      np.testing.assert_allclose(metrics["loss"][s, t], m["loss"], rtol=1e-5)
    _tree_close(jax.tree.map(lambda p, s=s: p[s], params), state.params)


def test_byte_lm_student_trains_with_frozen_lm_teachers():
  from mtkd_jax import data

  cfg = dict(depth=1, width=32, num_heads=2, context=16)
  student = models.build("byte_lm", **cfg)
  teacher = models.build("byte_lm", **cfg)
  teacher_params = [teacher.init(jax.random.key(i)) for i in (1, 2)]
  teacher_apply = lambda ps, b: jnp.stack([teacher.apply(p, b["x"]) for p in ps])  # [K,B,L,V]
  optimizer = optax.adam(3e-3)
  step = jax.jit(
    train.make_train_step(
      student.apply,
      optimizer,
      objective=objectives.mixture(operators.get("entropic(beta=0.5)"), temperatures=[1.0, 2.0]),
      weights=[0.6, 0.4],
      teacher_apply=teacher_apply,
      label_weight=0.5,
    ),
    donate_argnums=0,
  )
  corpus = data.byte_corpus()
  state = _state(student, optimizer)
  batch = data.lm_batch(corpus, 8, 16, seed=0, step=0)  # one batch: the loss must go down
  losses_seen = []
  for _ in range(8):
    state, m = step(state, batch, teacher_params)
    losses_seen.append(float(m["loss"]))
  assert np.all(np.isfinite(losses_seen))
  assert losses_seen[-1] < losses_seen[0] - 0.1, losses_seen
  assert m["per_teacher_kl"].shape == (2,)


def _tree_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _history_close(h1, h2):
  assert [r["step"] for r in h1] == [r["step"] for r in h2] == list(range(1, tiny.NUM_STEPS + 1))
  for r1, r2 in zip(h1, h2, strict=True):
    for key in r1:
      np.testing.assert_allclose(r1[key], r2[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.fixture(scope="module")
def one_device_run():
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  return tiny.run_tiny(mesh)


def test_same_metrics_on_1_and_8_devices(one_device_run, tmp_path):
  assert len(jax.devices()) == 8
  mesh = sharding.make_mesh(4, 2)
  history, params = tiny.run_tiny(mesh, workdir=str(tmp_path / "w"))
  _history_close(history, one_device_run[0])
  _tree_close(params, one_device_run[1])
  assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.slow
def test_same_metrics_in_2_processes(one_device_run, tmp_path):
  port, out = _processes.free_port(), tmp_path / "out.json"
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {_processes.CHEAP_XLA_FLAGS}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT,
  )
  commands = [
    [
      sys.executable,
      os.path.join(TESTS, "_multiprocess_worker.py"),
      str(port),
      str(i),
      "2",
      str(out),
      str(tmp_path / "w"),
    ]
    for i in range(2)
  ]
  _processes.run_all(commands, env=env, cwd=ROOT, timeout=180)
  result = json.loads(out.read_text())
  _history_close(result["history"], one_device_run[0])
  _tree_close(result["params"], one_device_run[1])


def test_resume_from_checkpoint_equals_uninterrupted(one_device_run, tmp_path):
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  workdir = str(tmp_path / "w")
  first, _ = tiny.run_tiny(mesh, workdir=workdir, num_steps=7)  # saves 5 and 7
  assert ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "tiny")).all_steps() == [5, 7]
  second, params = tiny.run_tiny(mesh, workdir=workdir)  # resumes at 7
  assert [r["step"] for r in second] == list(range(8, tiny.NUM_STEPS + 1))
  _history_close(first + second, one_device_run[0])
  _tree_close(params, one_device_run[1])
  # A finished run is restored, not retrained.
  third, params3 = tiny.run_tiny(mesh, workdir=workdir)
  assert third == []
  _tree_close(params3, params, rtol=0, atol=0)


def test_restore_loads_the_trained_student_from_the_workdir(tmp_path):
  mesh = sharding.make_mesh(4, 2)
  workdir = str(tmp_path / "w")
  _, params = tiny.run_tiny(mesh, workdir=workdir)
  student, optimizer, _, _ = tiny.tiny_problem()
  loop = train.Loop(mesh=mesh, partition_rules=sharding.DEFAULT_RULES, workdir=workdir)
  kw = dict(init_params=train.init_params(student.init), optimizer=optimizer, loop=loop)
  state = train.restore("tiny", **kw)
  assert int(state.step) == tiny.NUM_STEPS
  restored = jax.device_get(state.params["student"])
  for layer, arrays in params.items():
    for n, a in arrays.items():
      np.testing.assert_array_equal(restored[layer][n], np.asarray(a, np.float32))
  kernel = state.params["student"]["hidden_0"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")  # as train places it
  with pytest.raises(ValueError, match="no checkpoints"):
    train.restore("other_run", **kw)
  with pytest.raises(ValueError, match="no checkpoints"):
    train.restore("tiny", **dict(kw, loop=train.Loop(mesh=mesh)))  # no workdir


def test_workdir_with_incompatible_config_is_refused(tmp_path):
  workdir = str(tmp_path)
  checkpoints.check_workdir(workdir, {"operator": "linear", "num_steps": 10, "log_every": 5})
  # Nothing trained yet (say a bad-config crash): any config is re-recorded.
  checkpoints.check_workdir(workdir, {"operator": "geometric", "num_steps": 10, "log_every": 5})
  os.makedirs(tmp_path / "checkpoints")  # now something was trained
  checkpoints.check_workdir(workdir, {"operator": "geometric", "num_steps": 10, "log_every": 7})
  with pytest.raises(ValueError, match=r"incompatible config \(operator: 'geometric' -> 'lin"):
    checkpoints.check_workdir(workdir, {"operator": "linear", "num_steps": 10, "log_every": 5})


@pytest.mark.parametrize("bad", ["with[bracket", "star*", "q?"])
def test_workdir_with_glob_characters_is_refused_before_writing(tmp_path, bad):
  with pytest.raises(ValueError, match="are not allowed in the path"):
    checkpoints.check_workdir(str(tmp_path / bad), {"a": 1})
  assert not (tmp_path / bad).exists()


def test_workdir_that_is_a_file_or_read_only_is_a_one_line_error(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(ValueError, match="exists and is not a directory"):
    checkpoints.check_workdir(str(tmp_path / "f"), {"a": 1})
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  try:
    if os.access(ro, os.W_OK):  # root ignores permissions: a file in the way fails the same way
      (tmp_path / "file").write_text("x")
      with pytest.raises(ValueError, match="cannot write there"):
        checkpoints.check_workdir(str(tmp_path / "file" / "w"), {"a": 1})
    else:
      with pytest.raises(ValueError, match="cannot write there"):
        checkpoints.check_workdir(str(ro / "w"), {"a": 1})
  finally:
    ro.chmod(0o700)


def test_a_second_job_on_a_workdir_is_refused_with_the_holders_pid(tmp_path):
  with checkpoints.WorkdirLock(str(tmp_path)):
    code = (
      "import sys; from mtkd_jax import checkpoints\n"
      "try:\n  checkpoints.WorkdirLock(sys.argv[1]).__enter__()\n"
      "except ValueError as e:\n  print(e); sys.exit(3)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert f"is in use by pid {os.getpid()}" in r.stdout
  with checkpoints.WorkdirLock(str(tmp_path)):  # released: usable again
    pass


CLI_TINY = [
  "--config=experiments/configs/digits.py",
  "--config.teacher_steps=20",
  "--config.num_steps=30",
  "--config.checkpoint_every=10",
  "--config.log_every=5",
  "--config.batch_size=32",
  "--config.progress=False",
  "--config.single_teacher_students=False",
]


def _load_final_params(workdir, run):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints", run))
  step = mngr.latest_step()
  return step, mngr.restore(step, args=ocp.args.StandardRestore())["params"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {_processes.CHEAP_XLA_FLAGS}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT,
  )
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  cli = [sys.executable, "-m", "mtkd_jax.main", *CLI_TINY]
  run = lambda cmd, **kw: subprocess.run(
    cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240, **kw
  )
  r = run([*cli, f"--workdir={ref}"])
  assert r.returncode == 0, f"rc={r.returncode}\n{r.stderr[-3000:]}"
  # Dies by SIGKILL right after starting the (asynchronous) save of step 20 of the student.
  killer = [sys.executable, os.path.join(TESTS, "_kill_worker.py"), "student_linear", "20"]
  r = run([*killer, *CLI_TINY, f"--workdir={killed}"])
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert _load_final_params(killed, "student_linear")[0] in (10, 20)
  assert not os.path.exists(os.path.join(killed, "checkpoints", "student_geometric"))
  r = run([*cli, f"--workdir={killed}"])
  assert r.returncode == 0, f"rc={r.returncode}\n{r.stderr[-3000:]}"
  for name in ("student_linear", "student_geometric"):  # teachers: one cache entry for both
    step_ref, p_ref = _load_final_params(ref, name)
    step_res, p_res = _load_final_params(killed, name)
    assert step_ref == step_res
    _tree_close(p_res, p_ref, rtol=1e-6, atol=1e-7)
  res_ref = json.loads(open(os.path.join(ref, "results.json")).read())
  res_killed = json.loads(open(os.path.join(killed, "results.json")).read())
  assert res_ref == res_killed
