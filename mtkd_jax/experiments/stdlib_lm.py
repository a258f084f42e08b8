"""Multi-teacher distillation on a byte-level LM over the Python standard library.

Three byte Transformer teachers, each specialised on one family of `.py` files (trained mostly on
its family, a little on the others), larger and trained longer than the student can be; trained
once and cached (`train.cached_run`). Their top-k outputs are dumped once to an offline store
(`mtkd_jax.teachers`). A smaller student trained on every family with a fixed budget of steps
learns from: the hard labels; each single teacher; the K-teacher mixture (linear, geometric) of
the online (dense) teachers; forward KL against reverse KL and JSD; a label/KD blend; an adaptive
weighting; the stored top-k per k and tail mode (`mtkd_jax.sparse`). Every student is trained
over several seeds (initialisation and batch order) and scored in bits per byte on the held-out
split (`eval_split`: "test", or "validation", files carved from the training files, on which the
sizes, budgets and blend were chosen).
"""

import hashlib
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import models, objectives, operators, sparse, teachers, text_data, train, weighting
from mtkd_jax import sharding as sharding_lib
from mtkd_jax import store as store_lib
from mtkd_jax.experiments import common, tables

EVAL_SPLITS = ("validation", "test")
TEACHER_SOURCES = ("online", "store")
FUSED_OPERATORS = ("linear", "geometric")  # those of objectives.mixture_from_hidden
_SIZES = ("depth", "width", "num_heads")


def validate_config(config) -> None:
  common.check_numbers(
    config,
    positive_ints="seq_len eval_windows depth width num_heads teacher.depth teacher.width "
    "teacher.num_heads teacher.steps teacher.batch_size student_steps num_seeds batch_size "
    "log_every checkpoint_every keep_checkpoints k_values store.k store.windows store.batch_size",
    non_negative_ints="seed data_seed warmup_steps",
    positive="teacher.learning_rate learning_rate temperatures student_temperature "
    "store.generation_temperature",
    non_negative="weight_decay weights",
    fractions="test_fraction validation_fraction teacher.own_fraction",
    unit="label_weight",
  )
  num_teachers = len(config.families)
  require = common.require
  require(num_teachers >= 1, "families", "need at least one family")
  common.check_lengths(config, ("temperatures", "weights"), num_teachers, "one per family")
  split, fraction = config.eval_split, config.validation_fraction
  require(split in EVAL_SPLITS, "eval_split", f"one of {EVAL_SPLITS}, got {split!r}")
  require(fraction < 1, "validation_fraction", f"must be < 1, got {fraction}")
  common.check_field("weights", lambda: operators.check_weights(config.weights, (num_teachers, 1)))
  for op in config.dense_operators:
    common.check_field("dense_operators", lambda op=op: operators.get(op))
  for div in config.divergences:
    common.check_field("divergences", lambda div=div: objectives._divergence(div))
  if config.adaptive:
    common.check_field("adaptive", lambda: weighting.get(config.adaptive))
  common.check_field("operator", lambda: sparse.get(config.operator))
  for mode in config.tail_modes:
    common.check_field("tail_modes", lambda mode=mode: sparse.get(config.operator, tail_mode=mode))
  source = config.teachers
  require(source in TEACHER_SOURCES, "teachers", f"one of {TEACHER_SOURCES}, got {source!r}")
  op = lambda name=config.operator: sparse.get(name, tail_mode=config.store.tail_mode)
  common.check_field("store.tail_mode", op)
  if config.teachers == "store":
    require(
      not config.adaptive,
      "adaptive",
      "adaptive weights read the teachers' full logits; set it to '' with teachers='store', "
      f"got {config.adaptive!r}",
    )
    for name in config.dense_operators:  # the store's students aggregate sparse outputs
      common.check_field("dense_operators", lambda name=name: op(name))
    for div in config.divergences:  # reverse KL is +inf with tail mode "drop"
      obj = lambda div=div: objectives.sparse_mixture(op(), temperatures=[1.0], divergence=div)
      common.check_field("divergences", obj)
  store, v, dtypes = config.store, models.ByteTransformerLM.vocab_size, store_lib.LOG_PROB_DTYPES
  require(store.k <= v, "store.k", f"must be in [1, {v}], got {store.k}")
  k_ok = all(k <= store.k for k in config.k_values)
  require(k_ok, "k_values", f"must be in [1, store.k={store.k}], got {config.k_values}")
  require(store.dtype in dtypes, "store.dtype", f"one of {dtypes}, got {store.dtype!r}")
  ok = store.windows >= config.batch_size and not store.windows % num_teachers
  windows = f"need a multiple of K={num_teachers} and ≥ batch_size, got {store.windows}"
  require(ok, "store.windows", windows)
  for prefix, c in (("", config), ("teacher.", config.teacher)):
    message = f"{c.num_heads} does not divide width {c.width}"
    require(not c.width % c.num_heads, f"{prefix}num_heads", message)


