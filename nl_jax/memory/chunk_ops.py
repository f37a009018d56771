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
"""Closed-form chunk algebra for a matrix fast weight with rank-1 erases and writes.

One chunk of C tokens, one sequence, one weight M of shape [d_v, d_k] (for an MLP
memory each layer is such a weight). Per token i, with p_i = M_{i-1} k_i::

    M_i = a_i M_{i-1} - beta_i p_i k_i^T + (S_i if momentum else w_i k_i^T)
    S_i = mu_i S_{i-1} + w_i k_i^T

Unrolling from the chunk's first state (M_0, S_0)::

    M_i = gamma_i M_0 + rho_i S_0 + sum_{s<=i} (Kw[i,s] w_s - Ke[i,s] beta_s p_s) k_s^T

with Ke[i,s] = prod_{s<r<=i} a_r, Kw = Ke diag(valid) Pm under momentum
(Pm[s,j] = prod_{j<r<=s} mu_r) and Kw = Ke without. The predictions p then solve a
unit lower-triangular C x C system (the UT transform of DeltaNet / Gated DeltaNet; ``unit_lower_inverse``), after
which every read, and the final state, is a handful of matmuls. Writes either depend on the
predictions (exact semantics: w_i = lr_i (v_i - g_i p_i)) or are known in advance
(anchored semantics: gradients taken at the chunk's anchor).

Tokens with valid = 0 (padding) must come with a = 1, beta = 0, w = 0, mu = 1; they
then leave the state exactly unchanged.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nl_jax.memory import gates


class ChunkKernels(NamedTuple):
  """Decay products of one chunk (shared by every weight driven by the same gates)."""
  kw_CxC: jax.Array      # write -> state coefficient, row i: state after token i
  ke_CxC: jax.Array      # erase -> state coefficient
  gamma_C: jax.Array     # coefficient of M_0 in M_i
  rho_C: jax.Array | None  # coefficient of S_0 in M_i (momentum only)
  pm_last_C: jax.Array | None  # S_end = pi_last S_0 + sum_j pm_last[j] w_j k_j^T
  pi_last: jax.Array | None


def shift_rows(x: jax.Array, first) -> jax.Array:
  """Row i of the result is row i-1 of x (the state *before* token i); row 0 is first."""
  head = jnp.full_like(x[:1], first)
  return jnp.concatenate([head, x[:-1]], axis=0)


def decay_kernels(log_a_C: jax.Array, log_mu_C: jax.Array | None,
                  valid_C: jax.Array) -> ChunkKernels:
  """Builds the decay products of a chunk from clipped log gates."""
  ke_CxC, gamma_C = gates.segment_log_products(log_a_C)
  if log_mu_C is None:
    return ChunkKernels(ke_CxC, ke_CxC, gamma_C, None, None, None)
  pm_CxC, pi_C = gates.segment_log_products(log_mu_C)
  kw_CxC = ke_CxC @ (valid_C[:, None] * pm_CxC)
  rho_C = ke_CxC @ (valid_C * pi_C)
  return ChunkKernels(kw_CxC, ke_CxC, gamma_C, rho_C, pm_CxC[-1], pi_C[-1])


def _state_reads(kern: ChunkKernels, m0: jax.Array, s0: jax.Array | None, keys_CxK: jax.Array,
                 w_CxV: jax.Array, bp_CxV: jax.Array, x_CxK: jax.Array, before: bool):
  """Computes M_i x_i (after token i) or M_{i-1} x_i (before) for every i."""
  kw, ke, gamma, rho = kern.kw_CxC, kern.ke_CxC, kern.gamma_C, kern.rho_C
  if before:
    kw, ke = shift_rows(kw, 0.0), shift_rows(ke, 0.0)
    gamma = shift_rows(gamma, 1.0)
    rho = None if rho is None else shift_rows(rho, 0.0)
  gram_CxC = x_CxK @ keys_CxK.T
  out = gamma[:, None] * (x_CxK @ m0.T) + (kw * gram_CxC) @ w_CxV - (ke * gram_CxC) @ bp_CxV
  if rho is not None:
    out = out + rho[:, None] * (x_CxK @ s0.T)
  return out


def unit_lower_inverse(a_CxC: jax.Array) -> jax.Array:
  """``(I + a)^-1`` for strictly lower-triangular ``a``, by recursive 2x2 blocking.

  Bottom-up over block sizes 1, 2, 4, ...: with the inverses of the two diagonal halves of a
  block known, the block's inverse is ``[[X11, 0], [-X22 L21 X11, X22]]``. This is the blocked
  triangular inverse (no powers of the strictly lower matrix are formed), ``log2 C`` levels of
  batched matmuls with a total cost of about one ``C x C x C`` product. XLA:CPU's
  ``triangular_solve`` inside a differentiated ``scan`` was seen to deadlock intermittently
  (jax 0.10.2, [8, 4] batch of 64 x 64 systems), so it is not used.

  Only the strictly lower triangle of ``a`` is read. Derivatives are written by hand
  (``_unit_lower_inverse_jvp``): ``dX = -X tril(da, -1) X``, whose transpose is the backward
  ``abar = -tril(X^T Xbar X^T, -1)``, two matmuls with the saved inverse instead of the
  transposes of every level of the recursion (and none of its intermediates kept).
  """
  if a_CxC.shape[-1] == 1:
    # No strictly lower entries: the inverse is 1 and a constant. (Through the custom JVP the
    # constant primal and the tangent built from da were batched differently under vmap, and
    # the gradient of a chunk-1 scan failed to transpose.)
    return jnp.ones_like(a_CxC)
  return _unit_lower_inverse(a_CxC)


@jax.custom_jvp
def _unit_lower_inverse(a_CxC: jax.Array) -> jax.Array:
  return _blocked_unit_lower_inverse(a_CxC)


@_unit_lower_inverse.defjvp
def _unit_lower_inverse_jvp(primals, tangents):
  (a_CxC,), (da_CxC,) = primals, tangents
  x_CxC = _unit_lower_inverse(a_CxC)
  # d(I + a)^-1 = -X da X; the recursion ignores every entry on or above the diagonal.
  return x_CxC, -(x_CxC @ jnp.tril(da_CxC, -1) @ x_CxC)


def _blocked_unit_lower_inverse(a_CxC: jax.Array) -> jax.Array:
  """The forward of ``unit_lower_inverse`` (plain matmuls, differentiable by autodiff too)."""
  c = a_CxC.shape[0]
  size = 1 << max(0, (c - 1).bit_length())
  l_full = jnp.eye(size, dtype=a_CxC.dtype).at[:c, :c].add(a_CxC)
  inv = jnp.ones((size, 1, 1), a_CxC.dtype)  # inverses of the 1 x 1 diagonal blocks
  b = 1
  while b < size:
    n2 = size // (2 * b)
    blocks = jnp.diagonal(l_full.reshape(n2, 2 * b, n2, 2 * b), axis1=0, axis2=2)
    blocks = jnp.moveaxis(blocks, -1, 0)  # [n2, 2b, 2b] diagonal blocks of size 2b
    x11, x22 = inv[0::2], inv[1::2]
    x21 = -x22 @ blocks[:, b:, :b] @ x11
    top = jnp.concatenate([x11, jnp.zeros_like(x11)], axis=2)
    bottom = jnp.concatenate([x21, x22], axis=2)
    inv = jnp.concatenate([top, bottom], axis=1)
    b *= 2
  return inv[0, :c, :c]


class EraseSystem(NamedTuple):
  """The triangular system of a chunk with known writes: the keys' Gram matrix and
  ``(I + a)^-1``. It depends on the keys, gates and erase coefficients alone, so every weight
  written with them (the first layers of memories that share their keys) solves with one."""
  gram_CxC: jax.Array
  inverse_CxC: jax.Array


def erase_system(kern: ChunkKernels, keys_CxK: jax.Array, beta_C: jax.Array) -> EraseSystem:
  """The known-writes system of ``solve_chunk`` (a strictly lower, so I + a unit lower)."""
  gram_CxC = keys_CxK @ keys_CxK.T
  a_CxC = shift_rows(kern.ke_CxC, 0.0) * beta_C[None, :] * gram_CxC
  return EraseSystem(gram_CxC, unit_lower_inverse(a_CxC))


class ChunkSolution(NamedTuple):
  writes_CxV: jax.Array   # w_i
  erased_CxV: jax.Array   # beta_i p_i


def solve_chunk(kern: ChunkKernels, m0: jax.Array, s0: jax.Array | None, keys_CxK: jax.Array,
                beta_C: jax.Array | None, *, writes_CxV: jax.Array | None = None,
                values_CxV: jax.Array | None = None, lr_C: jax.Array | None = None,
                g_C: jax.Array | None = None, system: EraseSystem | None = None
                ) -> ChunkSolution:
  """Solves for the in-chunk predictions p_i = M_{i-1} k_i and the writes.

  Pass writes_CxV (anchored: known writes) or values_CxV, lr_C, g_C (exact: writes
  lr_i (v_i - g_i p_i) that depend on the predictions). With known writes, ``system`` is
  ``erase_system(kern, keys_CxK, beta_C)`` when the caller shares it between weights.
  """
  exact = writes_CxV is None
  if beta_C is None and not exact:
    # No erase and known writes: predictions are not needed at all.
    return ChunkSolution(writes_CxV, jnp.zeros_like(writes_CxV))
  beta_C = jnp.zeros_like(lr_C) if beta_C is None else beta_C
  kwp = shift_rows(kern.kw_CxC, 0.0)
  gammap = shift_rows(kern.gamma_C, 1.0)
  rhs_CxV = gammap[:, None] * (keys_CxK @ m0.T)
  if kern.rho_C is not None:
    rhs_CxV = rhs_CxV + shift_rows(kern.rho_C, 0.0)[:, None] * (keys_CxK @ s0.T)
  if exact:
    gram_CxC = keys_CxK @ keys_CxK.T
    kep = shift_rows(kern.ke_CxC, 0.0)
    a_CxC = (kwp * (lr_C * g_C)[None, :] + kep * beta_C[None, :]) * gram_CxC
    rhs_CxV = rhs_CxV + (kwp * lr_C[None, :] * gram_CxC) @ values_CxV
    # a_CxC is strictly lower triangular (shifted kernels), so I + a is unit lower triangular.
    inverse_CxC = unit_lower_inverse(a_CxC)
  else:
    system = erase_system(kern, keys_CxK, beta_C) if system is None else system
    rhs_CxV = rhs_CxV + (kwp * system.gram_CxC) @ writes_CxV
    inverse_CxC = system.inverse_CxC
  p_CxV = inverse_CxC @ rhs_CxV
  if exact:
    writes_CxV = lr_C[:, None] * (values_CxV - g_C[:, None] * p_CxV)
  return ChunkSolution(writes_CxV, beta_C[:, None] * p_CxV)


def read_chunk(kern: ChunkKernels, sol: ChunkSolution, m0, s0, keys_CxK, queries_CxK,
               before: bool) -> jax.Array:
  """Reads M_i q_i (before=False) or M_{i-1} q_i (before=True)."""
  return _state_reads(kern, m0, s0, keys_CxK, sol.writes_CxV, sol.erased_CxV, queries_CxK, before)


def final_state(kern: ChunkKernels, sol: ChunkSolution, m0, s0, keys_CxK):
  """The state (and momentum) after the chunk's last token."""
  u_CxV = kern.kw_CxC[-1][:, None] * sol.writes_CxV - kern.ke_CxC[-1][:, None] * sol.erased_CxV
  m_end = kern.gamma_C[-1] * m0 + u_CxV.T @ keys_CxK
  if kern.rho_C is None:
    return m_end, None
  m_end = m_end + kern.rho_C[-1] * s0
  s_end = kern.pi_last * s0 + (kern.pm_last_C[:, None] * sol.writes_CxV).T @ keys_CxK
  return m_end, s_end
