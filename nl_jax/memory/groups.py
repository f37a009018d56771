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
"""Groups of MLP memories that share their keys and gates, each with its own target.

The self-modifying Titans writes several memories per head with the same key k_t, learning
rate eta_t, retention alpha_t and momentum decay mu_t, and one regression target per memory
(its own vhat). A group stacks those memories on an axis G of the state (leaves [B, G, H,
...]) and writes them as one batched computation:

    at_start, inside = reset_flags(reset_BxC, valid_BxC)       # nl_jax.memory.aligned_chunks
    state = reset_rows(state, init, at_start)                   # a document starts
    eta, alpha, mu = mask_padding(valid_BxC, eta, alpha, mu)    # padded slots write nothing
    reads, state = write_chunk(mem, state, k, vhat, eta, alpha, mu, q, valid_BxC)
    state = reset_rows(state, init, inside)                     # one started inside the chunk

``write_chunk`` vmaps MLPMemory.chunk_step over the group with the shared inputs unmapped, so
what depends on them alone (the rule coefficients, decay kernels, the keys' Gram matrix and the
chunk's triangular inverse) is computed once per chunk and head; ``shared_chunk`` computes the
last three once for several groups written with the same keys and gates (pass it to each
``write_chunk``). ``token_write`` is the token-loop reference of the same group write
(MLPMemory.token_step per memory).
"""

import jax
import jax.numpy as jnp

from nl_jax.memory.aligned_chunks import broadcast_like, where_rows
from nl_jax.memory.mlp import MLPMemory, MLPWeights, SharedChunk
from nl_jax.memory.types import MemoryInputs, MemoryState


def reset_rows(st: MemoryState, init: MLPWeights, flag_B: jax.Array) -> MemoryState:
  """Memory and anchor back to ``init`` (no batch axis) and momentum to zero where flag_B.

  Most chunks hold no document start, so the selects (and in the backward the cotangent of
  ``init`` summed over the batch) run only when some sequence resets (lax.cond; under a vmap
  over flag_B both branches run, as a select).
  """
  def reset(st):
    init_b = broadcast_like(init, st.memory)
    memory = where_rows(flag_B, init_b, st.memory)
    anchor = None if st.anchor is None else where_rows(flag_B, init_b, st.anchor)
    momentum = None if st.momentum is None else where_rows(
        flag_B, jax.tree.map(jnp.zeros_like, st.momentum), st.momentum)
    return st._replace(memory=memory, anchor=anchor, momentum=momentum)
  return jax.lax.cond(jnp.any(flag_B), reset, lambda st: st, st)


def scan_anchor(st: MemoryState, anchor0, first: jax.Array) -> MemoryState:
  """``st`` with the anchor a chunk of a scan starts from, read without the carried anchor.

  The anchor moves to the weights at the end of every complete chunk (`write_chunk`, resets
  move both), and a call's tokens are contiguous on the chunk grid, so every chunk after the
  first that holds a token starts with anchor == memory; the first starts from the state's
  anchor ``anchor0`` (loop-invariant). Reading those instead of the carried anchor keeps the
  scan's backward from saving a second copy of the fast weights per chunk. ``first``: the
  chunk is the scan's first. Pair it with `keep_anchor_if_empty`.
  """
  anchor = jax.tree.map(lambda a0, m: jnp.where(first, a0, m), anchor0, st.memory)
  return st._replace(anchor=anchor)


def keep_anchor_if_empty(new: MemoryState, carried: MemoryState,
                         valid_BxC: jax.Array) -> MemoryState:
  """The carried anchor back in the sequences whose chunk holds no token (the padded chunks
  at a call's end, after a partial one whose anchor did not move); see `scan_anchor`."""
  live_B = jnp.any(valid_BxC > 0, axis=1)
  return new._replace(anchor=where_rows(live_B, new.anchor, carried.anchor))


def mask_padding(valid_BxC: jax.Array, eta, alpha, mu):
  """Gates of the padded slots set to a no-op write: eta 0, alpha = mu = 1 ([B, H, C])."""
  vm = valid_BxC[:, None, :] > 0
  return (jnp.where(vm, eta, 0.0), jnp.where(vm, alpha, 1.0),
          None if mu is None else jnp.where(vm, mu, 1.0))


