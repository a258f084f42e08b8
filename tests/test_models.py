"""Tests for mtkd_jax.models: shapes, causality, jit equivalence, registry errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import models


def test_mlp_shapes_and_jit_matches_eager():
  m = models.build("mlp", in_features=64, hidden=(32, 16), num_classes=10)
  params = m.init(jax.random.key(0))
  assert params["hidden_0"]["kernel"].shape == (64, 32)
  assert params["hidden_1"]["kernel"].shape == (32, 16)
  assert params["head"]["kernel"].shape == (16, 10)
  x = jax.random.uniform(jax.random.key(1), (5, 64))
  eager = m.apply(params, x)
  assert eager.shape == (5, 10)
  np.testing.assert_allclose(jax.jit(m.apply)(params, x), eager, rtol=1e-5, atol=1e-6)


def test_mlp_matches_hand_computation():
  m = models.build("mlp", in_features=3, hidden=(4,), num_classes=2)
  p = m.init(jax.random.key(2))
  x = jax.random.normal(jax.random.key(3), (6, 3))
  h = jax.nn.gelu(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
  expected = h @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(m.apply(p, x), expected, rtol=1e-5, atol=1e-6)


def test_init_depends_on_rng():
  m = models.build("mlp", in_features=8, hidden=(4,), num_classes=3)
  a, b = m.init(jax.random.key(0)), m.init(jax.random.key(1))
  assert not np.allclose(a["hidden_0"]["kernel"], b["hidden_0"]["kernel"])


def test_byte_lm_is_causal():
  lm = models.build("byte_lm", depth=2, width=32, num_heads=4, context=16)
  params = lm.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 256)
  logits = jax.jit(lm.apply)(params, tokens)
  assert logits.shape == (2, 12, 256)
  assert np.all(np.isfinite(logits))
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 256)
  logits2 = lm.apply(params, changed)
  # Positions before 7 cannot see token 7; position 7 and later do.
  np.testing.assert_allclose(logits2[:, :7], logits[:, :7], rtol=1e-5, atol=1e-5)
  assert np.abs(logits2[:, 7:] - logits[:, 7:]).max() > 1e-4


def test_unknown_model_name_is_a_one_line_error():
  message = r"unknown model 'resnet'; valid names: \['byte_lm', 'mlp'\]"
  with pytest.raises(ValueError, match=message) as err:
    models.build("resnet")
  assert "\n" not in str(err.value)


def test_attention_width_must_divide_heads():
  with pytest.raises(ValueError, match="num_heads"):
    models.build("byte_lm", depth=1, width=30, num_heads=4, context=8).init(jax.random.key(0))


def test_params_are_float32_string_keyed():
  lm = models.build("byte_lm", depth=1, width=16, num_heads=2, context=8)
  params = lm.init(jax.random.key(0))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  assert all("'" in p for p in paths)  # dict keys are strings (orbax-friendly)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


@pytest.mark.parametrize("chunk", [1, 5, 16, 40])  # 40 > L: one chunk, the unchunked code
def test_query_chunked_attention_matches_full_attention(chunk):
  """Value and every parameter gradient of the chunked LM equal the unchunked one's (float32
  rounding), with L = 23 not a multiple of the chunk; large activations included."""
  kw = dict(depth=2, width=32, num_heads=4, context=23)
  full, chunked = models.build("byte_lm", **kw), models.build("byte_lm", query_chunk=chunk, **kw)
  params = full.init(jax.random.key(4))
  params = jax.tree.map(lambda p: p * 30.0, params)  # scores far from 0: near one-hot softmax
  x = jax.random.randint(jax.random.key(5), (3, 23), 0, 256)
  loss = lambda m: lambda p: jnp.mean(jax.nn.log_softmax(m.apply(p, x))[..., 7] * x)
  (v_full, g_full), (v_chunk, g_chunk) = (
    jax.jit(jax.value_and_grad(loss(m)))(params) for m in (full, chunked)
  )
  np.testing.assert_allclose(v_chunk, v_full, rtol=1e-5)
  # The saturated softmax makes the query/key gradients tiny (down to 1e-21) differences of
  # O(scale) terms: their rounding error is relative to the largest gradient, not their own.
  scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g_full))
  for a, b in zip(jax.tree.leaves(g_chunk), jax.tree.leaves(g_full), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5 * scale)
  z = chunked.apply(params, x)
  assert bool(jnp.isfinite(z).all())


def test_query_chunked_attention_temporaries_are_flat_in_length():
  """Compile only: a training gradient at 4,096 tokens per batch. Unchunked, the [B, H, L, L]
  scores grow with L (tokens·H·L); with 64-query chunks the temporaries stay within 1.2× from
  L = 128 to 1024."""
  tokens, sds = 4096, jax.ShapeDtypeStruct

  def temp(length, chunk):
    m = models.build("byte_lm", depth=1, width=64, num_heads=4, context=length, query_chunk=chunk)
    params = jax.eval_shape(m.init, jax.random.key(0))
    x = sds((tokens // length, length), jnp.int32)
    grad = jax.jit(jax.grad(lambda p, x: m.apply(p, x).mean()))
    return grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes

  assert temp(1024, None) > 3 * temp(128, None)
  assert temp(1024, 64) <= 1.2 * temp(128, 64)


def test_query_chunk_must_be_positive():
  with pytest.raises(ValueError, match="query_chunk"):
    models.build("byte_lm", depth=1, width=8, num_heads=2, context=4, query_chunk=0).init(
      jax.random.key(0)
    )
