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
"""Decoding and memorising with the carried memory state.

* Memory models without attention (Titans, Hope): the prompt is processed in one call, then each
  new token is fed back one at a time with the carried state (one jitted per-token step,
  compiled once), so the memories keep learning from the text as it is produced.
* Models with softmax attention (TransformerPP, HopeAttention): attention keeps no KV cache
  and sees only the current call, so every step re-runs the model on a fixed buffer of
  prompt + num_steps tokens from the starting memory state (compiled once; causality makes
  the not-yet-written tail irrelevant) and reads the logits at the current position; at the
  end, memories (HopeAttention's CMS) absorb the finished text once. Cost grows as
  (P + N)^2 per step: fine for tests and demos, not for serving.

The returned memory state covers the prompt and every generated token, so passing it to the
next call continues the stream after the last generated token.
"""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np


def _check_prompt(tokens, what: str) -> jax.Array:
  if not hasattr(tokens, "shape"):
    tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[1] < 1:
    raise ValueError(f"{what} must have shape [batch, length >= 1], got {tuple(tokens.shape)}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{what} must be integer token ids, got dtype {tokens.dtype}")
  return jnp.asarray(tokens, jnp.int32)


def _forward(graphdef, params, tokens, state):
  logits, state, _ = nnx.merge(graphdef, params)(tokens, state)
  return logits, state


_forward_jit = jax.jit(_forward, static_argnums=0)


def _sample(logits_BxV, temperature: float, rng):
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, logits_BxV / temperature, axis=-1).astype(jnp.int32)


def memorize(model: nnx.Module, tokens_BxT, memory_state=None):
  """Writes tokens into the model's memories without decoding; returns the new memory state.

  For a stateless model this returns ``{}``.
  """
  tokens = _check_prompt(tokens_BxT, "memorize: tokens")
  # Validation happens eagerly (shapes, ids, state tree) before the jitted call.
  _validate(model, tokens, memory_state)
  if memory_state is None:
    memory_state = model.init_memory(tokens.shape[0])
  if not jax.tree.leaves(memory_state):
    return memory_state  # a stateless model has nothing to write
  graphdef, params = nnx.split(model)
  _, state = _forward_jit(graphdef, params, tokens, memory_state)
  return state


def _validate(model, tokens, memory_state):
  """Runs the model's own input checks on abstract values (no compilation, no compute)."""
  from nl_jax.models import common  # pylint: disable=g-import-not-at-top
  owner = type(model).__name__
  common.prepare_inputs(owner, model.config.vocab_size, tokens)
  if memory_state is not None:
    common.check_memory_state(owner, memory_state,
                              jax.eval_shape(lambda: model.init_memory(tokens.shape[0])))


def generate(model: nnx.Module, prompt_BxT, num_steps: int, memory_state=None, *, rng=None,
             temperature: float = 0.0):
  """Decodes num_steps tokens after the prompt (see the module docstring).

  Args:
    model: any nl_jax model.
    prompt_BxT: int token ids [B, P], P >= 1.
    num_steps: number of tokens to generate (>= 1).
    memory_state: state to continue from (None: init_memory(B)).
    rng: PRNG key, required when temperature > 0.
    temperature: 0 = greedy; else sample from softmax(logits / temperature).

  Returns:
    (tokens_BxN int32, memory_state after the prompt and all N generated tokens).

  Raises:
    ValueError: bad prompt, num_steps, temperature, rng or memory state.
  """
  prompt = _check_prompt(prompt_BxT, "generate: prompt")
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"generate: num_steps must be a positive int, got {num_steps!r}")
  if temperature < 0:
    raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
  if temperature > 0 and rng is None:
    raise ValueError("generate: temperature > 0 needs an rng key (rng=jax.random.key(seed))")
  b, p = prompt.shape
  _validate(model, prompt, memory_state)
  if memory_state is None:
    memory_state = model.init_memory(b)
  graphdef, params = nnx.split(model)
  keys = (jax.random.split(rng, num_steps) if rng is not None else [None] * num_steps)
  out = []
  if jax.tree.leaves(memory_state) and not _has_attention(model):
    logits, state = _forward_jit(graphdef, params, prompt, memory_state)
    token_B = _sample(logits[:, -1], temperature, keys[0])
    out.append(token_B)
    for i in range(1, num_steps + 1):
      logits, state = _forward_jit(graphdef, params, token_B[:, None], state)
      if i == num_steps:
        break  # the last step only writes the final token into memory
      token_B = _sample(logits[:, -1], temperature, keys[i])
      out.append(token_B)
    return jnp.stack(out, axis=1), state

  buffer_BxL = jnp.concatenate([prompt, jnp.zeros((b, num_steps), jnp.int32)], axis=1)
  for i in range(num_steps):
    logits, _ = _forward_jit(graphdef, params, buffer_BxL, memory_state)
    token_B = _sample(logits[:, p + i - 1], temperature, keys[i])
    buffer_BxL = buffer_BxL.at[:, p + i].set(token_B)
    out.append(token_B)
  if jax.tree.leaves(memory_state):
    # Memories (e.g. HopeAttention's CMS) absorb the finished text once, from the start state.
    _, memory_state = _forward_jit(graphdef, params, buffer_BxL, memory_state)
  return jnp.stack(out, axis=1), memory_state


def _has_attention(model) -> bool:
  """Softmax attention here keeps no KV cache: such a model must re-run its context."""
  from nl_jax.layers.attention import Attention  # pylint: disable=g-import-not-at-top
  return any(isinstance(node, Attention) for _, node in nnx.iter_graph(model))
