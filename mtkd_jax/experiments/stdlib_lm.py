"""Sparse / offline teachers on a byte-level LM over the Python standard library (SPEC §7).

Three byte Transformer teachers specialise on three families of the library's `.py` files; their
top-k outputs are dumped once to an offline store (`mtkd_jax.teachers`); students are distilled
from the dense teachers and from the stored top-k for several k and tail modes
(`mtkd_jax.sparse`). Every model is scored in held-out bits per byte. Config:
`experiments/configs/stdlib_lm.py`; command and expected result in its docstring.
"""

from __future__ import annotations

import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtkd_jax import losses, models, operators, sparse, teachers, text_data, train
from mtkd_jax import sharding as sharding_lib

# Size presets: a preset's fields override the config's (tests and notebooks use "small").
SIZES = {
  "full": {},
  "small": {
    "seq_len": 32,
    "eval_windows": 16,
    "depth": 1,
    "width": 32,
    "num_heads": 2,
    "teacher_steps": 12,
    "student_steps": 8,
    "batch_size": 8,
    "warmup_steps": 2,
    "log_every": 4,
    "k_values": (4, 16),
    "store": {"k": 16, "windows": 48, "batch_size": 48},
  },
}


def sized(config) -> ml_collections.ConfigDict:
  """A copy of `config` with its size preset applied."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  for key, value in SIZES[config.size].items():
    if isinstance(value, dict):
      cfg[key].update(value)
    else:
      cfg[key] = value
  return cfg


def validate_config(config) -> None:
  """Raises ValueError("config.<field>: ...") for the first invalid field."""
  if config.size not in SIZES:
    raise ValueError(f"config.size: must be one of {sorted(SIZES)}, got {config.size!r}")
  cfg = sized(config)
  num_teachers = len(cfg.families)
  if num_teachers < 1:
    raise ValueError("config.families: need at least one family")
  for field in ("temperatures", "weights"):
    if len(cfg[field]) != num_teachers:
      raise ValueError(f"config.{field}: need one per family (K={num_teachers}), got {cfg[field]}")
  try:
    operators.check_weights(cfg.weights, (num_teachers, 1))
  except ValueError as e:
    raise ValueError(f"config.weights: {e}") from None
  if cfg.operator not in sparse.OPERATORS:
    raise ValueError(f"config.operator: must be one of {sorted(sparse.OPERATORS)}")
  for mode in cfg.tail_modes:
    if mode not in sparse.TAIL_MODES:
      raise ValueError(f"config.tail_modes: {mode!r} is not one of {sparse.TAIL_MODES}")
  if not 1 <= cfg.store.k <= models.ByteTransformerLM.vocab_size:
    raise ValueError(f"config.store.k: must be in [1, 256], got {cfg.store.k}")
  if any(not 1 <= k <= cfg.store.k for k in cfg.k_values):
    raise ValueError(f"config.k_values: must be in [1, store.k={cfg.store.k}], got {cfg.k_values}")
  if cfg.store.dtype not in ("bfloat16", "float16"):
    raise ValueError(f"config.store.dtype: 'bfloat16' or 'float16', got {cfg.store.dtype!r}")
  if cfg.store.windows < cfg.batch_size or cfg.store.windows % num_teachers:
    raise ValueError(
      f"config.store.windows: need a multiple of K={num_teachers} and ≥ batch_size, "
      f"got {cfg.store.windows}"
    )
  if cfg.width % cfg.num_heads:
    raise ValueError(f"config.num_heads: {cfg.num_heads} does not divide width {cfg.width}")


# ---------------------------------------------------------------------------------------------
# Data, models, teachers.
# ---------------------------------------------------------------------------------------------
def load_corpus(cfg) -> text_data.Corpus:
  families = tuple((name, tuple(members)) for name, members in cfg.families)
  return text_data.load_stdlib(
    families, test_fraction=cfg.test_fraction, exclude=tuple(cfg.exclude)
  )


def build_model(cfg) -> models.FunctionalModel:
  return models.build(
    "byte_lm", depth=cfg.depth, width=cfg.width, num_heads=cfg.num_heads, context=cfg.seq_len
  )


def _xy(windows: np.ndarray) -> dict[str, np.ndarray]:
  w = np.asarray(windows).astype(np.int32)
  return {"x": w[:, :-1], "y": w[:, 1:]}


class _Progress:
  """One tqdm bar over all runs (stderr), fed by train.train's `report`."""

  def __init__(self, total: int, enabled: bool):
    self.offset, self.bar = 0, None
    if enabled and jax.process_index() == 0:
      import tqdm

      self.bar = tqdm.tqdm(total=total, file=sys.stderr, dynamic_ncols=True)

  def reporter(self, name: str):
    def report(step, metrics):
      if self.bar is not None:
        self.bar.n = self.offset + step
        self.bar.set_description(name)
        self.bar.set_postfix_str(f"loss={metrics['loss']:.4f}", refresh=True)

    return report

  def done(self, steps: int):
    self.offset += steps

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _context(cfg):
  mesh = sharding_lib.make_mesh(cfg.mesh.data, cfg.mesh.model)
  rules = tuple((r, tuple(s)) for r, s in cfg.partition_rules)
  return mesh, rules