def load_corpus(config) -> text_data.Corpus:
  """The families' train / validation / test bytes. Validation files are carved from the
  training files (`text_data.load_stdlib`); with `eval_split="test"` they stay out of training
  too, so the models scored on the test split are those chosen on the validation split."""
  families = tuple((name, tuple(members)) for name, members in config.families)
  split = {"test_fraction": config.test_fraction, "exclude": tuple(config.exclude)}
  return text_data.load_stdlib(families, validation_fraction=config.validation_fraction, **split)


def build_model(config, sizes=None) -> models.FunctionalModel:
  """The student: `config.depth`, `width`, `num_heads` (those of `sizes` if given)."""
  c = config if sizes is None else sizes
  return models.build("byte_lm", context=config.seq_len, **{f: c[f] for f in _SIZES})


def build_teacher_model(config) -> models.FunctionalModel:
  """Every teacher: `config.teacher.depth`, `width`, `num_heads`."""
  return build_model(config, config.teacher)


def _xy(windows: np.ndarray) -> dict[str, np.ndarray]:
  w = np.asarray(windows).astype(np.int32)
  return {"x": w[:, :-1], "y": w[:, 1:]}


def teacher_windows(config, corpus, j: int) -> np.ndarray:
  """Teacher j's training windows: `own_fraction` from its family, the rest shared equally by
  the other families (a specialist that still knows some of the others), shuffled. uint8."""
  t = config.teacher
  num = t.steps * t.batch_size
  fams = corpus.families
  own = num if len(fams) == 1 else round(num * t.own_fraction)
  counts = [own if i == j else (num - own) // max(len(fams) - 1, 1) for i in range(len(fams))]
  parts = [
    text_data.sample_windows(
      corpus.data[f]["train"], n, config.seq_len, seed=(config.data_seed, 3000 + 10 * j + i)
    )
    for i, (f, n) in enumerate(zip(fams, counts, strict=True))
    if n
  ]
  windows = np.concatenate(parts)
  return windows[np.random.default_rng((config.data_seed, 4000 + j)).permutation(len(windows))]


def train_teachers(config, loop: train.Loop, corpus) -> list:
  """Trains one teacher per family, or restores it from the teacher cache (`train.cached_run`,
  keyed by its data, model, optimizer, steps and seed); returns their params."""
  t = config.teacher
  model = build_teacher_model(config)
  optimizer = common.optimizer(config, t.learning_rate, t.steps)
  step = train.make_supervised_step(model.apply, optimizer)  # one step: compiled once for all
  params = []
  for j, family in enumerate(corpus.families):
    arrays = _xy(teacher_windows(config, corpus, j))
    key = {
      "data": hashlib.sha256(arrays["x"].tobytes() + arrays["y"].tobytes()).hexdigest(),
      "model": {"byte_lm": [config.seq_len, t.depth, t.width, t.num_heads]},
      **{f: t[f] for f in ("learning_rate", "steps", "batch_size")},
      **{f: config[f] for f in ("weight_decay", "warmup_steps")},
      "seed": config.seed + j,
    }
    name = f"teacher_{family}"
    with train.cached_run(loop, name, key) as teacher_loop:
      state, _ = train.train(
        name,
        init_params=model.init,
        train_step=step,
        optimizer=optimizer,
        arrays=arrays,
        num_steps=t.steps,
        batch_size=t.batch_size,
        seed=config.seed + j,
        loop=teacher_loop,
      )
    params.append(state.params)
  return params


def student_windows(config, corpus):
  """The student's training windows: an equal share from each family, shuffled (uint8 [N, L+1])."""
  per_family = config.store.windows // len(corpus.families)
  sample = lambda j, f: text_data.sample_windows(
    corpus.data[f]["train"], per_family, config.seq_len, seed=(config.data_seed, 1000 + j)
  )
  windows = np.concatenate([sample(j, f) for j, f in enumerate(corpus.families)])
  return windows[np.random.default_rng((config.data_seed, 2000)).permutation(len(windows))]


def _teacher_source(config, model, corpus, teacher_params) -> teachers.TeacherSource:
  """The store's source; each teacher's manifest config is the SHA-256 of its parameters and of
  the windows, so a store dumped from other teachers or data is never reused."""
  apply_all = jax.jit(lambda ps, x: jnp.stack([model.apply(p, x) for p in ps]))  # [K, B, L, V]
  tokens = student_windows(config, corpus)
  sha = lambda arrays: hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in arrays))
  windows = sha([tokens]).hexdigest()
  return teachers.TeacherSource(
    names=corpus.families,
    tokens=tokens,
    logits_fn=lambda x: apply_all(teacher_params, x),
    vocab_size=models.ByteTransformerLM.vocab_size,
    configs=tuple(
      {"params_sha256": sha(jax.tree.leaves(p)).hexdigest(), "windows_sha256": windows}
      for p in teacher_params
    ),
  )


