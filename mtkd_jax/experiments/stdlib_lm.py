"""Sparse / offline teachers on a byte-level LM over the Python standard library.

Three byte Transformer teachers, one per family of `.py` files; their top-k outputs dumped once to
an offline store (`mtkd_jax.teachers`); students from the dense teachers and from the stored top-k
per k and tail mode (`mtkd_jax.sparse`); every model scored in held-out bits per byte.
"""

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import models, objectives, operators, sparse, teachers, text_data, train
from mtkd_jax import sharding as sharding_lib
from mtkd_jax import store as store_lib
from mtkd_jax.experiments import common, tables


def validate_config(config) -> None:
  common.check_numbers(
    config,
    positive_ints="seq_len eval_windows depth width num_heads teacher_steps student_steps "
    "batch_size log_every checkpoint_every keep_checkpoints k_values store.k store.windows "
    "store.batch_size",
    non_negative_ints="seed data_seed warmup_steps",
    positive="teacher_learning_rate learning_rate temperatures student_temperature "
    "store.generation_temperature",
    non_negative="weight_decay weights",
    fractions="test_fraction",
  )
  num_teachers = len(config.families)
  if num_teachers < 1:
    raise ValueError("config.families: need at least one family")
  for field in ("temperatures", "weights"):
    if len(config[field]) != num_teachers:
      raise ValueError(
        f"config.{field}: need one per family (K={num_teachers}), got {config[field]}"
      )
  common.check_field("weights", lambda: operators.check_weights(config.weights, (num_teachers, 1)))
  common.check_field("operator", lambda: sparse.get(config.operator))
  for mode in config.tail_modes:
    common.check_field("tail_modes", lambda mode=mode: sparse.get(config.operator, tail_mode=mode))
  store = config.store
  if store.k > models.ByteTransformerLM.vocab_size:
    raise ValueError(f"config.store.k: must be in [1, 256], got {store.k}")
  if any(k > store.k for k in config.k_values):
    raise ValueError(f"config.k_values: must be in [1, store.k={store.k}], got {config.k_values}")
  if store.dtype not in store_lib.LOG_PROB_DTYPES:
    raise ValueError(f"config.store.dtype: one of {store_lib.LOG_PROB_DTYPES}, got {store.dtype!r}")
  if store.windows < config.batch_size or store.windows % num_teachers:
    raise ValueError(
      f"config.store.windows: need a multiple of K={num_teachers} and ≥ batch_size, "
      f"got {store.windows}"
    )
  if config.width % config.num_heads:
    raise ValueError(f"config.num_heads: {config.num_heads} does not divide width {config.width}")


def load_corpus(config) -> text_data.Corpus:
  families = tuple((name, tuple(members)) for name, members in config.families)
  split = {"test_fraction": config.test_fraction, "exclude": tuple(config.exclude)}
  return text_data.load_stdlib(families, **split)


def build_model(config) -> models.FunctionalModel:
  shape = {"depth": config.depth, "width": config.width, "num_heads": config.num_heads}
  return models.build("byte_lm", context=config.seq_len, **shape)


def _xy(windows: np.ndarray) -> dict[str, np.ndarray]:
  w = np.asarray(windows).astype(np.int32)
  return {"x": w[:, :-1], "y": w[:, 1:]}


def train_teachers(config, loop: train.Loop, corpus) -> list:
  """Trains (or restores from the loop's workdir) one teacher per family; returns their params."""
  model = build_model(config)
  optimizer = common.optimizer(config, config.teacher_learning_rate, config.teacher_steps)
  step = train.make_supervised_step(model.apply, optimizer)  # one step: compiled once for all
  params = []
  fixed = {"init_params": model.init, "train_step": step, "optimizer": optimizer, "loop": loop}
  fixed.update(num_steps=config.teacher_steps, batch_size=config.batch_size)
  num_windows = config.teacher_steps * config.batch_size
  for j, family in enumerate(corpus.families):
    train_bytes = corpus.data[family]["train"]
    seed = (config.data_seed, j)
    windows = text_data.sample_windows(train_bytes, num_windows, config.seq_len, seed=seed)
    state, _ = train.train(f"teacher_{family}", arrays=_xy(windows), seed=config.seed + j, **fixed)
    params.append(state.params)
  return params


