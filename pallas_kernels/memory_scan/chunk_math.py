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
"""One chunk of the matrix-memory scan in closed form, written for Pallas kernel bodies.

The same algebra as ``nl_jax.memory.chunk_ops`` (see reference.py for the recurrence), restated
with only the operations that lower on both Mosaic (TPU) and Triton (GPU): 2-D matmuls,
elementwise maths, iota masks and keepdims reductions. No cumsum, no slicing of values, no
1-D vectors; per-token scalars are [C, 1] columns and become [1, C] rows through a masked
reduction. The same function runs in the forward kernels and, under ``jax.vjp``, in the
backward kernels (which recompute the chunk from its initial state).

Products of gates are formed inside one chunk only, as exponentials of segment sums of the
clipped log gates (each sum holds just the terms of its segment, computed as a matmul with a
0/1 matrix at full precision), so nothing overflows and nothing is differenced.
The unit lower-triangular solve of the intra-chunk predictions uses the blocked (doubling)
inverse: with X the inverse of the diagonal b-blocks, X <- X - X L_b X adds the off-diagonal
halves of the 2b-blocks; log2(C) levels, no powers of the strictly lower matrix.
"""

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def dot(a, b):
  """a @ b for 2-D a [m, k], b [k, n] at full precision."""
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_HI,
                             preferred_element_type=a.dtype)


