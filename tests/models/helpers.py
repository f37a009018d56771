# Copyright 2026 The nl_jax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Shared helpers for the model tests: jitted calls and the causality-by-gradient check."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np


def jitted_forward(model):
  """(tokens, state, segment_ids) -> (logits, state, aux), compiled once per shape."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def fwd(params, tokens, state, segment_ids):
    return nnx.merge(graphdef, params)(tokens, state, segment_ids=segment_ids)

  return lambda tokens, state=None, segment_ids=None: fwd(params, tokens, state, segment_ids)


def causal_gradients(model, tokens, segment_ids=None):
  """g[t] = d sum(logits[:, t] * w) / d embeddings, for every t (one vmapped compile).

  Returns [T, B, T, D] float64 numpy: g[t][:, s] must vanish for s > t.
  """
  graphdef, params = nnx.split(model)
  t = tokens.shape[1]
  w = jax.random.normal(jax.random.key(99), (model.config.vocab_size,))

  @jax.jit
  def all_grads(params):
    m = nnx.merge(graphdef, params)
    state, prep = m.prepare(tokens, segment_ids=segment_ids)
    x = m.embed(prep.tokens)

    def out_at(x, i):
      logits, _, _ = m.forward_embedded(x, state, prep.context)
      return jnp.sum(jnp.take(logits, i, axis=1) * w)

    return jax.vmap(jax.grad(out_at), in_axes=(None, 0))(x, jnp.arange(t))

  return np.asarray(all_grads(params), np.float64)


def assert_causal(g_TxBxTxD):
  t = g_TxBxTxD.shape[0]
  for i in range(t):
    future = g_TxBxTxD[i][:, i + 1:]
    assert np.all(future == 0.0), f"logits at {i} depend on later tokens (max |g| "\
        f"{np.abs(future).max():.3g})"
    assert np.abs(g_TxBxTxD[i][:, i]).max() > 0, f"logits at {i} ignore their own token"


def tiny_loss_and_grads(model, tokens):
  """Jitted next-token cross-entropy and its gradient w.r.t. every parameter."""
  import optax  # pylint: disable=g-import-not-at-top
  graphdef, params = nnx.split(model)

  @jax.jit
  def loss_and_grad(params):
    def loss(params):
      logits, state, _ = nnx.merge(graphdef, params)(tokens)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
      return ce.mean(), state
    return jax.value_and_grad(loss, has_aux=True)(params)

  (value, state), grads = loss_and_grad(params)
  return float(value), state, grads


def cms_run(fn, cfg, params, state, x, reset):
  """((loss, (y, new_state)), (d/d params, d/d x)) of sum(sin(y)) for a CMS path
  ``fn(cfg, params, state, x, reset)`` (cms_scan or a token-loop reference), jitted."""
  def loss(params, x):
    y, new = fn(cfg, params, state, x, reset)[:2]
    return jnp.sum(jnp.sin(y)), (y, new)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