def teacher_source(config, workdir: str) -> teachers.TeacherSource:
  """For `python -m mtkd_jax.teachers dump`: trains/restores the teachers in `workdir`."""
  validate_config(config)
  corpus = load_corpus(config)
  params = train_teachers(config, train.Loop.from_config(config, workdir), corpus)
  return _teacher_source(config, build_teacher_model(config), corpus, params)


def make_scorer(apply, mesh, batch: int = 64):
  """`score(params, windows [N, L + 1]) -> float64 [N, L]` log p(next byte), compiled once."""
  fn = jax.jit(
    lambda p, x, y: jnp.take_along_axis(jax.nn.log_softmax(apply(p, x), -1), y[..., None], -1),
    out_shardings=sharding_lib.replicated(mesh),
  )

  def score(params, windows):
    xy = _xy(windows)
    out = []
    for lo in range(0, len(windows), batch):
      x, y = (sharding_lib.put_replicated(mesh, xy[k][lo : lo + batch]) for k in ("x", "y"))
      out.append(np.asarray(fn(params, x, y), np.float64)[..., 0])
    return np.concatenate(out)

  return score


def bits_per_byte(log_probs_by_family: dict[str, np.ndarray]) -> dict[str, float]:
  """Mean −log2 p per byte, per family and over all families ("all", equal bytes per family)."""
  out = {f: float(-lp.mean() / math.log(2)) for f, lp in log_probs_by_family.items()}
  every = np.concatenate([lp.ravel() for lp in log_probs_by_family.values()])
  return {**out, "all": float(-every.mean() / math.log(2))}


def _open_or_dump_store(config, directory, source) -> teachers.TeacherStore:
  """Reuses a complete, verified store with the same settings, else dumps it again (one process:
  a multi-process run reads a store already written, each process its own rows)."""
  if jax.process_count() > 1:
    return teachers.open_store(directory)
  try:
    store = teachers.open_store(directory)
    m = store.manifest
    same = (
      m["k"] == config.store.k
      and m["num_rows"] == config.store.windows
      and m["teachers"][0]["log_probs"]["dtype"] == config.store.dtype
      and np.allclose(store.generation_temperatures, config.store.generation_temperature)
      and m["row_shape"] == [config.seq_len]
      and [t["config"] for t in m["teachers"]] == list(source.configs)
    )
    if same:
      return store
  except ValueError:
    pass
  teachers.write_config_store(directory, source, config.store, progress=config.progress)
  return teachers.open_store(directory)