def dot_t(a, b):
  """a @ b.T for a [m, k], b [n, k]."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HI,
                             preferred_element_type=a.dtype)


def t_dot(a, b):
  """a.T @ b for a [k, m], b [k, n]."""
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=_HI,
                             preferred_element_type=a.dtype)


class _Masks:
  """0/1 structure of a C x C chunk matrix, built from iotas."""

  def __init__(self, c: int):
    self.c = c
    self.row = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
    self.col = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
    self.eye = self.row == self.col
    self.incl = self.row >= self.col
    self.strict = self.row > self.col
    self.later = self.col > self.row

  def to_row(self, x_Cx1):
    return jnp.sum(jnp.where(self.eye, x_Cx1, 0.0), axis=0, keepdims=True)

  def to_col(self, x_1xC):
    return jnp.sum(jnp.where(self.eye, x_1xC, 0.0), axis=1, keepdims=True)


def _decays(mk: _Masks, log_Cx1):
  """Segment products of one gate sequence g over the chunk.

  Returns:
    incl_CxC[i, s] = prod_{s<r<=i} g_r (s <= i, else 0),
    excl_CxC[i, s] = prod_{s<r<i} g_r (s < i, else 0)  (the same, one token earlier),
    prefix_Cx1[i] = prod_{r<=i} g_r, prev_prefix_Cx1[i] = prod_{r<i} g_r,
    tail_Cx1[s] = prod_{s<r<C} g_r, total_1x1 = prod_r g_r.
  """
  dtype = log_Cx1.dtype
  x_CxC = jnp.where(mk.strict, log_Cx1, 0.0)  # x[r, s] = log g_r for r > s
  seg_incl = dot(mk.incl.astype(dtype), x_CxC)
  seg_excl = dot(mk.strict.astype(dtype), x_CxC)
  incl = jnp.where(mk.incl, jnp.exp(jnp.where(mk.incl, seg_incl, 0.0)), 0.0)
  excl = jnp.where(mk.strict, jnp.exp(jnp.where(mk.strict, seg_excl, 0.0)), 0.0)
  log_1xC = mk.to_row(log_Cx1)
  prefix = jnp.exp(jnp.sum(jnp.where(mk.incl, log_1xC, 0.0), axis=1, keepdims=True))
  prev_prefix = jnp.exp(jnp.sum(jnp.where(mk.strict, log_1xC, 0.0), axis=1, keepdims=True))
  tail = jnp.exp(jnp.sum(jnp.where(mk.later, log_1xC, 0.0), axis=1, keepdims=True))
  total = jnp.exp(jnp.sum(log_1xC, axis=1, keepdims=True))
  return incl, excl, prefix, prev_prefix, tail, total


def unit_lower_inverse(mk: _Masks, a_CxC):
  """(I + a)^-1 for strictly lower-triangular a by blocked doubling (C a power of two)."""
  x = mk.eye.astype(a_CxC.dtype)
  b = 1
  while b < mk.c:
    shift = b.bit_length() - 1
    same_pair = (mk.row >> (shift + 1)) == (mk.col >> (shift + 1))
    other_half = (mk.row >> shift) != (mk.col >> shift)
    off = jnp.where(same_pair & other_half, a_CxC, 0.0)
    x = x - dot(dot(x, off), x)
    b *= 2
  return x


def chunk_step(m0_VxK, s0_VxK, k_CxK, v_CxV, q_CxK, log_a_Cx1, lr_Cx1, beta_Cx1, g_Cx1,
               log_mu_Cx1, valid_Cx1):
  """Reads and end state of one chunk from its initial state (momentum iff s0 is given).

  Args:
    m0_VxK: memory before the chunk (a block of its rows), state dtype.
    s0_VxK: momentum before the chunk, or None.
    k_CxK, v_CxV, q_CxK: the chunk's keys, values (same rows as m0) and queries.
    log_a_Cx1, lr_Cx1, beta_Cx1, g_Cx1: clipped log retention, learning rate, erase and
      gradient-state coefficients per token (padding tokens: 0, 0, 0, 0).
    log_mu_Cx1, valid_Cx1: clipped log momentum decay and 1/0 validity (momentum only; padding
      tokens: 0 and 0), else None.

  Returns:
    (y_CxV = M_i q_i for every token, m_end_VxK, s_end_VxK or None).
  """
  dtype = m0_VxK.dtype
  c = k_CxK.shape[0]
  mk = _Masks(c)
  k, v, q = k_CxK.astype(dtype), v_CxV.astype(dtype), q_CxK.astype(dtype)
  ke, kep, gamma, gammap, ke_last, gamma_last = _decays(mk, log_a_Cx1)
  momentum = s0_VxK is not None
  if momentum:
    pm, _, pi, _, pm_last, pi_last = _decays(mk, log_mu_Cx1)
    vpm = valid_Cx1 * pm  # diag(valid) Pm: padding tokens do not add the momentum
    kw, kwp = dot(ke, vpm), dot(kep, vpm)
    vpi_1xC = mk.to_row(valid_Cx1 * pi)
    rho = jnp.sum(ke * vpi_1xC, axis=1, keepdims=True)
    rhop = jnp.sum(kep * vpi_1xC, axis=1, keepdims=True)
    rho_last = jnp.sum(ke_last * valid_Cx1 * pi, axis=0, keepdims=True)
    kw_last = mk.to_col(jnp.sum((ke_last * valid_Cx1) * pm, axis=0, keepdims=True))
  else:
    kw, kwp, kw_last = ke, kep, ke_last
  gram = dot_t(k, k)
  # Predictions p_i = M_{i-1} k_i solve (I + A) P = rhs, A strictly lower triangular.
  a = (kwp * mk.to_row(lr_Cx1 * g_Cx1) + kep * mk.to_row(beta_Cx1)) * gram
  rhs = gammap * dot_t(k, m0_VxK) + dot(kwp * gram, lr_Cx1 * v)
  if momentum:
    rhs = rhs + rhop * dot_t(k, s0_VxK)
  p = dot(unit_lower_inverse(mk, a), rhs)
  w = lr_Cx1 * (v - g_Cx1 * p)
  e = beta_Cx1 * p
  qk = dot_t(q, k)
  y = gamma * dot_t(q, m0_VxK) + dot(kw * qk, w) - dot(ke * qk, e)
  u = kw_last * w - ke_last * e
  m_end = gamma_last * m0_VxK + t_dot(u, k)
  s_end = None
  if momentum:
    y = y + rho * dot_t(q, s0_VxK)
    m_end = m_end + rho_last * s0_VxK
    s_end = pi_last * s0_VxK + t_dot(pm_last * w, k)
  return y, m_end, s_end