def _fit(
  cfg,
  workdir,
  mesh,
  rules,
  progress,
  *,
  name,
  model,
  train_step,
  optimizer,
  arrays,
  num_steps,
  seed,
  teacher_params=None,
):
  state, _ = train.train(
    name=name,
    init_params=model.init,
    train_step=train_step,
    optimizer=optimizer,
    arrays=arrays,
    mesh=mesh,
    partition_rules=rules,
    num_steps=num_steps,
    batch_size=cfg.batch_size,
    seed=seed,
    checkpoint_dir=os.path.join(workdir, "checkpoints", name),
    checkpoint_every=cfg.checkpoint_every,
    keep_checkpoints=cfg.keep_checkpoints,
    log_every=cfg.log_every,
    teacher_params=teacher_params,
    report=progress.reporter(name) if progress is not None else None,
  )
  if progress is not None:
    progress.done(num_steps)
  return state.params


def train_teachers(cfg, workdir, corpus, mesh, rules, progress=None) -> list:
  """Trains (or restores from `workdir`) one teacher per family; returns their params."""
  model = build_model(cfg)
  optimizer = train.make_optimizer(
    cfg.teacher_learning_rate,
    cfg.teacher_steps,
    weight_decay=cfg.weight_decay,
    warmup_steps=cfg.warmup_steps,
  )
  step = train.make_supervised_step(model.apply, optimizer)  # one step: compiled once for all
  params = []
  for j, family in enumerate(corpus.families):
    windows = text_data.sample_windows(
      corpus.data[family]["train"],
      cfg.teacher_steps * cfg.batch_size,
      cfg.seq_len,
      seed=(cfg.data_seed, j),
    )
    params.append(
      _fit(
        cfg,
        workdir,
        mesh,
        rules,
        progress,
        name=f"teacher_{family}",
        model=model,
        train_step=step,
        optimizer=optimizer,
        arrays=_xy(windows),
        num_steps=cfg.teacher_steps,
        seed=cfg.seed + j,
      )
    )
  return params


def student_windows(cfg, corpus) -> np.ndarray:
  """The student's training windows: an equal share from each family, shuffled. uint8."""
  per_family = cfg.store.windows // len(corpus.families)
  parts = [
    text_data.sample_windows(
      corpus.data[f]["train"], per_family, cfg.seq_len, seed=(cfg.data_seed, 1000 + j)
    )
    for j, f in enumerate(corpus.families)
  ]
  windows = np.concatenate(parts)
  return windows[np.random.default_rng((cfg.data_seed, 2000)).permutation(len(windows))]