def student_runs(config) -> list[dict]:
  """Every student, as {"name", "kind", "teachers" (indices of the teachers it learns from),
  "operator", "divergence", "label_weight", "adaptive", "k", "tail_mode"}, in table order.

  Kinds: "labels"; "hidden" (online teachers, the output projection fused with the loss, from
  hidden states); "dense" (online teachers' logits: a label blend, adaptive weights or an
  operator other than linear and geometric need them); "sparse" (the store's top-k; with
  `teachers="store"` every distilled student, at `store.k`)."""
  fams = [name for name, _ in config.families]
  every = tuple(range(len(fams)))
  base = {"teachers": every, "operator": "linear", "divergence": "forward_kl"}
  base.update(label_weight=0.0, adaptive=None, k=None, tail_mode=None)
  runs = [{**base, "name": "student[labels]", "kind": "labels"}] if config.label_student else []

  def dense(name, **fields):
    runs.append({**base, "name": f"student[{name}]", "kind": "dense", **fields})

  for j, f in enumerate(fams if config.single_teacher_students else []):
    dense(f"teacher {f}", teachers=(j,))
  for op in config.dense_operators:
    dense(f"mixture {op}", operator=op)
  for div in config.divergences:
    dense(f"mixture linear, {div}", divergence=div)
  if config.label_weight > 0:
    dense(f"mixture linear + {config.label_weight:g} labels", label_weight=config.label_weight)
  if config.adaptive:
    dense(config.adaptive, adaptive=config.adaptive)
  for r in runs:
    if r["kind"] != "dense":
      continue
    if config.teachers == "store":
      r.update(kind="sparse", k=config.store.k, tail_mode=config.store.tail_mode)
    elif not r["label_weight"] and not r["adaptive"] and r["operator"] in FUSED_OPERATORS:
      r["kind"] = "hidden"
  for k in config.k_values:
    for mode in config.tail_modes:
      runs.append({**base, "name": f"student[top{k},{mode}]", "kind": "sparse", "k": k})
      runs[-1].update(tail_mode=mode, operator=config.operator)
  return runs


def _student_step(config, run, model, optimizer, teacher_apply):
  """The update step of the student `run` (a `student_runs` entry): hard labels, online teachers
  run in the step (their hidden states and heads, or their logits), or the store's top-k."""
  kind, chosen = run["kind"], tuple(run["teachers"])
  if kind == "labels":
    return train.make_supervised_step(model.apply, optimizer)
  temps = {"temperatures": tuple(config.temperatures[j] for j in chosen)}
  temps.update(student_temperature=config.student_temperature, divergence=run["divergence"])
  if kind == "hidden":  # the step gets the model itself: features and head, no logits
    objective = objectives.mixture_from_hidden(run["operator"], **temps)
  elif kind == "dense":
    objective = objectives.mixture(operators.get(run["operator"]), **temps)
  else:
    sparse_op = sparse.get(run["operator"], tail_mode=run["tail_mode"])
    objective = objectives.sparse_mixture(sparse_op, **temps)
  w = np.asarray([config.weights[j] for j in chosen], np.float64)
  targets = {"weights": tuple(w / w.sum()), "teacher_apply": teacher_apply}
  targets["label_weight"] = run["label_weight"]
  if run["adaptive"]:
    targets["weighting"] = weighting.get(run["adaptive"])
  student = model if kind == "hidden" else model.apply
  return train.make_train_step(student, optimizer, objective=objective, **targets)


def _seed_stats(values) -> dict[str, float]:
  v = np.asarray(values, np.float64)
  se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
  return {"mean": float(v.mean()), "se": se}


