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

y_t = act(sum_{j < W} kernel[j] * x_{t - W + 1 + j} * [segment_{t - W + 1 + j} == segment_t])

act is the identity or SiLU (``activation``): the layers that follow the conv by a SiLU
(self-modifying Titans, Titans) fuse it here, so the backward recomputes the conv from its input
instead of keeping the conv's output and the activation's as residuals.

The state carries the last W - 1 inputs and their segment ids, so a sequence processed in two
calls with the carried state gives exactly the outputs of one call. The initial state is
zeros (positions before the stream start contribute nothing).
"""

import functools
from typing import NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np


class ConvState(NamedTuple):
  """Last W - 1 inputs x [B, W-1, D] (float32) and their segment ids [B, W-1] (int32)."""
  x: jax.Array
  segment_ids: jax.Array


def _with_carried(x_BxTxD, segment_ids_BxT, state):
  """The carried W - 1 inputs and segment ids in front of the call's: [B, P = T + W - 1]."""
  xp_BxPxD = jnp.concatenate([state.x.astype(x_BxTxD.dtype), x_BxTxD], axis=1)
  segp_BxP = jnp.concatenate([state.segment_ids, segment_ids_BxT.astype(jnp.int32)], axis=1)
  return xp_BxPxD, segp_BxP


def _masks(segment_ids_BxT: jax.Array, segp_BxP: jax.Array, w: int) -> list[jax.Array]:
  """Tap j's mask [B, T]: the input it reads is in the output's segment."""
  t = segment_ids_BxT.shape[1]
  return [segp_BxP[:, j:j + t] == segment_ids_BxT for j in range(w)]


ACTIVATIONS = ("identity", "silu")


def _check_activation(activation: str) -> None:
  if activation not in ACTIVATIONS:
    raise ValueError(f"causal_conv: activation={activation!r} is not one of {ACTIVATIONS}")


def _conv_forward(x_BxTxD, kernel_WxD, segment_ids_BxT, state, activation="identity"):
  """The convolution as written in the module docstring (autodiff of it is the reference)."""
  y, new_state = _conv_linear(x_BxTxD, kernel_WxD, segment_ids_BxT, state)
  return (jax.nn.silu(y) if activation == "silu" else y), new_state


def _conv_linear(x_BxTxD, kernel_WxD, segment_ids_BxT, state):
  """The convolution before its activation, and the new state."""
  xp_BxPxD, segp_BxP = _with_carried(x_BxTxD, segment_ids_BxT, state)
  t = x_BxTxD.shape[1]
  y = _taps(xp_BxPxD, _masks(segment_ids_BxT, segp_BxP, kernel_WxD.shape[0]), kernel_WxD)
  return y, ConvState(xp_BxPxD[:, t:].astype(jnp.float32), segp_BxP[:, t:])


def _taps(xp_BxPxD, masks, kernel_WxD):
  """sum_j k_j m_j[t] xp[t + j]: the conv from the carried-and-call inputs."""
  t = masks[0].shape[1]
  y = jnp.zeros((xp_BxPxD.shape[0], t, xp_BxPxD.shape[2]), xp_BxPxD.dtype)
  for j, same_BxT in enumerate(masks):
    y = y + jnp.where(same_BxT[..., None], xp_BxPxD[:, j:j + t], 0) * kernel_WxD[j].astype(
        xp_BxPxD.dtype)
  return y