def _stacked_logits_fn(model, teacher_params):
  apply_all = jax.jit(lambda ps, x: jnp.stack([model.apply(p, x) for p in ps]))  # [K, B, L, V]
  return lambda x: apply_all(teacher_params, x)


def teacher_source(config, workdir: str) -> teachers.TeacherSource:
  """For `python -m mtkd_jax.teachers dump`: trains/restores the teachers in `workdir`."""
  validate_config(config)
  cfg = sized(config)
  corpus = load_corpus(cfg)
  mesh, rules = _context(cfg)
  params = train_teachers(cfg, workdir, corpus, mesh, rules)
  return teachers.TeacherSource(
    names=corpus.families,
    tokens=student_windows(cfg, corpus),
    logits_fn=_stacked_logits_fn(build_model(cfg), params),
    vocab_size=models.ByteTransformerLM.vocab_size,
  )


# ---------------------------------------------------------------------------------------------
# Evaluation: held-out bits per byte.
# ---------------------------------------------------------------------------------------------
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
  out["all"] = float(
    -np.concatenate([lp.ravel() for lp in log_probs_by_family.values()]).mean() / math.log(2)
  )
  return out


# ---------------------------------------------------------------------------------------------
# The experiment.
# ---------------------------------------------------------------------------------------------
def _open_or_dump_store(cfg, directory, source) -> teachers.TeacherStore:
  """Reuses a complete, verified store with the same settings; otherwise dumps it again.

  The dump is single-process: a multi-process run must find the store already written (by
  `python -m mtkd_jax.teachers dump ... --out=<workdir>/store` or a one-process run); each
  process then reads only its own rows of every batch.
  """
  if jax.process_count() > 1:
    return teachers.open_store(directory)
  try:
    store = teachers.open_store(directory)
    m = store.manifest
    same = (
      m["k"] == cfg.store.k
      and m["num_rows"] == cfg.store.windows
      and m["teachers"][0]["log_probs"]["dtype"] == cfg.store.dtype
      and np.allclose(store.generation_temperatures, cfg.store.generation_temperature)
      and m["row_shape"] == [cfg.seq_len]
    )
    if same:
      return store
  except ValueError:
    pass
  teachers.write_store(
    directory,
    source,
    k=cfg.store.k,
    dtype=cfg.store.dtype,
    generation_temperatures=cfg.store.generation_temperature,
    batch_size=cfg.store.batch_size,
    progress=cfg.progress,
  )
  return teachers.open_store(directory)


def student_runs(cfg) -> list[tuple[str, str, int | None, str | None]]:
  """(name, kind, k, tail_mode) of every student, kind in {"labels", "dense", "sparse"}."""
  runs = [("student[labels]", "labels", None, None)] if cfg.label_student else []
  if cfg.dense_student:
    runs.append(("student[dense]", "dense", None, None))
  runs += [
    (f"student[top{k},{mode}]", "sparse", k, mode) for k in cfg.k_values for mode in cfg.tail_modes
  ]
  return runs


