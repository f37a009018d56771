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
"""Adapters from an nl_jax model (the registry interface) to the `LogitsFn` scorers use.

A model is called as ``logits, state, aux = model(tokens, state, segment_ids=...)``. For long
contexts the sequence can be fed in segments of ``segment_len`` tokens with the memory state
carried across calls (the interface guarantees one call == several calls with carried state
for stateful models; a stateless model such as TransformerPP then only sees the current
segment, which is exactly the "attention window" comparison of the long-context tables).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nl_jax.data.tokenizers import PAD_ID
from nl_jax.eval.examples import LogitsFn


def model_alignment(model) -> int:
  """The chunk size sequence lengths must be padded to (1 when the model has none)."""
  config = getattr(model, "config", None)
  return int(getattr(config, "alignment", 1) or 1)


def make_step(model) -> Callable:
  """``step(tokens_BxT, segment_ids_BxT, state) -> (logits_BxTxV, new_state)``, jitted.

  The parameters are split off once and passed as arguments, so every call with the same
  shapes reuses one compiled program (the model object itself is not retraced).
  """
  import flax.nnx as nnx  # noqa: PLC0415

  graphdef, params = nnx.split(model)

  @jax.jit
  def step(params, tokens_BxT, segment_ids_BxT, state):
    m = nnx.merge(graphdef, params)
    logits_BxTxV, new_state, _ = m(tokens_BxT, state, segment_ids=segment_ids_BxT)
    return logits_BxTxV, new_state

  def call(tokens_BxT, segment_ids_BxT, state):
    return step(params, tokens_BxT, segment_ids_BxT, state)

  return call


def _pad_cols(x_BxT: np.ndarray, multiple: int, value: int) -> np.ndarray:
  t = x_BxT.shape[1]
  t_pad = -(-t // multiple) * multiple
  if t_pad == t:
    return x_BxT
  return np.pad(x_BxT, ((0, 0), (0, t_pad - t)), constant_values=value)


def make_logits_fn(model, *, segment_len: int | None = None) -> LogitsFn:
  """A `LogitsFn` for ``model``.

  Args:
    model: an nl_jax model (registry interface).
    segment_len: None = the whole sequence in one call; else calls of ``segment_len`` tokens
      with the memory state carried (must be a multiple of the model's alignment).

  Returns:
    ``fn(tokens_BxT, segment_ids_BxT) -> logits_BxTxV`` (numpy float32). Sequences are padded
    at the end to the model's alignment (padding never changes earlier causal predictions).
  """
  align = model_alignment(model)
  if segment_len is not None and (segment_len < 1 or segment_len % align):
    suggestion = max(align, (segment_len or 1) // align * align)
    raise ValueError(f"segment_len={segment_len} must be a positive multiple of the model's "
                     f"alignment ({align}); use e.g. {suggestion}")
  step = make_step(model)

  def fn(tokens_BxT, segment_ids_BxT):
    t = tokens_BxT.shape[1]
    tokens = _pad_cols(np.asarray(tokens_BxT, np.int32), align, PAD_ID)
    seg = _pad_cols(np.asarray(segment_ids_BxT, np.int32), align, 0)
    state = model.init_memory(tokens.shape[0])
    if segment_len is None:
      logits, _ = step(jnp.asarray(tokens), jnp.asarray(seg), state)
      return np.asarray(logits[:, :t])
    outs = []
    for start in range(0, tokens.shape[1], segment_len):
      logits, state = step(jnp.asarray(tokens[:, start:start + segment_len]),
                           jnp.asarray(seg[:, start:start + segment_len]), state)
      outs.append(np.asarray(logits))
    return np.concatenate(outs, axis=1)[:, :t]

  return fn


def token_nll(logits_BxTxV: np.ndarray, tokens_BxT: np.ndarray) -> np.ndarray:
  """Per-position next-token NLL ``nll[b, t] = -log p(tokens[b, t+1] | <= t)``; [B, T-1]."""
  logits = np.asarray(logits_BxTxV[:, :-1], np.float64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  picked = np.take_along_axis(logits, np.asarray(tokens_BxT)[:, 1:, None], axis=-1)[..., 0]
  return logz - picked
