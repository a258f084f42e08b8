"""Students trained from the compressed v2 store against students from the uncompressed top-k.

The stdlib_lm experiment's teachers (trained or restored in WORKDIR), their top-k dumped three
ways: format v1 with float32 log-probs (uncompressed; the tail is 1 − Σ p), v2 bf16 and v2 log8
(compressed, explicit tail). One sparse student per store, same initialisation and batches,
held-out bits per byte of each:

  python benchmarks/store_students.py --workdir=/tmp/store_students [--small] \\
      [--set teacher.steps=100 --set student_steps=100 ...]
"""

import argparse
import json
import os
import time

from mtkd_jax import configs, teachers, train
from mtkd_jax.experiments import common, stdlib_lm


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--small", action="store_true")
  parser.add_argument("--set", action="append", default=[], help="config field=value")
  parser.add_argument("--mode", default="uniform", help="tail mode of the students")
  args = parser.parse_args()
  config = configs.load("experiments/configs/stdlib_lm.py" + (":small" if args.small else ""))
  for item in args.set:
    key, value = item.split("=")
    target = config
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = type(target[last])(value)
  config.progress = False
  start = time.time()
  loop = train.Loop.from_config(config, args.workdir)
  corpus = stdlib_lm.load_corpus(config)
  model = stdlib_lm.build_model(config)
  teacher_params = stdlib_lm.train_teachers(config, loop, corpus)
  teacher_model = stdlib_lm.build_teacher_model(config)
  source = stdlib_lm._teacher_source(config, teacher_model, corpus, teacher_params)
  evals = {
    f: stdlib_lm.text_data.eval_windows(corpus.data[f]["test"], config.eval_windows, config.seq_len)
    for f in corpus.families
  }
  scorer = stdlib_lm.make_scorer(model.apply, loop.mesh, batch=max(config.eval_windows, 1))
  k, t_g = config.store.k, config.store.generation_temperature
  results = {"config": {"k": k, "student_steps": config.student_steps, "mode": args.mode}}
  for name, dtype in [("v1 float32", "float32"), ("v2 bfloat16", "bfloat16"), ("v2 log8", "log8")]:
    directory = os.path.join(args.workdir, "store_" + name.replace(" ", "_"))
    if name.startswith("v1"):
      teachers.write_store_v1(directory, source, k=k, generation_temperatures=t_g, dtype=dtype)
    else:
      teachers.write_store(directory, source, k=k, generation_temperatures=t_g, dtype=dtype)
    store = teachers.open_store(directory)
    optimizer = common.optimizer(config, config.learning_rate, config.student_steps)
    run = {"kind": "sparse", "teachers": range(len(store.names)), "operator": config.operator}
    run.update(divergence="forward_kl", label_weight=0.0, adaptive=None, tail_mode=args.mode)
    step = stdlib_lm._student_step(config, run, model, optimizer, store.teacher_apply())
    state, _ = train.train(
      "student_" + name.replace(" ", "_"),
      init_params=train.init_params(model.init),
      train_step=step,
      optimizer=optimizer,
      arrays={**store.arrays(k), **stdlib_lm._xy(store.tokens)},
      num_steps=config.student_steps,
      batch_size=config.batch_size,
      seed=config.seed + 100,
      loop=loop,
    )
    params = state.params["student"]
    bpb = stdlib_lm.bits_per_byte({f: scorer(params, w) for f, w in evals.items()})
    results[name] = bpb["all"]
    print(f"{name:<12} held-out bits/byte {bpb['all']:.4f}", flush=True)
  for name in ("v2 bfloat16", "v2 log8"):
    results[f"{name} - v1 float32"] = results[name] - results["v1 float32"]
  results["time_s"] = round(time.time() - start, 1)
  print(json.dumps(results, indent=1))
  with open(os.path.join(args.workdir, "store_students.json"), "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