def run(config, workdir: str) -> dict:
  """Trains teachers, dumps the store, distils every student; returns the results dict."""
  validate_config(config)
  cfg = sized(config)
  train.check_workdir(workdir, config)
  start = time.time()
  timings: dict[str, float] = {}
  corpus = load_corpus(cfg)
  mesh, rules = _context(cfg)
  model = build_model(cfg)
  runs = student_runs(cfg)
  progress = _Progress(
    len(cfg.families) * cfg.teacher_steps + len(runs) * cfg.student_steps, cfg.progress
  )

  # ---- Teachers and the offline store --------------------------------------------------------
  t0 = time.time()
  teacher_params = train_teachers(cfg, workdir, corpus, mesh, rules, progress)
  timings["teachers"] = time.time() - t0
  t0 = time.time()
  source = teachers.TeacherSource(
    corpus.families, student_windows(cfg, corpus), _stacked_logits_fn(model, teacher_params), 256
  )
  store = _open_or_dump_store(cfg, os.path.join(workdir, "store"), source)
  timings["store"] = time.time() - t0

  # ---- Held-out evaluation of the teachers ------------------------------------------------
  evals = {
    f: text_data.eval_windows(corpus.data[f]["test"], cfg.eval_windows, cfg.seq_len)
    for f in corpus.families
  }

  scorer = make_scorer(model.apply, mesh, batch=max(cfg.eval_windows, 1))

  def score(params):
    return {f: scorer(params, w) for f, w in evals.items()}

  bpb: dict[str, dict[str, float]] = {}
  teacher_lp = [score(p) for p in teacher_params]
  for f, lp in zip(corpus.families, teacher_lp, strict=True):
    bpb[f"teacher[{f}]"] = bits_per_byte(lp)
  names = [f"teacher[{f}]" for f in corpus.families]
  average = {c: float(np.mean([bpb[n][c] for n in names])) for c in bpb[names[0]]}
  log_w = np.log(np.asarray(cfg.weights, np.float64))
  mixture = {
    f: np.logaddexp.reduce(
      np.stack([lw + lp[f] for lw, lp in zip(log_w, teacher_lp, strict=True)]), 0
    )
    for f in corpus.families
  }
  bpb["teacher mixture"] = bits_per_byte(mixture)

  # ---- Students: same init, same batches, different targets ---------------------------------
  student_seed = cfg.seed + 100
  temps, weights = tuple(cfg.temperatures), tuple(cfg.weights)
  for name, kind, k, mode in runs:
    t0 = time.time()
    optimizer = train.make_optimizer(
      cfg.learning_rate,
      cfg.student_steps,
      weight_decay=cfg.weight_decay,
      warmup_steps=cfg.warmup_steps,
    )
    xy = _xy(store.tokens)
    kw = dict(temperatures=temps, weights=weights, student_temperature=cfg.student_temperature)
    teacher_args = None
    if kind == "labels":
      step, arrays = train.make_supervised_step(model.apply, optimizer), xy
    elif kind == "dense":
      step = train.make_train_step(
        model.apply,
        optimizer,
        operator=operators.get(cfg.operator),
        loss=losses.mixture_kd,
        teacher_apply=lambda ps, b: jnp.stack([model.apply(p, b["x"]) for p in ps]),
        **kw,
      )
      arrays, teacher_args = xy, list(teacher_params)
    else:
      step = train.make_train_step(
        model.apply,
        optimizer,
        operator=sparse.get(cfg.operator, tail_mode=mode),
        loss=sparse.sparse_kd_loss,
        teacher_apply=store.teacher_apply(),
        metrics_fn=sparse.distill_metrics,
        **kw,
      )
      arrays = {**store.arrays(k), **xy}
    dirname = name.replace("[", "_").replace("]", "").replace(",", "_")
    params = _fit(
      cfg,
      workdir,
      mesh,
      rules,
      progress,
      name=dirname,
      model=model,
      train_step=step,
      optimizer=optimizer,
      arrays=arrays,
      num_steps=cfg.student_steps,
      seed=student_seed,
      teacher_params=teacher_args,
    )
    bpb[name] = bits_per_byte(score(params))
    timings[name] = time.time() - t0
  progress.close()

  manifest = store.manifest
  results = {
    "size": cfg.size,
    "families": list(corpus.families),
    "train_bytes": corpus.num_bytes("train"),
    "test_bytes": corpus.num_bytes("test"),
    "eval_bytes_per_family": cfg.eval_windows * cfg.seq_len,
    "k_values": list(cfg.k_values),
    "tail_modes": list(cfg.tail_modes),
    "operator": cfg.operator,
    "bits_per_byte": bpb,
    "average_teacher": average,
    "store": {
      "k": manifest["k"],
      "dtype": cfg.store.dtype,
      "rows": manifest["num_rows"],
      "bytes": sum(t["bytes"] for t in manifest["teachers"]),
      "dense_bf16_bytes": len(manifest["teachers"]) * manifest["num_rows"] * cfg.seq_len * 256 * 2,
    },
    "timings_s": {k: round(v, 1) for k, v in timings.items()},
    "total_time_s": round(time.time() - start, 1),
  }
  if jax.process_index() == 0:
    make_figure(results, os.path.join(workdir, "sparse_teachers.png"))
  return results


