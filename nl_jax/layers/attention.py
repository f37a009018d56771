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
"""Causal multi-head softmax attention with RoPE, segment masking and an optional sliding window.

Masking rule (token i may attend to token j of the same call iff all hold)::

    j <= i                                   (causal, by index within the call)
    segment_ids[j] == segment_ids[i]         (packed documents never see each other)
    i - j < sliding_window                   (only when sliding_window is set)

RoPE uses the given `positions` (so packed documents can restart at 0 and a streamed call
can continue at the number of tokens already seen); causality uses the index in the call.
Scores and softmax are float32 whatever the activation dtype. Long sequences are processed in
query blocks of `block_size` rows (each block rematerialised), so activation memory grows
like T * block_size instead of T^2; the result is identical to the unblocked computation.
"""

import math

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from nl_jax.layers.mlp import dense_init
from nl_jax.layers.projection import project, project_shared

# A finite fill instead of -inf: a fully masked row (only possible for padded query rows of
# the blocked path) becomes uniform instead of NaN, and NaN never reaches the gradient.
_MASK_FILL = -1e30


def rope(x_BxTxHxK: jax.Array, positions_BxT: jax.Array, theta: float = 10000.0) -> jax.Array:
  """Rotary position embedding (half-split pairing, as in Llama), computed in float32.

  Property: <rope(q, m), rope(k, n)> depends on m - n only.
  """
  k = x_BxTxHxK.shape[-1]
  if k % 2:
    raise ValueError(f"rope: head_dim must be even, got {k}")
  half = k // 2
  freq_F = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxTx1xF = (positions_BxT.astype(jnp.float32)[..., None] * freq_F)[:, :, None, :]
  angle_BxTx1xF = angle_BxTx1xF.astype(jnp.promote_types(x_BxTxHxK.dtype, jnp.float32))
  sin, cos = jnp.sin(angle_BxTx1xF), jnp.cos(angle_BxTx1xF)
  x = x_BxTxHxK.astype(jnp.promote_types(x_BxTxHxK.dtype, jnp.float32))
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxK.dtype)


def attention_mask(q_index_Q: jax.Array, k_index_T: jax.Array, seg_q_BxQ: jax.Array,
                   seg_k_BxT: jax.Array, sliding_window: int | None) -> jax.Array:
  """Boolean [B, Q, T] mask of the rule in the module docstring."""
  mask_QxT = k_index_T[None, :] <= q_index_Q[:, None]
  if sliding_window is not None:
    mask_QxT = mask_QxT & (q_index_Q[:, None] - k_index_T[None, :] < sliding_window)
  return mask_QxT[None] & (seg_q_BxQ[:, :, None] == seg_k_BxT[:, None, :])


def _attend(q_BxQxHxK, k_BxTxHxK, v_BxTxHxK, mask_BxQxT):
  scale = 1.0 / math.sqrt(q_BxQxHxK.shape[-1])
  # Scores and softmax in float32 at least (float64 stays float64 for exactness tests).
  acc = jnp.promote_types(q_BxQxHxK.dtype, jnp.float32)
  s_BxHxQxT = jnp.einsum("bqhk,bthk->bhqt", q_BxQxHxK, k_BxTxHxK,
                         preferred_element_type=acc) * scale
  s_BxHxQxT = jnp.where(mask_BxQxT[:, None], s_BxHxQxT, _MASK_FILL)
  p_BxHxQxT = jax.nn.softmax(s_BxHxQxT, axis=-1).astype(v_BxTxHxK.dtype)
  return jnp.einsum("bhqt,bthk->bqhk", p_BxHxQxT, v_BxTxHxK)