def student_windows(config, corpus) -> np.ndarray:
  """The student's training windows: an equal share from each family, shuffled. uint8."""
  per_family = config.store.windows // len(corpus.families)
  sample = lambda j, f: text_data.sample_windows(
    corpus.data[f]["train"], per_family, config.seq_len, seed=(config.data_seed, 1000 + j)
  )
  windows = np.concatenate([sample(j, f) for j, f in enumerate(corpus.families)])
  return windows[np.random.default_rng((config.data_seed, 2000)).permutation(len(windows))]


def _teacher_source(config, model, corpus, teacher_params) -> teachers.TeacherSource:
  apply_all = jax.jit(lambda ps, x: jnp.stack([model.apply(p, x) for p in ps]))  # [K, B, L, V]
  return teachers.TeacherSource(
    names=corpus.families,
    tokens=student_windows(config, corpus),
    logits_fn=lambda x: apply_all(teacher_params, x),
    vocab_size=models.ByteTransformerLM.vocab_size,
  )


def teacher_source(config, workdir: str) -> teachers.TeacherSource:
  """For `python -m mtkd_jax.teachers dump`: trains/restores the teachers in `workdir`."""
  validate_config(config)
  corpus = load_corpus(config)
  params = train_teachers(config, train.Loop.from_config(config, workdir), corpus)
  return _teacher_source(config, build_model(config), corpus, params)


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
    )
    if same:
      return store
  except ValueError:
    pass
  teachers.write_config_store(directory, source, config.store, progress=config.progress)
  return teachers.open_store(directory)


def student_runs(config) -> list[tuple[str, str, int | None, str | None]]:
  """(name, kind, k, tail_mode) of every student, kind in {"labels", "dense", "sparse"}."""
  runs = [("student[labels]", "labels", None, None)] if config.label_student else []
  runs += [("student[dense]", "dense", None, None)] if config.dense_student else []
  sparse_runs = [(k, mode) for k in config.k_values for mode in config.tail_modes]
  return runs + [(f"student[top{k},{mode}]", "sparse", k, mode) for k, mode in sparse_runs]


def _student_step(config, kind, mode, model, optimizer, teacher_apply):
  """The update step of a student: hard labels, dense teachers run in the step, or the store."""
  if kind == "labels":
    return train.make_supervised_step(model.apply, optimizer)
  temps = {"temperatures": tuple(config.temperatures)}
  temps["student_temperature"] = config.student_temperature
  if kind == "dense":
    objective = objectives.mixture(operators.get(config.operator), **temps)
  else:
    objective = objectives.sparse_mixture(sparse.get(config.operator, tail_mode=mode), **temps)
  targets = {"weights": tuple(config.weights), "teacher_apply": teacher_apply}
  return train.make_train_step(model.apply, optimizer, objective=objective, **targets)