# ---------------------------------------------------------------------------------------------
# Table and figure.
# ---------------------------------------------------------------------------------------------
def format_table(results: dict) -> str:
  """Held-out bits per byte of every model, overall and per family."""
  fams = results["families"]
  cols = ["all", *fams]
  rows = [(n, v) for n, v in results["bits_per_byte"].items() if n.startswith("teacher[")]
  rows.append(("average teacher", results["average_teacher"]))
  rows += [(n, v) for n, v in results["bits_per_byte"].items() if not n.startswith("teacher[")]
  width = max(len(n) for n, _ in rows) + 2
  lines = [
    f"held-out bits per byte ({results['size']}; {results['eval_bytes_per_family']} bytes "
    f"per family; student operator {results['operator']})",
    f"{'model':<{width}}" + "".join(f"{c:>9}" for c in cols),
  ]
  lines.append("-" * len(lines[-1]))
  for name, v in rows:
    lines.append(f"{name:<{width}}" + "".join(f"{v[c]:>9.4f}" for c in cols))
  s = results["store"]
  mib = lambda b: f"{b / 2**20:.1f} MiB"
  lines.append(
    f"store: top-{s['k']} {s['dtype']} of {s['rows']} windows: {mib(s['bytes'])} (dense bf16: "
    f"{mib(s['dense_bf16_bytes'])}); total time {results['total_time_s']:.0f} s"
  )
  return "\n".join(lines)


def make_figure(results: dict, png_path: str) -> None:
  """Two panels: held-out bits/byte vs k per tail mode (with dense/teacher references), and
  per-family bits/byte of each teacher, the average teacher and the dense student."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  bpb, ks = results["bits_per_byte"], results["k_values"]
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
  markers = {"drop": "v", "uniform": "o", "bucket": "s"}
  for mode in results["tail_modes"]:
    ys = [bpb[f"student[top{k},{mode}]"]["all"] for k in ks]
    ax.plot(ks, ys, marker=markers.get(mode, "o"), label=f"top-k student, tail={mode}")
  refs = [
    ("student[dense]", "dense-teacher student", "k"),
    ("student[labels]", "hard-label student", "0.5"),
    ("teacher mixture", "teacher mixture (linear)", "C3"),
  ]
  for key, label, color in refs:
    if key in bpb:
      ax.axhline(bpb[key]["all"], color=color, ls="--", lw=1, label=label)
  ax.axhline(results["average_teacher"]["all"], color="C4", ls=":", lw=1.5, label="average teacher")
  ax.set_xscale("log", base=2)
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.set_xlabel("stored top-k per teacher (V = 256)")
  ax.set_ylabel("held-out bits per byte (all families)")
  ax.set_title("Students from sparse teachers")
  ax.legend(fontsize=7.5, loc="best")
  ax.grid(alpha=0.3)

  fams = results["families"]
  models_ = [n for n in bpb if n.startswith("teacher[")] + ["average teacher"]
  models_ += [n for n in ("student[dense]",) if n in bpb]
  width = 0.8 / len(models_)
  for i, name in enumerate(models_):
    vals = results["average_teacher"] if name == "average teacher" else bpb[name]
    bx.bar(np.arange(len(fams)) + i * width, [vals[f] for f in fams], width, label=name)
  bx.set_xticks(np.arange(len(fams)) + width * (len(models_) - 1) / 2, fams)
  bx.set_ylabel("held-out bits per byte")
  bx.set_title("Specialised teachers, per family")
  lo = min(min(bpb[n][f] for f in fams) for n in models_ if n in bpb)
  bx.set_ylim(lo * 0.9, None)
  bx.legend(fontsize=7.5)
  bx.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
