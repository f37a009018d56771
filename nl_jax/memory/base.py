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
"""What every fast level shares: validation, batching, chunk padding, scans and remat.

A concrete level (MatrixMemory, MLPMemory) provides four pure, single-sequence pieces:
per-token coefficients, one chunk in closed form, one token of the sequential reference, and
a read. This module turns them into the public batched API::

    state = level.init_state(params, batch_shape)
    outputs_BxTxD = level.read(params, state, queries_BxTxK)
    state = level.update(params, state, inputs)
    outputs_BxTxD, state = level.scan(params, state, inputs)
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from nl_jax.memory import aligned_chunks, gates
from nl_jax.memory.types import (
  READS,
  RETENTION_ORDERS,
  RULES,
  SEMANTICS,
  MemoryInputs,
  MemoryState,
  check_choice,
  rule_coefficients,
  state_dtype,
  validate_inputs,
)

sg = jax.lax.stop_gradient


def straight_through(new, old):
  """Value of new, gradient of the identity map to old (first-order mode)."""
  return jax.tree.map(lambda n, o: sg(n) + (o - sg(o)), new, old)


def check_reset_alignment(owner: str, reset, position, chunk_size: int,
                          field: str = "chunk_size",
                          fix: str = "Align documents to the chunk size or use "
                                     "implementation='sequential'.") -> None:
  """Raises if a concrete reset falls inside a chunk (a chunked path would miss it).

  reset [..., T] (True / nonzero at a document's first token), position [...] (tokens the
  stream has seen before this call). Under jit the values are tracers and nothing can be
  checked: the data pipeline's document alignment guarantees it there.
  """
  try:
    reset_np = np.asarray(reset)
    position_np = np.asarray(position)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return
  idx = np.arange(reset_np.shape[-1])
  misaligned = (reset_np != 0) & ((position_np[..., None] + idx) % chunk_size != 0)
  if misaligned.any():
    where = tuple(int(i) for i in np.argwhere(misaligned)[0])
    raise ValueError(f"{owner}: inputs.reset is set at index {where} (global position "
                     f"{int(position_np[where[:-1]]) + where[-1]}), which is not a multiple of "
                     f"{field}={chunk_size}; the chunked path resets at chunk starts "
                     f"only. {fix}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FastLevel:
  """Configuration shared by every fast level (subclasses add their shapes).

  Attributes:
    rule: inner rule, one of dgd (default), paper_l2, gd, hebbian.
    semantics: exact (the per-token recurrence) or anchored (inner gradients of a chunk
      taken at the state at the end of the previous chunk; decays stay per token).
    chunk_size: tokens per chunk C: the parallel block of the chunked path, and the anchor
      period of anchored semantics. Any sequence length works: the last partial chunk is
      processed with masked (no-op) padding, and anchored chunk boundaries stay aligned to
      multiples of C tokens across calls through state.position.
    momentum: Titans-style momentum on the gradient term (data-dependent decay per token).
    retention_order: after (eq. 88: M (alpha I - ...), gradient at M) or before
      (retain first, M' = alpha M, then erase and take the gradient at M'; with gd
      this is Gated DeltaNet).
    read: post (read M_t q_t after token t's write; Titans / DeltaNet), pre (read
      M_{t-1} q_t, the paper's eq. 83 index) or anchor (read the chunk's anchor, eq. 90;
      anchored semantics only).
    first_order: stop gradients through the writes: the outer loss still trains the initial
      state and the queries through the reads, but keys, values and gates get no gradient
      from the memory, and the state is a straight-through chain.
    remat: jax.checkpoint each chunk so backward memory grows with the number of chunks.
      (The matrix memory's exact path without momentum has a hand-written backward that
      saves each chunk's start state and solve, O(T) in all, and does not use this flag.)
    implementation: chunked (closed-form chunks, the default where one exists),
      sequential (token loop, the executable spec) or auto (chunked for T >= C).
  """
  rule: str = "dgd"
  semantics: str = "exact"
  chunk_size: int = 64
  momentum: bool = False
  retention_order: str = "after"
  read_at: str = "post"
  first_order: bool = False
  remat: bool = True
  implementation: str = "auto"

  def __post_init__(self):
    owner = type(self).__name__
    check_choice(owner, "rule", self.rule, RULES)
    check_choice(owner, "semantics", self.semantics, SEMANTICS)
    check_choice(owner, "retention_order", self.retention_order, RETENTION_ORDERS)
    check_choice(owner, "read_at", self.read_at, READS)
    check_choice(owner, "implementation", self.implementation, ("auto", "chunked", "sequential"))
    if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
      raise ValueError(f"{owner}: chunk_size must be a positive int, got {self.chunk_size!r}")
    if self.read_at == "anchor" and self.semantics != "anchored":
      raise ValueError(f"{owner}: read_at='anchor' needs semantics='anchored'")

  # ----- to be provided by subclasses (single sequence, no batch axes) -----
  @property
  def d_in(self) -> int:
    raise NotImplementedError

  @property
  def d_out(self) -> int:
    raise NotImplementedError

  def _read_weights(self, weights, queries_TxK):
    raise NotImplementedError

  def _chunk(self, carry, ch: dict[str, jax.Array]):
    """One chunk in closed form. Returns (outputs_CxV or None, (memory, momentum))."""
    raise NotImplementedError

  def _token(self, carry, tok: dict[str, jax.Array]):
    """One token of the sequential reference. Returns (output or None, carry)."""
    raise NotImplementedError

  @property
  def has_chunked(self) -> bool:
    return True

  # ----- public API -----
  def init_state(self, params, batch_shape: tuple[int, ...]) -> MemoryState:
    """Broadcasts the meta-learned initial weights to batch_shape (one copy per sequence)."""
    batch_shape = tuple(batch_shape)
    init = self._initial_weights(params)

    def bcast(x):
      head = x.shape[:x.ndim - self._weight_rank(x)]
      if head and tuple(batch_shape[-len(head):]) != tuple(head):
        raise ValueError(f"{type(self).__name__}.init_state: parameter axes {head} must match "
                         f"the trailing batch axes of batch_shape={batch_shape}")
      dtype = state_dtype(x.dtype)
      return jnp.broadcast_to(x.astype(dtype), batch_shape + x.shape[len(head):])

    memory = jax.tree.map(bcast, init)
    return MemoryState(*self._fresh_carry(memory), jnp.zeros(batch_shape, jnp.int32))

  def _fresh_carry(self, memory):
    """(memory, momentum, anchor) of a level that has seen nothing since `memory`."""
    momentum = jax.tree.map(jnp.zeros_like, memory) if self.momentum else None
    anchor = memory if self.semantics == "anchored" else None
    return memory, momentum, anchor

  def read(self, params, state: MemoryState, queries: jax.Array) -> jax.Array:
    """Reads the current fast weights at queries [*batch, T, d_in] without writing."""
    del params
    bshape = self._state_batch_shape(state)
    if queries.shape[:-2] != bshape or queries.shape[-1] != self.d_in:
      raise ValueError(f"{type(self).__name__}.read: queries have shape {queries.shape}, expected "
                       f"{bshape + ('T', self.d_in)}")
    fn = self._read_weights
    for _ in bshape:
      fn = jax.vmap(fn)
    dtype = jax.tree.leaves(state.memory)[0].dtype
    return fn(state.memory, queries.astype(dtype)).astype(queries.dtype)

  def update(self, params, state: MemoryState, inputs: MemoryInputs) -> MemoryState:
    """Writes inputs into the memory; returns the new state (no reads)."""
    _, state = self.scan(params, state, inputs._replace(queries=None))
    return state

  def scan(self, params, state: MemoryState, inputs: MemoryInputs,
           implementation: str | None = None,
           start_aligned: bool = False) -> tuple[jax.Array | None, MemoryState]:
    """Processes a whole sequence: (outputs [*batch, T, d_out], final_state).

    start_aligned: the caller guarantees state.position is a multiple of chunk_size (it
    created the state for this call): aligned chunks then need no front padding, and the
    chunked path runs ceil(T / C) chunks instead of ceil((T + C - 1) / C).

    params are needed only when inputs.reset is given (the state returns to the initial
    weights at every reset). In the chunked path a reset must fall on a chunk start, i.e.
    at a global position (state.position + index) that is a multiple of chunk_size: the
    chunks are aligned to those multiples whenever resets are given, and a misaligned reset
    raises a ValueError when the resets and positions are concrete. Under jit nothing can
    check it, so keep documents aligned (the data pipeline's alignment option) or use
    implementation='sequential', which is exact for resets anywhere. A misaligned reset that
    gets through (under jit) takes effect at the end of its chunk
    (aligned_chunks.reset_flags): no output before it changes, and the new document's tokens
    in that chunk read and write the old memory, which is then dropped. (Before 2026-12-06
    the MLP and matrix memories ignored it and carried the old document on.)
    """
    owner = f"{type(self).__name__}.scan"
    bshape = self._state_batch_shape(state)
    _, t = validate_inputs(owner, inputs, self.d_in, self.d_out, self.momentum, bshape)
    impl = implementation or self.implementation
    check_choice(owner, "implementation", impl, ("auto", "chunked", "sequential"))
    if impl == "auto":
      impl = "chunked" if (self.has_chunked and t >= self.chunk_size) else "sequential"
    if impl == "chunked" and not self.has_chunked:
      raise ValueError(f"{owner}: {type(self).__name__} with semantics={self.semantics!r} has no "
                       "chunk-parallel form; use implementation='sequential' or 'auto'")
    dtype = jax.tree.leaves(state.memory)[0].dtype
    tok = self._prepare(inputs, dtype)
    carry = (state.memory, state.momentum, state.anchor)
    fresh = None
    if inputs.reset is not None:
      if impl == "chunked":
        self._check_reset_alignment(owner, inputs.reset, state.position)
      init = self.init_state(params, bshape).memory
      fresh = self._fresh_carry(jax.tree.map(lambda x, m: x.astype(m.dtype), init, state.memory))
    if impl == "chunked":
      fn = functools.partial(self._scan_chunked_single, start_aligned=start_aligned)
    else:
      fn = self._scan_sequential_single
    for _ in bshape:
      fn = jax.vmap(fn)
    outputs, (memory, momentum, anchor) = fn(carry, state.position, tok, fresh)
    if outputs is not None:
      outputs = outputs.astype(inputs.queries.dtype)
    return outputs, MemoryState(memory, momentum, anchor, state.position + t)

  # ----- internals -----
  def _weight_rank(self, x) -> int:
    return 2

  def _initial_weights(self, params):
    raise NotImplementedError

  def _state_batch_shape(self, state: MemoryState) -> tuple[int, ...]:
    if not isinstance(state, MemoryState):
      raise TypeError(f"{type(self).__name__}: state must be a MemoryState, got "
                      f"{type(state).__name__}")
    return tuple(state.position.shape)

  def _prepare(self, inputs: MemoryInputs, dtype) -> dict[str, jax.Array]:
    """Per-token rule coefficients (single source of truth for both implementations)."""
    cast = lambda x: None if x is None else x.astype(dtype)  # noqa: E731
    k, v, q, eta = cast(inputs.keys), cast(inputs.values), cast(inputs.queries), cast(inputs.eta)
    alpha = jnp.ones_like(eta) if inputs.alpha is None else cast(inputs.alpha)
    coef = rule_coefficients(self.rule, eta, jnp.sum(k * k, axis=-1))
    tok = dict(k=k, v=v, lr=coef.lr, erase=coef.erase,
               g=jnp.full_like(eta, coef.grad_state), alpha=alpha, eta=eta)
    if q is not None:
      tok["q"] = q
    if self.momentum:
      tok["mu"] = cast(inputs.momentum)
    if inputs.reset is not None:
      tok["reset"] = inputs.reset.astype(dtype)
    return tok

  def _check_reset_alignment(self, owner, reset, position):
    check_reset_alignment(owner, reset, position, self.chunk_size)

  @staticmethod
  def _apply_reset(flag, carry, fresh):
    return jax.tree.map(lambda c, f: jnp.where(flag > 0, f, c), carry, fresh)

  def _scan_sequential_single(self, carry, position, tok, fresh=None):
    c = self.chunk_size
    t = tok["k"].shape[0]

    def step(state, x):
      (memory, momentum, anchor), pos = state
      if fresh is not None:
        memory, momentum, anchor = self._apply_reset(x["reset"], (memory, momentum, anchor), fresh)
      out, (memory, momentum, anchor) = self._token((memory, momentum, anchor), x)
      if self.semantics == "anchored":
        boundary = (pos + 1) % c == 0
        anchor = jax.tree.map(lambda m, a: jnp.where(boundary, m, a), memory, anchor)
      return ((memory, momentum, anchor), pos + 1), out

    # Checkpoint blocks of C tokens: the reference keeps O(T / C) states for backward too.
    n_blocks, rem = divmod(t, c)

    def block(state, xs):
      return jax.lax.scan(step, state, xs)

    block_fn = jax.checkpoint(block) if self.remat else block
    state = (carry, position)
    outs = []
    if n_blocks:
      head = jax.tree.map(lambda x: x[:n_blocks * c].reshape((n_blocks, c) + x.shape[1:]), tok)
      state, out = jax.lax.scan(block_fn, state, head)
      if out is not None:
        outs.append(out.reshape((n_blocks * c,) + out.shape[2:]))
    if rem:
      tail = jax.tree.map(lambda x: x[n_blocks * c:], tok)
      state, out = block_fn(state, tail)
      if out is not None:
        outs.append(out)
    carry, _ = state
    outputs = jnp.concatenate(outs, axis=0) if outs else None
    return outputs, carry

  def _scan_chunked_single(self, carry, position, tok, fresh=None, start_aligned=False):
    c = self.chunk_size
    t = tok["k"].shape[0]
    anchored = self.semantics == "anchored"
    # Anchored chunks (and all chunks when resets are given) are aligned to global multiples
    # of C: a call that starts mid-chunk is front-padded with no-op tokens so its first chunk
    # ends at the same boundary as before, and resets land on chunk starts. A call known to
    # start on a boundary (start_aligned) needs neither the padding nor the extra chunk.
    # Without anchors or resets, chunks need not be aligned: the call starts a chunk.
    from_boundary = start_aligned or not (anchored or fresh is not None)
    offset, n = aligned_chunks.layout(t, c, position[None], from_boundary)

    def pad(x, fill):  # one row (this function is vmapped over the batch)
      return aligned_chunks.to_chunks(x[None], offset, n, c, fill)[0]

    dtype = tok["k"].dtype
    valid = pad(jnp.ones((t,), dtype), 0.0)
    padded = {name: pad(x, 1.0 if name in ("alpha", "mu") else 0.0) for name, x in tok.items()}
    padded["valid"] = valid
    if self.retention_order == "before":
      # Retaining first (M' = alpha M) scales the erase and the state part of the gradient.
      padded["erase"] = padded["erase"] * padded["alpha"]
      padded["g"] = padded["g"] * padded["alpha"]
    padded["log_a"] = gates.safe_log_gate(padded["alpha"])
    if self.momentum:
      padded["log_mu"] = gates.safe_log_gate(padded["mu"])

    carry, outs = self._run_chunks(carry, padded, fresh)
    if outs is None:
      return None, carry
    return aligned_chunks.from_chunks(outs[None], offset, t)[0], carry

  def _run_chunks(self, carry, chunks, fresh):
    """Scans _chunk over the stacked chunks; returns (carry, outputs [N, C, ...] or None)."""
    anchored = self.semantics == "anchored"

    def body(carry, ch):
      if fresh is not None:  # aligned_chunks.reset_flags: causal for resets off the grid too
        at_start, inside = aligned_chunks.reset_flags(ch["reset"][None], ch["valid"][None])
        carry = self._apply_reset(at_start[0], carry, fresh)
      out, (memory, momentum) = self._chunk(carry, ch)
      anchor = carry[2]
      if anchored:
        complete = ch["valid"][-1] > 0
        anchor = jax.tree.map(lambda m, a: jnp.where(complete, m, a), memory, anchor)
      carry = (memory, momentum, anchor)
      if fresh is not None:
        carry = self._apply_reset(inside[0], carry, fresh)
      return carry, out

    body_fn = jax.checkpoint(body) if self.remat else body
    return jax.lax.scan(body_fn, carry, chunks)
