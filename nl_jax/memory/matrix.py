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
"""Matrix memory: one linear associative memory M [d_v, d_k] per head and sequence.

Equivalent to the following per-token recurrence (read_at='post', semantics='exact',
retention_order='after'), with rule coefficients from types.rule_coefficients::

    p = M @ k
    decay = alpha * M - erase * outer(p, k)
    grad = outer(lr * (g * p - v), k)
    S = mu * S - grad; M = decay + S          # momentum=True
    M = decay - grad                          # momentum=False
    y = M @ q

semantics='anchored' replaces p in grad (not in decay) by M_anchor @ k,
M_anchor being the state at the last multiple of chunk_size tokens.

The chunked path computes the same function chunk by chunk in closed form (chunk_ops): for
exact semantics it equals the recurrence for every chunk size, reads at every token
included. With alpha = 1 the dgd rule is DeltaNet's delta rule with
beta_t = eta_t / (1 + eta_t ||k_t||^2); with retention_order='before' the gd rule is
Gated DeltaNet, S <- alpha S (I - eta k k^T) + eta v k^T.

Exact semantics without momentum (reads 'post' or 'pre', not first-order) is, for every rule,
a gated delta rule; its chunked path is gated_delta_scan, whose backward pass is written by
hand (saved chunk-start states and per-chunk solves instead of a rematerialised autodiff
of the chunk). The other configurations run the generic closed-form chunks under autodiff.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nl_jax.memory import aligned_chunks, chunk_ops, gated_delta_scan
from nl_jax.memory.base import FastLevel, sg, straight_through


class MatrixMemoryParams(NamedTuple):
  """Outer (slow) parameters: the meta-learned initial state, [*heads, d_v, d_k]."""
  initial: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class MatrixMemory(FastLevel):
  """A matrix fast weight; see the module docstring and FastLevel for the options.

  Attributes:
    key_dim, value_dim: d_k and d_v of M [d_v, d_k].
    custom_backward: where it applies (exact, no momentum), run the chunked path as a custom
      VJP with a hand-written backward (faster). It supports reverse mode only: set False for
      forward-mode autodiff (jax.jvp, jax.jacfwd, Hessians) through the memory.
  """
  key_dim: int
  value_dim: int
  custom_backward: bool = True

  @property
  def d_in(self) -> int:
    return self.key_dim

  @property
  def d_out(self) -> int:
    return self.value_dim

  def init_params(self, rng: jax.Array, head_shape: tuple[int, ...] = (), scale: float = 0.0,
                  dtype=jnp.float32) -> MatrixMemoryParams:
    """Initial state scale * N(0, 1/d_k) (zeros by default, as in DeltaNet / Titans)."""
    shape = tuple(head_shape) + (self.value_dim, self.key_dim)
    init = scale * jax.random.normal(rng, shape, dtype) / jnp.sqrt(self.key_dim).astype(dtype)
    return MatrixMemoryParams(init)

  def _initial_weights(self, params: MatrixMemoryParams):
    init = params.initial
    if init.ndim < 2 or init.shape[-2:] != (self.value_dim, self.key_dim):
      raise ValueError(f"MatrixMemory: params.initial has shape {init.shape}, expected "
                       f"[*heads, {self.value_dim}, {self.key_dim}]")
    return init

  def _read_weights(self, m_VxK, queries_TxK):
    return queries_TxK @ m_VxK.T

  @property
  def _erases(self) -> bool:
    return self.rule in ("dgd", "paper_l2")

  @property
  def _hand_written_backward(self) -> bool:
    """Exact semantics without momentum is a gated delta rule: gated_delta_scan applies."""
    return (self.custom_backward and self.semantics == "exact" and not self.momentum
            and not self.first_order and self.read_at in ("post", "pre"))

  def _run_chunks(self, carry, chunks, fresh):
    if not self._hand_written_backward:
      return super()._run_chunks(carry, chunks, fresh)
    m0, _, anchor = carry
    e = chunks["lr"] * chunks["g"] + (chunks["erase"] if self._erases else 0.0)
    reset = inside = None
    if fresh is not None:
      # aligned_chunks.reset_flags: a document starting inside chunk n restarts chunk n + 1
      # (or the state after the last chunk), so no output before it changes.
      at_start, inside = aligned_chunks.reset_flags(chunks["reset"], chunks["valid"])
      reset = (at_start | jnp.concatenate([jnp.zeros((1,), bool), inside[:-1]])).astype(
          chunks["reset"].dtype)
    out, m_end = gated_delta_scan.chunked_gated_delta(
        m0, chunks["k"], chunks["v"], chunks.get("q"), chunks["lr"], e, chunks["log_a"],
        read_pre=self.read_at == "pre", reset_N=reset,
        fresh_VxK=None if fresh is None else fresh[0])
    if fresh is not None:
      m_end = jnp.where(inside[-1], fresh[0].astype(m_end.dtype), m_end)
    return (m_end, None, anchor), out

  def _chunk(self, carry, ch):
    m0, s0, anchor = carry
    fo = self.first_order
    if fo:
      m0c, s0c, anchor_c = sg(m0), (None if s0 is None else sg(s0)), (None if anchor is None
                                                                         else sg(anchor))
      ch = {name: (x if name == "q" else sg(x)) for name, x in ch.items()}
    else:
      m0c, s0c, anchor_c = m0, s0, anchor
    kern = chunk_ops.decay_kernels(ch["log_a"], ch.get("log_mu"), ch["valid"])
    beta = ch["erase"] if self._erases else None
    k = ch["k"]
    if self.semantics == "anchored":
      writes = ch["lr"][:, None] * (ch["v"] - ch["g"][:, None] * (k @ anchor_c.T))
      sol = chunk_ops.solve_chunk(kern, m0c, s0c, k, beta, writes_CxV=writes)
    else:
      sol = chunk_ops.solve_chunk(kern, m0c, s0c, k, beta, values_CxV=ch["v"], lr_C=ch["lr"],
                                  g_C=ch["g"])
    out = None
    if "q" in ch:
      q = ch["q"]
      if self.read_at == "anchor":
        out = q @ anchor.T
      else:
        out = chunk_ops.read_chunk(kern, sol, m0c, s0c, k, q, before=self.read_at == "pre")
        if fo:
          out = out + q @ (m0 - sg(m0)).T
    m_end, s_end = chunk_ops.final_state(kern, sol, m0c, s0c, k)
    if fo:
      m_end = straight_through(m_end, m0)
      s_end = None if s0 is None else straight_through(s_end, s0)
    return out, (m_end, s_end)

  def _token(self, carry, x):
    m, s, anchor = carry
    fo = self.first_order
    m_in, s_in, anchor_in = m, s, anchor
    if fo:
      m_in = sg(m)
      s_in = None if s is None else sg(s)
      anchor_in = None if anchor is None else sg(anchor)
      x = {name: (v if name == "q" else sg(v)) for name, v in x.items()}
    k, v, lr, erase, g, a = x["k"], x["v"], x["lr"], x["erase"], x["g"], x["alpha"]
    base = anchor_in if self.semantics == "anchored" else m_in
    if self.retention_order == "before":
      kept = a * m_in
      decay = kept - erase * jnp.outer(kept @ k, k)
      base = a * base
    else:
      decay = a * m_in - erase * jnp.outer(m_in @ k, k)
    grad = jnp.outer(lr * (g * (base @ k) - v), k)
    if self.momentum:
      s_new = x["mu"] * s_in - grad
      m_new = decay + s_new
    else:
      s_new, m_new = None, decay - grad
    if fo:
      m_new = straight_through(m_new, m)
      s_new = None if s is None else straight_through(s_new, s)
    out = None
    if "q" in x:
      read_from = {"post": m_new, "pre": m, "anchor": anchor}[self.read_at]
      out = read_from @ x["q"]
    return out, (m_new, s_new, anchor)