def causal_attention(q_BxTxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array,
                     segment_ids_BxT: jax.Array, *, sliding_window: int | None = None,
                     block_size: int | None = 512) -> jax.Array:
  """Masked softmax attention (rule in the module docstring); returns [B, T, H, K].

  Args:
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK: queries (RoPE applied), keys (RoPE applied), values.
    segment_ids_BxT: int segment ids; tokens attend only within their segment.
    sliding_window: attend to at most this many most recent tokens (incl. itself), or None.
    block_size: query rows per block (None: one block). Blocks are rematerialised.
  """
  _, t, _, _ = q_BxTxHxK.shape
  idx_T = jnp.arange(t)
  if block_size is None or t <= block_size:
    mask = attention_mask(idx_T, idx_T, segment_ids_BxT, segment_ids_BxT, sliding_window)
    return _attend(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask)
  n = -(-t // block_size)
  pad = n * block_size - t
  q_pad = jnp.pad(q_BxTxHxK, ((0, 0), (0, pad), (0, 0), (0, 0)))
  seg_pad = jnp.pad(segment_ids_BxT, ((0, 0), (0, pad)))
  q_NxBxCxHxK = jnp.moveaxis(q_pad.reshape((q_pad.shape[0], n, block_size) + q_pad.shape[2:]),
                             1, 0)
  seg_NxBxC = jnp.moveaxis(seg_pad.reshape(seg_pad.shape[0], n, block_size), 1, 0)
  start_N = jnp.arange(n) * block_size

  @jax.checkpoint
  def one_block(args):
    q_BxCxHxK, seg_BxC, start = args
    mask = attention_mask(start + jnp.arange(block_size), idx_T, seg_BxC, segment_ids_BxT,
                          sliding_window)
    return _attend(q_BxCxHxK, k_BxTxHxK, v_BxTxHxK, mask)

  out_NxBxCxHxK = jax.lax.map(one_block, (q_NxBxCxHxK, seg_NxBxC, start_N))
  out = jnp.moveaxis(out_NxBxCxHxK, 0, 1).reshape(q_pad.shape)
  return out[:, :t]


class Attention(nnx.Module):
  """Multi-head causal self-attention with RoPE (Llama style, no biases).

  Parameters: `wq`, `wk`, `wv` [d_model, n_heads, head_dim], `wo` [n_heads, head_dim, d_model].

  Args:
    d_model: model width.
    n_heads: number of heads.
    head_dim: per-head width (even, for RoPE).
    rope_theta: RoPE base.
    sliding_window: local attention span in tokens, or None for global attention.
    block_size: query block of the memory-saving path (None: one block).
    dtype: activation dtype of the matmuls (scores and softmax stay float32).
    param_dtype: storage dtype of the weights.
    rngs: parameter initialisation.
  """

  def __init__(self, d_model: int, n_heads: int, head_dim: int, *, rope_theta: float = 10000.0,
               sliding_window: int | None = None, block_size: int | None = 512,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if head_dim % 2:
      raise ValueError(f"Attention: head_dim must be even for RoPE, got {head_dim}")
    if sliding_window is not None and sliding_window < 1:
      raise ValueError(f"Attention: sliding_window must be >= 1 or None, got {sliding_window}")
    self.rope_theta = rope_theta
    self.sliding_window = sliding_window
    self.block_size = block_size
    self.dtype = dtype
    shape_in = (d_model, n_heads, head_dim)
    self.wq = nnx.Param(dense_init(rngs.params(), shape_in, d_model, param_dtype))
    self.wk = nnx.Param(dense_init(rngs.params(), shape_in, d_model, param_dtype))
    self.wv = nnx.Param(dense_init(rngs.params(), shape_in, d_model, param_dtype))
    self.wo = nnx.Param(dense_init(rngs.params(), (n_heads, head_dim, d_model),
                                   n_heads * head_dim, param_dtype))

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array) -> jax.Array:
    x = x_BxTxD.astype(self.dtype)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = project_shared(
        "btd,dhk->bthk", x, (self.wq, self.wk, self.wv), self.dtype)
    q_BxTxHxK = rope(q_BxTxHxK, positions_BxT, self.rope_theta)
    k_BxTxHxK = rope(k_BxTxHxK, positions_BxT, self.rope_theta)
    o_BxTxHxK = causal_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, segment_ids_BxT,
                                 sliding_window=self.sliding_window, block_size=self.block_size)
    return project("bthk,hkd->btd", o_BxTxHxK, self.wo, self.dtype)

  def attend_with_buffer(self, x_BxSxD: jax.Array, positions_BxS: jax.Array, start,
                         k_buf_BxTxHxK: jax.Array, v_buf_BxTxHxK: jax.Array,
                         segment_ids_BxT: jax.Array):
    """Attention for S queries at call indices [start, start + S) over a key/value buffer.

    For callers that run a call segment by segment (CMS with the next-token objective): the
    buffer holds the RoPE'd keys and the values of the call's earlier segments at their call
    index; this segment's keys/values are written at [start, start + S) and the queries
    attend by the module docstring's rule over absolute call indices, so slots not yet
    written (index > query) are masked. Running every segment in order gives exactly
    ``__call__`` on the whole call (unblocked; scores are S x T per segment).

    Args:
      x_BxSxD: the segment's inputs.
      positions_BxS: RoPE positions of the segment.
      start: call index of the segment's first token (int or traced int32 scalar).
      k_buf_BxTxHxK, v_buf_BxTxHxK: the buffers (keys RoPE'd), in the activation dtype.
      segment_ids_BxT: segment ids of the whole call.

    Returns:
      (y_BxSxD, k_buf_BxTxHxK, v_buf_BxTxHxK) with the segment written into the buffers.
    """
    s = x_BxSxD.shape[1]
    x = x_BxSxD.astype(self.dtype)
    q_BxSxHxK, k_BxSxHxK, v_BxSxHxK = project_shared(
        "bsd,dhk->bshk", x, (self.wq, self.wk, self.wv), self.dtype)
    q_BxSxHxK = rope(q_BxSxHxK, positions_BxS, self.rope_theta)
    k_BxSxHxK = rope(k_BxSxHxK, positions_BxS, self.rope_theta)
    k_buf = jax.lax.dynamic_update_slice_in_dim(k_buf_BxTxHxK,
                                                k_BxSxHxK.astype(k_buf_BxTxHxK.dtype), start, 1)
    v_buf = jax.lax.dynamic_update_slice_in_dim(v_buf_BxTxHxK,
                                                v_BxSxHxK.astype(v_buf_BxTxHxK.dtype), start, 1)
    q_index_S = start + jnp.arange(s)
    seg_q_BxS = jax.lax.dynamic_slice_in_dim(segment_ids_BxT, start, s, axis=1)
    mask = attention_mask(q_index_S, jnp.arange(k_buf.shape[1]), seg_q_BxS, segment_ids_BxT,
                          self.sliding_window)
    o_BxSxHxK = _attend(q_BxSxHxK, k_buf.astype(self.dtype), v_buf.astype(self.dtype), mask)
    return project("bshk,hkd->bsd", o_BxSxHxK, self.wo, self.dtype), k_buf, v_buf