def run(config, workdir: str) -> dict:
  """Trains (or restores) the teachers, dumps the store, distils every student over
  `num_seeds` seeds; returns the results dict."""
  start = time.time()
  timings: dict[str, float] = {}
  loop = train.Loop.from_config(config, workdir)
  corpus = load_corpus(config)
  teacher_model, model = build_teacher_model(config), build_model(config)
  fams = list(corpus.families)

  t0 = time.time()
  teacher_params = train_teachers(config, loop, corpus)
  timings["teachers"] = time.time() - t0
  t0 = time.time()
  source = _teacher_source(config, teacher_model, corpus, teacher_params)
  store = _open_or_dump_store(config, os.path.join(workdir, "store"), source)
  timings["store"] = time.time() - t0

  split = config.eval_split
  evals = {
    f: text_data.eval_windows(corpus.data[f][split], config.eval_windows, config.seq_len)
    for f in fams
  }
  batch = max(config.eval_windows, 1)
  teacher_scorer = make_scorer(teacher_model.apply, loop.mesh, batch=batch)
  scorer = make_scorer(model.apply, loop.mesh, batch=batch)

  teacher_lp = [{f: teacher_scorer(p, w) for f, w in evals.items()} for p in teacher_params]
  names = [f"teacher[{f}]" for f in fams]
  bpb = {n: bits_per_byte(lp) for n, lp in zip(names, teacher_lp, strict=True)}
  average = {c: float(np.mean([bpb[n][c] for n in names])) for c in bpb[names[0]]}
  log_w = np.log(np.asarray(config.weights, np.float64))
  weighted = lambda f: np.stack([lw + lp[f] for lw, lp in zip(log_w, teacher_lp, strict=True)])
  mixture = {f: np.logaddexp.reduce(weighted(f), 0) for f in fams}
  bpb["teacher mixture"] = bits_per_byte(mixture)

  # Students: per seed the same init and batches, different targets. Initial parameters are
  # computed once per seed and steps built once per kind of target (a step takes the teachers'
  # parameters as an argument), so the seeds and the single teachers share compiled programs.
  xy = _xy(store.tokens)
  fixed = {"num_steps": config.student_steps, "batch_size": config.batch_size, "loop": loop}
  seeds = [config.seed + 100 + s for s in range(config.num_seeds)]
  init_fn = jax.jit(model.init)
  inits = {seed: init_fn(jax.random.key(seed)) for seed in seeds}
  optimizer = common.optimizer(config, config.learning_rate, config.student_steps)
  online = {  # teachers run inside the step; their parameters are the step's argument
    "dense": lambda ps, b: jnp.stack([teacher_model.apply(p, b["x"]) for p in ps]),
    "hidden": lambda ps, b: [
      (teacher_model.features(p, b["x"]), *teacher_model.head(p)) for p in ps
    ],
  }
  steps: dict[tuple, object] = {}
  per_seed: dict[str, list[dict]] = {}
  for spec in student_runs(config):
    name, kind, adaptive = spec["name"], spec["kind"], spec["adaptive"]
    t0 = time.time()
    chosen = list(spec["teachers"])
    # What the step bakes in: the chosen teachers' temperatures and weights and, from the store,
    # their indices (online, their parameters are an argument), so students of equal settings
    # share one step.
    setting = [(config.temperatures[j], config.weights[j]) for j in chosen]
    signature = (kind, tuple(setting), spec["operator"], spec["divergence"], spec["label_weight"])
    signature += (adaptive, spec["tail_mode"], tuple(chosen) if kind == "sparse" else None)
    if signature not in steps:
      source = store.teacher_apply(chosen) if kind == "sparse" else online.get(kind)
      steps[signature] = _student_step(config, spec, model, optimizer, source)
    arrays = {**store.arrays(spec["k"], chosen), **xy} if kind == "sparse" else dict(xy)
    dense_params = [teacher_params[j] for j in chosen] if kind in online else None
    setup = {"train_step": steps[signature], "optimizer": optimizer, "arrays": arrays}
    run_name = re.sub(r"[^A-Za-z0-9.=+-]+", "_", name).strip("_")  # no glob chars (orbax)
    per_seed[name] = []
    for seed in seeds:
      init = lambda rng, p0=inits[seed]: p0  # = model.init(key(seed))
      if kind != "labels":  # distilled students: the tree of train.init_params
        init = train.init_params(init, adaptive and weighting.get(adaptive))
      state, _ = train.train(
        f"{run_name}_seed{seed}",
        init_params=init,
        teacher_params=dense_params,
        seed=seed,
        **setup,
        **fixed,
      )
      params = state.params if kind == "labels" else state.params["student"]
      per_seed[name].append(bits_per_byte({f: scorer(params, w) for f, w in evals.items()}))
    timings[name] = time.time() - t0

  cols = [*fams, "all"]
  stats = {n: {c: _seed_stats([r[c] for r in rs]) for c in cols} for n, rs in per_seed.items()}
  for n, s in stats.items():
    bpb[n] = {c: s[c]["mean"] for c in cols}
  stderr = {n: {c: s[c]["se"] for c in cols} for n, s in stats.items()}
  seeds_bpb = {n: {c: [r[c] for r in rs] for c in cols} for n, rs in per_seed.items()}

  def paired(ref: str | None, skip) -> dict:
    """Differences to the student `ref` over the same seeds (init and batch order)."""
    if ref not in per_seed:
      return {}
    d = lambda rs, c: _seed_stats([r[c] - q[c] for r, q in zip(rs, per_seed[ref], strict=True)])
    return {n: {c: d(rs, c) for c in cols} for n, rs in per_seed.items() if n not in skip}

  # Against the hard-label student, and the best single-teacher one (lowest mean, all).
  singles = [n for n in per_seed if n.startswith("student[teacher ")]
  best_single = min(singles, key=lambda n: bpb[n]["all"]) if singles else None
  vs_labels = paired("student[labels]", ["student[labels]"])
  vs_single = paired(best_single, singles)

  manifest = store.manifest
  return {
    "families": fams,
    "eval_split": split,
    "teachers": config.teachers,
    "train_bytes": corpus.num_bytes("train"),
    "validation_bytes": corpus.num_bytes("validation"),
    "test_bytes": corpus.num_bytes("test"),
    "eval_bytes_per_family": config.eval_windows * config.seq_len,
    "num_seeds": config.num_seeds,
    "teacher_size": [config.teacher.depth, config.teacher.width],
    "student_size": [config.depth, config.width],
    "num_params": {
      "teacher": _num_params(teacher_params[0]),
      "student": _num_params(jax.eval_shape(model.init, jax.random.key(0))),
    },
    "student_steps": config.student_steps,
    "k_values": list(config.k_values),
    "tail_modes": list(config.tail_modes),
    "operator": config.operator,
    "bits_per_byte": bpb,
    "bits_per_byte_se": stderr,
    "bits_per_byte_seeds": seeds_bpb,
    "vs_labels": vs_labels,
    "best_single_teacher_student": best_single,
    "vs_best_single": vs_single,
    "average_teacher": average,
    "store": {
      "k": manifest["k"],
      "dtype": config.store.dtype,
      "rows": manifest["num_rows"],
      "bytes": sum(t["bytes"] for t in manifest["teachers"]),
      "dense_bf16_bytes": len(manifest["teachers"]) * manifest["num_rows"] * config.seq_len * 512,
    },
    "timings_s": {k: round(v, 1) for k, v in timings.items()},
    "total_time_s": round(time.time() - start, 1),
  }


