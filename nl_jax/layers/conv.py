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
"""Causal depthwise convolution that never mixes packed segments, with a streaming form.

y_t = sum_{j < W} kernel[j] * x_{t - W + 1 + j} * [segment_{t - W + 1 + j} == segment_t]

The state carries the last W - 1 inputs and their segment ids, so a sequence processed in two
calls with the carried state gives exactly the outputs of one call. The initial state is
zeros (positions before the stream start contribute nothing).
"""

from typing import NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp


class ConvState(NamedTuple):
  """Last W - 1 inputs x [B, W-1, D] (float32) and their segment ids [B, W-1] (int32)."""
  x: jax.Array
  segment_ids: jax.Array


def causal_conv(x_BxTxD: jax.Array, kernel_WxD: jax.Array, segment_ids_BxT: jax.Array,
                state: ConvState) -> tuple[jax.Array, ConvState]:
  """Functional form of CausalConv (see the module docstring); returns (y, new_state)."""
  w = kernel_WxD.shape[0]
  t = x_BxTxD.shape[1]
  xp_BxPxD = jnp.concatenate([state.x.astype(x_BxTxD.dtype), x_BxTxD], axis=1)
  segp_BxP = jnp.concatenate([state.segment_ids, segment_ids_BxT.astype(jnp.int32)], axis=1)
  y = jnp.zeros_like(x_BxTxD)
  for j in range(w):
    same_BxT = segp_BxP[:, j:j + t] == segment_ids_BxT
    y = y + jnp.where(same_BxT[..., None], xp_BxPxD[:, j:j + t], 0) * kernel_WxD[j].astype(
        x_BxTxD.dtype)
  new_state = ConvState(xp_BxPxD[:, t:].astype(jnp.float32), segp_BxP[:, t:])
  return y, new_state


class CausalConv(nnx.Module):
  """Depthwise causal conv of width `width` over the channel axis; parameter `kernel` [W, D].

  Initialised to the identity (last tap 1, others 0) plus small noise, so a fresh layer
  passes its input through.
  """

  def __init__(self, dim: int, width: int = 4, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if width < 1:
      raise ValueError(f"CausalConv: width must be >= 1, got {width}")
    self.width = width
    self.dim = dim
    noise = 0.02 * jax.random.normal(rngs.params(), (width, dim), param_dtype)
    self.kernel = nnx.Param(noise.at[-1].add(1.0))

  def init_state(self, batch_size: int) -> ConvState:
    return ConvState(jnp.zeros((batch_size, self.width - 1, self.dim), jnp.float32),
                     jnp.zeros((batch_size, self.width - 1), jnp.int32))

  def __call__(self, x_BxTxD: jax.Array, segment_ids_BxT: jax.Array,
               state: ConvState | None = None) -> tuple[jax.Array, ConvState]:
    if state is None:
      state = self.init_state(x_BxTxD.shape[0])
    return causal_conv(x_BxTxD, self.kernel[...], segment_ids_BxT, state)
