"""Small Flax NNX models: an MLP classifier and a byte-level causal Transformer LM.

The trainer is functional: it sees a model only as `(init_params, apply)` where
`init_params(rng) -> params` (a nested dict of arrays with string keys, ready for orbax and for
the partition rules of `mtkd_jax.sharding`) and `apply(params, x) -> logits`. `build(name, ...)`
turns a registry name and its keyword arguments into that pair.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtkd_jax import registry

Params = Any  # nested dict of arrays


class MLPClassifier(nnx.Module):
  """Multi-layer perceptron with GELU activations.

  Layers are named `hidden_0 .. hidden_{n-1}` and `head` so that partition rules can match
  them by name (`hidden_0/kernel`, `head/kernel`, ...).

  >>> model = MLPClassifier(64, (32,), 10, rngs=nnx.Rngs(0))
  >>> model(jnp.ones((2, 64))).shape
  (2, 10)
  """

  def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int, *, rngs):
    self.num_hidden = len(hidden)
    width = in_features
    for i, h in enumerate(hidden):
      setattr(self, f"hidden_{i}", nnx.Linear(width, h, rngs=rngs))
      width = h
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def features(self, x):  # [B, D] -> [B, d], the input of the head
    for i in range(self.num_hidden):
      x = jax.nn.gelu(getattr(self, f"hidden_{i}")(x))
    return x

  def __call__(self, x):  # [B, D] -> [B, C]
    return self.head(self.features(x))


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention (no dropout, no KV cache).

  `query_chunk=None` builds the [B, H, L, L] scores at once. `query_chunk=C` attends C queries at
  a time (`lax.map`, each chunk rematerialised in the backward pass), so the scores alive at
  once are [B, H, C, L]: at a fixed number of tokens B·L that is flat in L, where the whole
  [B, H, L, L] grows as tokens·H·L. Same values (each row's softmax is the same), another
  float rounding of the matmuls.
  """

  def __init__(self, width: int, num_heads: int, *, rngs, query_chunk: int | None = None):
    if width % num_heads:
      raise ValueError(f"width={width} must be divisible by num_heads={num_heads}")
    if query_chunk is not None and query_chunk < 1:
      raise ValueError(f"query_chunk must be a positive int or None, got {query_chunk}")
    self.num_heads = num_heads
    self.query_chunk = query_chunk
    self.query = nnx.Linear(width, width, use_bias=False, rngs=rngs)
    self.key = nnx.Linear(width, width, use_bias=False, rngs=rngs)
    self.value = nnx.Linear(width, width, use_bias=False, rngs=rngs)
    self.out = nnx.Linear(width, width, use_bias=False, rngs=rngs)

  def __call__(self, x):  # [B, L, D] -> [B, L, D]
    b, length, d = x.shape
    h = self.num_heads
    split = lambda t: t.reshape(b, length, h, d // h)  # [B, L, H, Dh]
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    chunk = self.query_chunk
    if chunk is None or chunk >= length:
      y = _attend(q, k, v, jnp.arange(length))
    else:  # queries padded to whole chunks; padded rows are computed and dropped
      n = -(-length // chunk)
      q = jnp.pad(q, ((0, 0), (0, n * chunk - length), (0, 0), (0, 0)))
      q = jnp.moveaxis(q.reshape(b, n, chunk, h, d // h), 1, 0)  # [n, B, C, H, Dh]
      rows = jnp.arange(n * chunk).reshape(n, chunk)
      attend = jax.checkpoint(lambda args: _attend(args[0], k, v, args[1]))
      y = jnp.moveaxis(jax.lax.map(attend, (q, rows)), 0, 1)  # [B, n, C, H, Dh]
      y = y.reshape(b, n * chunk, h, d // h)[:, :length]
    return self.out(y.reshape(b, length, d))


def _attend(q, k, v, rows):
  """Causal attention of queries `q` [B, C, H, Dh] at positions `rows` [C] over all keys and
  values [B, L, H, Dh]: [B, C, H, Dh]."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1])  # [B, H, C, L]
  causal = rows[:, None] >= jnp.arange(k.shape[1])  # [C, L]
  scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


class Block(nnx.Module):
  """Pre-LayerNorm Transformer block: x + attn(LN x); x + MLP(LN x)."""

  def __init__(self, width: int, num_heads: int, mlp_ratio: int, *, rngs, query_chunk=None):
    self.ln_attn = nnx.LayerNorm(width, rngs=rngs)
    self.attn = CausalSelfAttention(width, num_heads, rngs=rngs, query_chunk=query_chunk)
    self.ln_mlp = nnx.LayerNorm(width, rngs=rngs)
    self.mlp_up = nnx.Linear(width, mlp_ratio * width, rngs=rngs)
    self.mlp_down = nnx.Linear(mlp_ratio * width, width, rngs=rngs)

  def __call__(self, x):  # [B, L, D]
    x = x + self.attn(self.ln_attn(x))
    return x + self.mlp_down(jax.nn.gelu(self.mlp_up(self.ln_mlp(x))))


class ByteTransformerLM(nnx.Module):
  """Byte-level causal Transformer language model over V = 256 tokens.

  Input int tokens [B, L] with L <= context; output next-byte logits [B, L, 256]
  (`vocab_size` other than 256: a token LM of that vocabulary, e.g. for memory benchmarks).
  `query_chunk`: attend that many queries at a time (`CausalSelfAttention`), for long L.

  >>> lm = ByteTransformerLM(depth=1, width=32, num_heads=2, context=16, rngs=nnx.Rngs(0))
  >>> lm(jnp.zeros((2, 8), jnp.int32)).shape
  (2, 8, 256)
  """

  vocab_size = 256  # bytes (the default; an instance may have another)

  def __init__(
    self,
    *,
    depth: int,
    width: int,
    num_heads: int,
    context: int,
    rngs,
    mlp_ratio: int = 4,
    vocab_size: int = 256,
    query_chunk: int | None = None,
  ):
    self.vocab_size = vocab_size
    self.context = context
    self.depth = depth
    self.embed = nnx.Embed(self.vocab_size, width, rngs=rngs)
    self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, width)))
    for i in range(depth):
      block = Block(width, num_heads, mlp_ratio, rngs=rngs, query_chunk=query_chunk)
      setattr(self, f"block_{i}", block)
    self.ln_final = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, self.vocab_size, rngs=rngs)

  def features(self, tokens):  # [B, L] int -> [B, L, D], the input of the head
    length = tokens.shape[-1]
    x = self.embed(tokens) + self.pos_embed[...][:length]  # [B, L, D]
    for i in range(self.depth):
      x = getattr(self, f"block_{i}")(x)
    return self.ln_final(x)

  def __call__(self, tokens):  # [B, L] int -> [B, L, V]
    return self.head(self.features(tokens))


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
  """A model seen as pure functions of a params dict.

  Attributes:
    init: `init(rng) -> params`, a nested dict of arrays with string keys.
    apply: `apply(params, x) -> logits`, i.e. `h @ kernel + bias` with `h = features(params, x)`.
    features: `features(params, x) -> h [..., d]`, the hidden states the output head reads.
    head: `head(params) -> (kernel [d, V], bias [V] or None)`, the output projection. With
      `features`, a distillation step can fuse the head with the loss
      (`objectives.mixture_from_hidden`) and never build the [..., V] logits.
  """

  init: Callable[[jax.Array], Params]
  apply: Callable[[Params, jax.Array], jax.Array]
  features: Callable[[Params, jax.Array], jax.Array] | None = None
  head: Callable[[Params], tuple] | None = None


def build(spec: str, **kwargs) -> FunctionalModel:
  """Returns the pure `(init, apply)` pair of the registered model `spec` ("mlp", "byte_lm").

  Args:
    spec: "mlp" (kwargs: in_features, hidden, num_classes) or "byte_lm" (kwargs: depth,
      width, num_heads, context[, mlp_ratio, vocab_size, query_chunk]); a spec may carry some
      of them, e.g.
      "mlp(hidden=(64,))".
    **kwargs: constructor arguments of the model.

  Returns:
    A `FunctionalModel`. Nothing is allocated: the graph is built under `nnx.eval_shape`.

  >>> m = build("mlp", in_features=64, hidden=(16,), num_classes=10)
  >>> params = m.init(jax.random.key(0))
  >>> m.apply(params, jnp.ones((3, 64))).shape
  (3, 10)
  """
  return registry.get("model", spec, **kwargs)


def _functional(cls: type[nnx.Module], **kwargs) -> FunctionalModel:
  """The pure `(init, apply)` pair of the NNX module `cls(**kwargs)`."""
  make = lambda rng: cls(**kwargs, rngs=nnx.Rngs(params=rng))
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: make(jax.random.key(0))))

  def init(rng):
    return nnx.to_pure_dict(nnx.split(make(rng))[1])

  def module(params):
    state = jax.tree.map(lambda v: v, abstract_state)  # fresh container, filled below
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)

  def head(params):  # the head is a `head` nnx.Linear in every registered model
    return params["head"]["kernel"], params["head"].get("bias")

  return FunctionalModel(
    init=init,
    apply=lambda params, x: module(params)(x),
    features=lambda params, x: module(params).features(x),
    head=head,
  )


# Registry: configs name a model; the trainer gets (init, apply).
registry.register("model", "mlp", factory=True)(functools.partial(_functional, MLPClassifier))
registry.register("model", "byte_lm", factory=True)(
  functools.partial(_functional, ByteTransformerLM)
)