def _num_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def format_table(results: dict) -> str:
  """Held-out bits per byte of every model, overall and per family; students: mean ± standard
  error over seeds, and the paired difference to the hard-label student."""
  bpb, se = results["bits_per_byte"], results.get("bits_per_byte_se", {})
  vs, vs1 = results.get("vs_labels", {}), results.get("vs_best_single", {})
  fams = results["families"]
  rows = [(n, v) for n, v in bpb.items() if n.startswith("teacher[")]
  rows.append(("average teacher", results["average_teacher"]))
  rows += [(n, v) for n, v in bpb.items() if not n.startswith("teacher[")]
  pm = lambda n, c: f"{bpb[n][c]:.4f} ± {se[n][c]:.4f}" if n in se else None
  width = max(len(n) for n, _ in rows) + 1

  def cells(n, v):
    out = [pm(n, "all") or f"{v['all']:.4f}", *(f"{v[f]:.4f}" for f in fams)]
    for table in (vs, vs1):
      d = table.get(n, {}).get("all")
      out.append(f"{d['mean']:+.4f} ± {d['se']:.4f}" if d else "")
    return (n, *out)

  columns = [("model", f"<{width}"), ("all (± s.e.)", ">17")]
  columns += [(f, ">7") for f in fams] + [("Δ vs labels (± s.e.)", ">20")]
  columns += [("Δ vs best single (± s.e.)", ">25")]
  lines = [
    f"{results['eval_split']} bits per byte ({results['eval_bytes_per_family']} bytes per family; "
    f"students: mean ± standard error over {results['num_seeds']} seeds; teachers: "
    f"{results['teachers']})",
    *tables.lines(columns, [cells(n, v) for n, v in rows], indent="", rule=True),
  ]
  s, mib = results["store"], lambda b: f"{b / 2**20:.1f} MiB"
  p = results["num_params"]
  if results.get("best_single_teacher_student"):
    lines.append(
      f"Δ: paired differences over the seeds (same init and batches); best single: "
      f"{results['best_single_teacher_student']} (lowest mean on the scored split itself)"
    )
  lines.append(
    f"teachers {p['teacher']:,} parameters, student {p['student']:,} ({results['student_steps']} "
    f"steps); store: top-{s['k']} {s['dtype']} of {s['rows']} windows: {mib(s['bytes'])} (dense "
    f"bf16: {mib(s['dense_bf16_bytes'])}); total time {results['total_time_s']:.0f} s"
  )
  return "\n".join(lines)
