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
"""Chunks aligned to global stream positions, for the layers whose updates happen at chunk ends.

A call of T tokens that starts at stream position p puts its tokens at slots [p % C, p % C + T)
of n chunks of C slots, so every chunk boundary falls on a global multiple of C whatever the
split of the stream into calls. When p is traced (a carried state), p % C is unknown at trace
time and n must cover the worst case, ceil((T + C - 1) / C): one more chunk than needed when T
is a multiple of C and p is too. A call whose state it created itself knows p = 0
(``start_aligned``): then n = ceil(T / C) and the tokens are only padded at the end, without
per-row dynamic slices.

    offset, n = layout(t, c, position_B, start_aligned)
    x_BxNxCx = to_chunks(x_BxTx, offset, n, c, fill)
    y_BxTx = from_chunks(y_BxNxCx, offset, t)

``ScanChunks`` is the same layout for a lax.scan over the chunks of per-head inputs (chunk
axis first, time at any axis). Per-sequence state changes at chunk starts (resets) use the
row selection ``where_rows`` / ``broadcast_like``: one flag per sequence picks, leaf by leaf,
between two states with a leading batch axis; ``reset_flags`` says which chunks start a
document and which hold one that starts off the chunk grid.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


def layout(t: int, c: int, position_B: jax.Array, start_aligned: bool):
  """(offset, n): offset None when the call starts on a chunk boundary (start_aligned), else
  the per-row slot of the first token, [B] int32."""
  if start_aligned:
    return None, math.ceil(t / c)
  return position_B % c, math.ceil((t + c - 1) / c)


def to_chunks(x_BxTx: jax.Array, offset_B: jax.Array | None, n: int, c: int, fill) -> jax.Array:
  """Each row's T tokens at slots [offset, offset + T) of n * c slots: [B, n, c, ...]."""
  b, t = x_BxTx.shape[:2]
  rest = x_BxTx.shape[2:]
  if offset_B is None:
    if n * c != t:
      pad = jnp.full((b, n * c - t) + rest, fill, x_BxTx.dtype)
      x_BxTx = jnp.concatenate([x_BxTx, pad], axis=1)
    return x_BxTx.reshape((b, n, c) + rest)

  def one(row, off):
    base = jnp.full((n * c,) + rest, fill, row.dtype)
    return jax.lax.dynamic_update_slice_in_dim(base, row, off, axis=0)
  return jax.vmap(one)(x_BxTx, offset_B).reshape((b, n, c) + rest)


def from_chunks(x_BxNxCx: jax.Array, offset_B: jax.Array | None, t: int) -> jax.Array:
  """The inverse of to_chunks: the T slots of each row's tokens, [B, T, ...]."""
  b, n, c = x_BxNxCx.shape[:3]
  flat = x_BxNxCx.reshape((b, n * c) + x_BxNxCx.shape[3:])
  if offset_B is None:
    return flat[:, :t]
  return jax.vmap(lambda r, o: jax.lax.dynamic_slice_in_dim(r, o, t, axis=0))(flat, offset_B)


class ScanChunks(NamedTuple):
  """One chunk size's aligned layout of a call, for scanning over its chunks.

  ``split`` turns x with T at ``time_axis`` (after the batch axis 0) into [n, B, ..., c, ...]
  (the chunk axis first, c where T was); ``join`` inverts it for the scan's per-chunk outputs.
  """
  offset: jax.Array | None
  n: int
  c: int
  t: int

  @classmethod
  def make(cls, c: int, t: int, position_B: jax.Array, start_aligned: bool) -> "ScanChunks":
    offset, n = layout(t, c, position_B, start_aligned)
    return cls(offset, n, c, t)

  def split(self, x: jax.Array, fill=0.0, time_axis: int = 2) -> jax.Array:
    x = jnp.moveaxis(x, time_axis, 1)  # [B, T, ...]
    y = to_chunks(x, self.offset, self.n, self.c, fill)  # [B, n, c, ...]
    return jnp.moveaxis(jnp.moveaxis(y, 2, time_axis + 1), 1, 0)

  def join(self, x: jax.Array, time_axis: int = 2) -> jax.Array:
    x = jnp.moveaxis(jnp.moveaxis(x, 0, 1), time_axis + 1, 2)  # [B, n, c, ...]
    return jnp.moveaxis(from_chunks(x, self.offset, self.t), 1, time_axis)


def as_rows(x_B: jax.Array, like: jax.Array) -> jax.Array:
  """x_B [B] shaped to broadcast against ``like`` [B, ...] (one value per sequence)."""
  return x_B.reshape((-1,) + (1,) * (like.ndim - 1))


def where_rows(flag_B: jax.Array, new, old):
  """Leaf by leaf, ``new`` (cast to old's dtype) in the sequences where flag_B, else ``old``."""
  return jax.tree.map(lambda n, o: jnp.where(as_rows(flag_B, o), n.astype(o.dtype), o),
                      new, old)


def broadcast_like(init, like):
  """Initial weights without the batch axes, broadcast to a per-sequence state ``like``."""
  return jax.tree.map(lambda i, x: jnp.broadcast_to(i.astype(x.dtype), x.shape), init, like)


def reset_flags(reset_BxC: jax.Array, valid_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(at_start_B, inside_B): a chunk's resets, split by where they fall.

  at_start: the chunk's first valid token starts a document (the slots before it are front
  padding, which writes nothing), so the chunk starts from the initial state: exact.
  inside: a document starts after the chunk's first valid token (a reset off the chunk grid).
  The tokens before it belong to the previous document and must keep reading its memory, so
  the state goes back to the initial one at the chunk's end instead: causal, and the leak is
  bounded (the new document's tokens in this chunk read the old memory and their writes are
  dropped). Chunked layers refuse such resets when they are concrete; under jit they come
  from padding after the last document (task batches) or a pipeline that does not align.
  """
  starts = (reset_BxC != 0) & (valid_BxC > 0)
  first = jnp.argmax(valid_BxC > 0, axis=1)  # 0 for a chunk with no valid token
  at_start = jnp.take_along_axis(starts, first[:, None], axis=1)[:, 0]
  inside = jnp.any(starts & (jnp.arange(starts.shape[1])[None] > first[:, None]), axis=1)
  return at_start, inside