def causal_conv(x_BxTxD: jax.Array, kernel_WxD: jax.Array, segment_ids_BxT: jax.Array,
                state: ConvState, activation: str = "identity") -> tuple[jax.Array, ConvState]:
  """Functional form of CausalConv (see the module docstring); returns (y, new_state).

  Its backward is written by hand (`_conv_bwd`): autodiff of the W shifted taps pads one
  cotangent of the whole input per tap and sums them, W buffers of [B, T + W - 1, D] live at
  once (192 MiB of a Hope `small` block's step at T=2048, B=4). The hand-written one reads W
  shifted windows of one padded cotangent into one sum, and keeps only the input as residual:
  the conv and its activation are recomputed in the backward (one elementwise pass) instead
  of kept. Forward-mode autodiff (jax.jvp) is refused, as for every custom VJP.
  """
  _check_activation(activation)
  return _causal_conv(x_BxTxD, kernel_WxD, segment_ids_BxT, state, activation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _causal_conv(x_BxTxD, kernel_WxD, segment_ids_BxT, state, activation):
  return _conv_forward(x_BxTxD, kernel_WxD, segment_ids_BxT, state, activation)


def _conv_fwd(x_BxTxD, kernel_WxD, segment_ids_BxT, state, activation):
  out = _conv_forward(x_BxTxD, kernel_WxD, segment_ids_BxT, state, activation)
  return out, (x_BxTxD, kernel_WxD, segment_ids_BxT, state)


def _conv_bwd(activation, res, cotangents):
  """With xp the carried inputs followed by the call's (P = T + W - 1 positions):
  dxp_p = sum_j k_j m_j[p - j] dc[p - j] (+ the new state's cotangent at p >= T);
  dk_j = sum_{b,t} m_j[t] xp[t + j] dc[t]; dc = dy * act'(c), c the recomputed conv."""
  x_BxTxD, kernel_WxD, segment_ids_BxT, state = res
  dy_BxTxD, dstate = cotangents
  w = kernel_WxD.shape[0]
  t = x_BxTxD.shape[1]
  xp_BxPxD, segp_BxP = _with_carried(x_BxTxD, segment_ids_BxT, state)
  masks = _masks(segment_ids_BxT, segp_BxP, w)
  if activation == "silu":
    c_BxTxD = _taps(xp_BxPxD, masks, kernel_WxD)
    sig = jax.nn.sigmoid(c_BxTxD)
    dy_BxTxD = dy_BxTxD * (sig * (1 + c_BxTxD * (1 - sig))).astype(dy_BxTxD.dtype)
  # Output t reads input t + j through tap j, so input s gets dy[s - j]: a window of dy
  # padded by W - 1 on both sides, at offset W - 1 - j.
  dyp_BxQxD = jnp.pad(dy_BxTxD, ((0, 0), (w - 1, w - 1), (0, 0)))
  p = t + w - 1
  dxp_BxPxD = jnp.pad(dstate.x.astype(xp_BxPxD.dtype), ((0, 0), (t, 0), (0, 0)))
  dkernel = []
  for j, same_BxT in enumerate(masks):
    samep_BxQ = jnp.pad(same_BxT, ((0, 0), (w - 1, w - 1)))
    o = w - 1 - j
    dxp_BxPxD = dxp_BxPxD + jnp.where(samep_BxQ[:, o:o + p, None], dyp_BxQxD[:, o:o + p], 0) * (
        kernel_WxD[j].astype(xp_BxPxD.dtype))
    prod = jnp.where(same_BxT[..., None], xp_BxPxD[:, j:j + t] * dy_BxTxD, 0)
    dkernel.append(jnp.sum(prod.astype(jnp.promote_types(prod.dtype, jnp.float32)), axis=(0, 1)))
  dkernel_WxD = jnp.stack(dkernel).astype(kernel_WxD.dtype)
  dstate_x = dxp_BxPxD[:, :w - 1].astype(state.x.dtype)
  return (dxp_BxPxD[:, w - 1:], dkernel_WxD, _no_cotangent(segment_ids_BxT),
          ConvState(dstate_x, _no_cotangent(state.segment_ids)))


def _no_cotangent(ids: jax.Array):
  """The cotangent of segment ids: float0 for integers, zeros otherwise."""
  if jnp.issubdtype(ids.dtype, jnp.inexact):
    return jnp.zeros_like(ids)
  return np.zeros(ids.shape, jax.dtypes.float0)


_causal_conv.defvjp(_conv_fwd, _conv_bwd)


class CausalConv(nnx.Module):
  """Depthwise causal conv of width `width` over the channel axis; parameter `kernel` [W, D].

  Initialised to the identity (last tap 1, others 0) plus small noise, so a fresh layer
  passes its input through (its activation applied). ``activation``: "identity" or "silu"
  (fused into the conv's backward, see causal_conv).
  """

  def __init__(self, dim: int, width: int = 4, *, activation: str = "identity",
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if width < 1:
      raise ValueError(f"CausalConv: width must be >= 1, got {width}")
    _check_activation(activation)
    self.activation = activation
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
    return causal_conv(x_BxTxD, self.kernel[...], segment_ids_BxT, state, self.activation)