def run(config, workdir: str) -> dict:
  """Trains teachers, dumps the store, distils every student; returns the results dict."""
  start = time.time()
  timings: dict[str, float] = {}
  loop = train.Loop.from_config(config, workdir)
  corpus = load_corpus(config)
  model = build_model(config)

  t0 = time.time()
  teacher_params = train_teachers(config, loop, corpus)
  timings["teachers"] = time.time() - t0
  t0 = time.time()
  source = _teacher_source(config, model, corpus, teacher_params)
  store = _open_or_dump_store(config, os.path.join(workdir, "store"), source)
  timings["store"] = time.time() - t0

  evals = {
    f: text_data.eval_windows(corpus.data[f]["test"], config.eval_windows, config.seq_len)
    for f in corpus.families
  }
  scorer = make_scorer(model.apply, loop.mesh, batch=max(config.eval_windows, 1))

  score = lambda params: {f: scorer(params, w) for f, w in evals.items()}
  teacher_lp = [score(p) for p in teacher_params]
  names = [f"teacher[{f}]" for f in corpus.families]
  bpb = {n: bits_per_byte(lp) for n, lp in zip(names, teacher_lp, strict=True)}
  average = {c: float(np.mean([bpb[n][c] for n in names])) for c in bpb[names[0]]}
  log_w = np.log(np.asarray(config.weights, np.float64))
  weighted = lambda f: np.stack([lw + lp[f] for lw, lp in zip(log_w, teacher_lp, strict=True)])
  mixture = {f: np.logaddexp.reduce(weighted(f), 0) for f in corpus.families}
  bpb["teacher mixture"] = bits_per_byte(mixture)

  # Students: the same init and batches, different targets.
  xy = _xy(store.tokens)
  dense_apply = lambda ps, b: jnp.stack([model.apply(p, b["x"]) for p in ps])  # [K, B, L, V]
  fixed = {"num_steps": config.student_steps, "batch_size": config.batch_size}
  fixed.update(seed=config.seed + 100, loop=loop)
  for name, kind, k, mode in student_runs(config):
    t0 = time.time()
    optimizer = common.optimizer(config, config.learning_rate, config.student_steps)
    teacher_apply = {"dense": dense_apply, "sparse": store.teacher_apply()}.get(kind)
    step = _student_step(config, kind, mode, model, optimizer, teacher_apply)
    init = model.init if kind == "labels" else train.init_params(model.init)
    run_name = name.replace("[", "_").replace("]", "").replace(",", "_")  # no glob chars (orbax)
    arrays = {**store.arrays(k), **xy} if kind == "sparse" else xy
    dense_params = list(teacher_params) if kind == "dense" else None
    setup = {"init_params": init, "train_step": step, "optimizer": optimizer, "arrays": arrays}
    state, _ = train.train(run_name, teacher_params=dense_params, **setup, **fixed)
    params = state.params if kind == "labels" else state.params["student"]
    bpb[name] = bits_per_byte(score(params))
    timings[name] = time.time() - t0

  manifest = store.manifest
  return {
    "families": list(corpus.families),
    "train_bytes": corpus.num_bytes("train"),
    "test_bytes": corpus.num_bytes("test"),
    "eval_bytes_per_family": config.eval_windows * config.seq_len,
    "k_values": list(config.k_values),
    "tail_modes": list(config.tail_modes),
    "operator": config.operator,
    "bits_per_byte": bpb,
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


def format_table(results: dict) -> str:
  """Held-out bits per byte of every model, overall and per family."""
  bpb = results["bits_per_byte"]
  rows = [(n, v) for n, v in bpb.items() if n.startswith("teacher[")]
  rows.append(("average teacher", results["average_teacher"]))
  rows += [(n, v) for n, v in bpb.items() if not n.startswith("teacher[")]
  cols = ["all", *results["families"]]
  columns = [("model", f"<{max(len(n) for n, _ in rows) + 1}")] + [(c, ">8.4f") for c in cols]
  lines = [
    f"held-out bits per byte ({results['eval_bytes_per_family']} bytes "
    f"per family; student operator {results['operator']})",
    *tables.lines(columns, [(n, *(v[c] for c in cols)) for n, v in rows], indent="", rule=True),
  ]
  s, mib = results["store"], lambda b: f"{b / 2**20:.1f} MiB"
  lines.append(
    f"store: top-{s['k']} {s['dtype']} of {s['rows']} windows: {mib(s['bytes'])} (dense bf16: "
    f"{mib(s['dense_bf16_bytes'])}); total time {results['total_time_s']:.0f} s"
  )
  return "\n".join(lines)
