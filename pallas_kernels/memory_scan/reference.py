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
"""The executable spec of the chunked matrix-memory scan (pure jnp, autodiff backward).

Per token t (one sequence, one head; M the [d_v, d_k] memory, S its momentum), with the
coefficients of ``nl_jax.memory.types.rule_coefficients`` (lr, erase, g) and retention a::

    p = M k
    w = lr (v - g p)
    S = mu S + w k^T ;  M = a M - erase p k^T + S      (momentum)
                        M = a M - erase p k^T + w k^T  (no momentum)
    y = M q                                            (read after the write)

which is ``MatrixMemory(semantics="exact", read_at="post").scan``. The kernels and this file
share one packed per-token layout: ``scalars_NxTxS`` with the columns named below (log gates
clipped at ``gates.LOG_GATE_MIN``). `reference_core` walks the chunks with
``nl_jax.memory.chunk_ops`` (a ``lax.scan`` with each chunk rematerialised, so its autodiff
backward keeps one state per chunk); `sequential_core` is the literal token loop.
"""

import math

import jax
import jax.numpy as jnp

from nl_jax.memory import chunk_ops, gates
from nl_jax.memory.types import rule_coefficients

# Columns of the packed per-token scalars.
LOG_A, LR, BETA, G, LOG_MU, VALID = range(6)
NUM_SCALARS = 8  # padded to 8 so a [C, 8] block is a legal TPU tile


def pack_scalars(keys: jax.Array, eta: jax.Array, alpha: jax.Array | None,
                 momentum: jax.Array | None, rule: str,
                 retention_order: str = "after") -> jax.Array:
  """Per-token coefficients of the rule, packed as [..., T, NUM_SCALARS] (float32 or f64).

  Args:
    keys: [..., T, d_k] keys (their squared norm enters the dgd rule).
    eta: [..., T] inner learning rate.
    alpha: [..., T] retention in [0, 1] or None (= 1).
    momentum: [..., T] momentum decay in [0, 1) or None (no momentum).
    rule: one of nl_jax.memory.RULES.
    retention_order: "after" or "before" (retain first, then erase and take the gradient).

  Returns:
    The packed scalars; padding columns and VALID are 0 (the kernels set VALID themselves).
  """
  dtype = jnp.promote_types(eta.dtype, jnp.float32)
  eta = eta.astype(dtype)
  k = keys.astype(dtype)
  coef = rule_coefficients(rule, eta, jnp.sum(k * k, axis=-1))
  alpha = jnp.ones_like(eta) if alpha is None else alpha.astype(dtype)
  erase = coef.erase * jnp.ones_like(eta)
  g = jnp.full_like(eta, coef.grad_state)
  if retention_order == "before":
    # Retaining first (M' = alpha M) scales the erase and the state part of the gradient.
    erase, g = erase * alpha, g * alpha
  log_mu = (jnp.zeros_like(eta) if momentum is None
            else gates.safe_log_gate(momentum.astype(dtype)))
  zero = jnp.zeros_like(eta)
  cols = [gates.safe_log_gate(alpha), coef.lr * jnp.ones_like(eta), erase, g, log_mu, zero,
          zero, zero]
  return jnp.stack(cols, axis=-1)


def pad_time(x: jax.Array, length: int, fill: float = 0.0) -> jax.Array:
  """Pads axis 1 ([N, T, ...]) to `length` with `fill`."""
  pad = length - x.shape[1]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, pad)
  return jnp.pad(x, widths, constant_values=fill)


def reference_core(k_NxTxK: jax.Array, v_NxTxV: jax.Array, q_NxTxK: jax.Array,
                   sc_NxTxS: jax.Array, m0_NxVxK: jax.Array, s0_NxVxK: jax.Array | None, *,
                   chunk_size: int = 64):
  """Chunk-parallel scan with nl_jax.memory.chunk_ops (the XLA path).

  Args:
    k_NxTxK, v_NxTxV, q_NxTxK: keys, values, queries of N independent sequences.
    sc_NxTxS: packed scalars (`pack_scalars`).
    m0_NxVxK: initial memory; its dtype is the state dtype (float32, or float64 under x64).
    s0_NxVxK: initial momentum, or None for no momentum.
    chunk_size: C; any T works (the last chunk is padded with no-op tokens).

  Returns:
    (y_NxTxV in the state dtype, m_NxVxK, s_NxVxK or None).
  """
  dtype = m0_NxVxK.dtype
  n, t, _ = k_NxTxK.shape
  c = chunk_size
  nc = max(1, math.ceil(t / c))
  tp = nc * c
  momentum = s0_NxVxK is not None
  k, v, q = (pad_time(x.astype(dtype), tp) for x in (k_NxTxK, v_NxTxV, q_NxTxK))
  sc = pad_time(sc_NxTxS.astype(dtype), tp)
  valid = pad_time(jnp.ones((n, t), dtype), tp)

  def chunked(x):
    return jnp.swapaxes(x.reshape((n, nc, c) + x.shape[2:]), 0, 1)  # [NC, N, C, ...]

  xs = dict(k=chunked(k), v=chunked(v), q=chunked(q), sc=chunked(sc), valid=chunked(valid))

  def one(m0, s0, ch):
    log_mu = ch["sc"][:, LOG_MU] if momentum else None
    kern = chunk_ops.decay_kernels(ch["sc"][:, LOG_A], log_mu, ch["valid"])
    sol = chunk_ops.solve_chunk(kern, m0, s0, ch["k"], ch["sc"][:, BETA], values_CxV=ch["v"],
                                lr_C=ch["sc"][:, LR], g_C=ch["sc"][:, G])
    y = chunk_ops.read_chunk(kern, sol, m0, s0, ch["k"], ch["q"], before=False)
    m_end, s_end = chunk_ops.final_state(kern, sol, m0, s0, ch["k"])
    return y, m_end, s_end

  @jax.checkpoint
  def body(carry, ch):
    m, s = carry
    y, m, s = jax.vmap(one, in_axes=(0, 0 if momentum else None, 0))(m, s, ch)
    return (m, s), y

  (m, s), y = jax.lax.scan(body, (m0_NxVxK, s0_NxVxK), xs)
  y = jnp.swapaxes(y, 0, 1).reshape(n, tp, -1)[:, :t]
  return y, m, s


def sequential_core(k_NxTxK, v_NxTxV, q_NxTxK, sc_NxTxS, m0_NxVxK, s0_NxVxK):
  """The token loop, written as literally as the recurrence (for float64 exactness checks)."""
  dtype = m0_NxVxK.dtype
  momentum = s0_NxVxK is not None

  def one(m, s, k, v, q, sc):
    def step(carry, x):
      m, s = carry
      k, v, q, sc = x
      p = m @ k
      w = sc[LR] * (v - sc[G] * p)
      m_new = jnp.exp(sc[LOG_A]) * m - sc[BETA] * jnp.outer(p, k)
      if momentum:
        s = jnp.exp(sc[LOG_MU]) * s + jnp.outer(w, k)
        m_new = m_new + s
      else:
        m_new = m_new + jnp.outer(w, k)
      return (m_new, s), m_new @ q

    (m, s), y = jax.lax.scan(step, (m, s), (k, v, q, sc))
    return y, m, s

  cast = lambda x: x.astype(dtype)  # noqa: E731
  return jax.vmap(one, in_axes=(0, 0 if momentum else None, 0, 0, 0, 0))(
      m0_NxVxK, s0_NxVxK, cast(k_NxTxK), cast(v_NxTxV), cast(q_NxTxK), cast(sc_NxTxS))