def _chunk_tokens(mem: MLPMemory, k, v, eta, alpha, mu, q, valid_BxC, dtype):
  """MLPMemory.chunk_tokens of a group's chunk (absent inputs dropped) plus ``valid``."""
  inputs = MemoryInputs(keys=k, values=v, eta=eta, queries=q, alpha=alpha, momentum=mu)
  tok = {n: x for n, x in mem.chunk_tokens(inputs, dtype).items() if x is not None}
  tok["valid"] = jnp.broadcast_to(valid_BxC[:, None, :], eta.shape).astype(eta.dtype)
  return tok


def shared_chunk(mem: MLPMemory, k, eta, alpha, mu, valid_BxC, dtype) -> SharedChunk:
  """The decay kernels and erase system of a chunk (MLPMemory.chunk_shared), leaves [B, H,
  ...], for every group written with these keys and gates by memories of ``mem``'s rule,
  momentum and chunk size: pass it to each group's `write_chunk`. Inputs as there, masked."""
  tok = _chunk_tokens(mem, k, None, eta, alpha, mu, None, valid_BxC, dtype)
  return jax.vmap(jax.vmap(mem.chunk_shared))(tok)


def write_chunk(mem: MLPMemory, st: MemoryState, k, v, eta, alpha, mu, q, valid_BxC,
                shared: SharedChunk | None = None):
  """One anchored chunk of a group (state leaves [B, G, H, ...], or [B, H, ...] for one memory).

  v [B, G, H, C, d_out] (one target per memory); k, q [B, H, C, d_in] and eta, alpha, mu
  [B, H, C] are shared; valid [B, C]. Padded slots must come through ``mask_padding``; they
  leave the state unchanged. The anchor moves to the new weights when the chunk is complete.
  shared: `shared_chunk` of the same inputs, when several groups share it (None: computed
  once for this group). Returns (reads [B, G, H, C, d_out] or None, new MemoryState).
  """
  dtype = jax.tree.leaves(st.memory)[0].dtype
  tok = _chunk_tokens(mem, k, v, eta, alpha, mu, q, valid_BxC, dtype)
  fn = jax.vmap(mem.chunk_step)  # heads
  fn = jax.vmap(fn, in_axes=(0, {name: 0 if name == "v" else None for name in tok},
                             None))  # group
  fn = jax.vmap(fn)  # batch
  grouped = v.ndim == jax.tree.leaves(st.memory)[0].ndim
  lift = (lambda z: z) if grouped else (lambda z: jax.tree.map(lambda a: a[:, None], z))
  drop = (lambda z: z) if grouped else (lambda z: jax.tree.map(lambda a: a[:, 0], z))
  out, (memory, momentum) = fn(lift((st.memory, st.momentum, st.anchor)), tok, shared)
  memory, momentum = drop((memory, momentum))
  anchor = where_rows(valid_BxC[:, -1] > 0, memory, st.anchor)
  return out, MemoryState(memory, momentum, anchor, st.position)


def token_reset(r, carry, init: MLPWeights):
  """One sequence's (weights, momentum, anchor) back to init, momentum zero, where r is set."""
  w, s, a = carry
  w = jax.tree.map(lambda n, o: jnp.where(r, n.astype(o.dtype), o), init, w)
  a = jax.tree.map(lambda n, o: jnp.where(r, n.astype(o.dtype), o), init, a)
  s = None if s is None else jax.tree.map(lambda o: jnp.where(r, 0.0, o), s)
  return w, s, a


def token_write(mem: MLPMemory, carry, k, vhat, eta, alpha, mu):
  """One token's write of one sequence's group: carry (weights, momentum, anchor) leaves
  [G, H, ...]; k [H, d_in], eta, alpha, mu [H] shared; vhat [G, H, d_out]. Returns the group's
  (weights, momentum) after the token (anchors move at chunk ends, the caller's rule)."""
  w, s, a = carry
  fn = lambda w_, s_, a_, k_, vh_, e_, al_, m_: mem.token_step(  # noqa: E731
      (w_, s_, a_), k_, vh_, e_, al_, m_)
  s_axis = 0 if s is not None else None
  per_head = jax.vmap(fn, in_axes=(0, s_axis, 0, 0, 0, 0, 0, 0))
  per_group = jax.vmap(per_head, in_axes=(0, s_axis, 0, None, 0, None, None, None))
  return per_group(w, s, a, k, vhat, eta, alpha, mu)


__all__ = ["mask_padding", "reset_rows", "shared_chunk", "token_reset", "token_write",
           "write_chunk"]
