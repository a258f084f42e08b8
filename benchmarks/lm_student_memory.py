"""Compiled temporaries of one LM student step: logits path against the fused projection.

For sequence lengths L at a fixed number of tokens per batch (B = tokens / L), compiles (never
runs) the full distillation step of a Transformer LM student with two online teachers and
reports `memory_analysis().temp_size_in_bytes`:

  logits  `objectives.mixture(operators.linear)`: student and teacher logits [B, L, V] built
  fused   `objectives.mixture_from_hidden("linear")`: hidden states and heads into
          `fused_linear_kd_loss`, token chunks of at most 64 MiB of [C, V] arrays
  chunked the fused step with query-chunked attention (`query_chunk`, 128 queries at a time)
          in the student and the teachers

At fixed tokens the logits are the same size at every L; what grows with L is the models' own
attention when it materialises [B, H, L, L] scores (B·H·L² = tokens·H·L; the last column: one
such array); with query chunks only [B, H, C, L] are alive at once (tokens·H·C).

  python benchmarks/lm_student_memory.py                 # V = 256 (bytes) and V = 32768
  python benchmarks/lm_student_memory.py --vocab=32768 --lengths=128,512,2048
"""

import argparse
import platform

import jax
import jax.numpy as jnp
import optax

from mtkd_jax import models, objectives, operators, train

MiB = 2**20


def _step_bytes(path, *, length, tokens, vocab, width, depth, teacher_width, query_chunk=None):
  lm = lambda w: models.build(
    "byte_lm",
    depth=depth,
    width=w,
    num_heads=4,
    context=length,
    vocab_size=vocab,
    query_chunk=query_chunk,
  )
  student, teachers = lm(width), [lm(teacher_width), lm(teacher_width)]
  b = tokens // length
  batch = {
    "x": jax.ShapeDtypeStruct((b, length), jnp.int32),
    "y": jax.ShapeDtypeStruct((b, length), jnp.int32),
  }
  if path == "logits":
    objective = objectives.mixture(operators.linear, temperatures=[1.0, 1.0])
    teacher_apply = lambda tp, x: jnp.stack(
      [t.apply(p, x["x"]) for t, p in zip(teachers, tp, strict=True)]
    )
  else:
    objective = objectives.mixture_from_hidden("linear", temperatures=[1.0, 1.0])
    teacher_apply = lambda tp, x: [
      (t.features(p, x["x"]), *t.head(p)) for t, p in zip(teachers, tp, strict=True)
    ]
  optimizer = optax.adamw(1e-3)
  step = train.make_train_step(
    student if path == "fused" else student.apply,
    optimizer,
    objective=objective,
    weights=[0.5, 0.5],
    teacher_apply=teacher_apply,
  )
  params = jax.eval_shape(train.init_params(student.init), jax.random.key(0))
  state = train.TrainState(
    jax.ShapeDtypeStruct((), jnp.int32), params, jax.eval_shape(optimizer.init, params)
  )
  t_params = [jax.eval_shape(t.init, jax.random.key(1)) for t in teachers]
  compiled = jax.jit(step).lower(state, batch, t_params).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="128,512,2048")
  parser.add_argument("--vocab", default="256,32768", help="comma-separated vocabulary sizes")
  parser.add_argument("--tokens", type=int, default=8192, help="tokens per batch (B·L)")
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--teacher_width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--query_chunk", type=int, default=128, help="queries per attention chunk")
  args = parser.parse_args()
  print(f"# {platform.node()} jax {jax.__version__} {jax.devices()[0].platform}; compile only")
  print(
    f"# student width {args.width}, teachers 2 x width {args.teacher_width}, depth {args.depth}, "
    f"{args.tokens} tokens per batch"
  )
  first_length = args.lengths.split(",")[0]
  print(
    "| V | L | B | logits path MiB | fused MiB | fused / logits | fused vs L="
    f"{first_length} | chunked MiB | chunked vs L={first_length} "
    "| one [B, 4, L, L] f32 attention array MiB |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|")
  for vocab in map(int, args.vocab.split(",")):
    first = first_chunked = None
    for length in map(int, args.lengths.split(",")):
      kw = dict(
        length=length,
        tokens=args.tokens,
        vocab=vocab,
        width=args.width,
        depth=args.depth,
        teacher_width=args.teacher_width,
      )
      logits, fused = _step_bytes("logits", **kw), _step_bytes("fused", **kw)
      chunked = _step_bytes("fused", **kw, query_chunk=args.query_chunk)
      first, first_chunked = first or fused, first_chunked or chunked
      print(
        f"| {vocab} | {length} | {args.tokens // length} | {logits / MiB:,.1f} | "
        f"{fused / MiB:,.1f} | {fused / logits:.3f} | {fused / first:.2f}x | "
        f"{chunked / MiB:,.1f} | {chunked / first_chunked:.2f}x | "
        f"{args.tokens * 4 * length * 4 / MiB:,.0f} |",
        flush=True,
      )


if __name__ == "__main__":
  main()
