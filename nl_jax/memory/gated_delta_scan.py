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
"""Chunked scan of a gated delta rule with a hand-written backward pass.

The exact semantics of a matrix memory without momentum is, for every inner rule, the
recurrence (one sequence, state M [d_v, d_k])::

    u_i = lr_i v_i - e_i M_{i-1} k_i          # net write: the rule's write minus its erase
    M_i = a_i M_{i-1} + u_i k_i^T
    y_i = M_i q_i   (read 'post')   or   M_{i-1} q_i   (read 'pre')

with e_i = lr_i g_i + beta_i (types.rule_coefficients). Per chunk of C tokens with the
in-chunk decay products D[i, s] = prod_{s<r<=i} a_r and G_i = prod_{r<=i} a_r (from
``gates.segment_log_products``, never an exp of a long cumulative sum)::

    A = (e Dp) o (K K^T)                      # strictly lower; Dp, Gp: D, G shifted one row
    U = (I + A)^-1 (lr V - (e Gp) o (K M_0^T))   # the UT transform
    Y = Gr o (Q M_0^T) + (Dr o Q K^T) U         # reads; Dr, Gr = D, G (post) or Dp, Gp (pre)
    M_C = G_C M_0 + U^T (D_C o K)

Autodiff of this through a rematerialised scan runs every chunk forward twice and transposes
every product of it. ``chunked_gated_delta`` instead saves, per chunk, the chunk-start state,
U, the inverse and the Gram matrices (all O(T) in total), and runs a reverse loop whose body
is the transposed chunk written out by hand: 10 matmuls per chunk, no recomputed chunk and no
recomputed inverse. Gradients flow to every input (the decays through their logs).
"""

import functools

import jax
import jax.numpy as jnp

from nl_jax.memory import chunk_ops, gates


def _unshift(dx):
  """Transpose of chunk_ops.shift_rows (for cotangents): row i is row i+1 of dx, the last row is zero."""
  return jnp.concatenate([dx[1:], jnp.zeros_like(dx[:1])], axis=0)


def _chunk_gates(d_CxC, g_C, read_pre):
  """(Dp, Gp, Dr, Gr) of one chunk from its decay products D, G."""
  dp_CxC, gp_C = chunk_ops.shift_rows(d_CxC, 0.0), chunk_ops.shift_rows(g_C, 1.0)
  if read_pre:
    return dp_CxC, gp_C, dp_CxC, gp_C
  return dp_CxC, gp_C, d_CxC, g_C


def _chunk_forward(m0_VxK, k_CxK, v_CxV, q_CxK, lr_C, e_C, d_CxC, g_C, read_pre):
  """One chunk; returns (y_CxV or None, m_end, residuals for the backward pass)."""
  c = k_CxK.shape[0]
  dp, gp, dr, gr = _chunk_gates(d_CxC, g_C, read_pre)
  kq = k_CxK if q_CxK is None else jnp.concatenate([k_CxK, q_CxK], axis=0)
  z2 = kq @ m0_VxK.T            # [K; Q] M_0^T, one matmul for both
  gram2 = kq @ k_CxK.T          # [K K^T; Q K^T]
  a_CxC = (e_C[:, None] * dp) * gram2[:c]
  t_CxC = chunk_ops.unit_lower_inverse(a_CxC)
  r_CxV = lr_C[:, None] * v_CxV - (e_C * gp)[:, None] * z2[:c]
  u_CxV = t_CxC @ r_CxV
  y = None
  if q_CxK is not None:
    y = gr[:, None] * z2[c:] + (dr * gram2[c:]) @ u_CxV
  m_end = g_C[-1] * m0_VxK + u_CxV.T @ (d_CxC[-1][:, None] * k_CxK)
  return y, m_end, (m0_VxK, u_CxV, t_CxC, gram2)


def _chunk_backward(res, dy_CxV, dm_end, k_CxK, v_CxV, q_CxK, lr_C, e_C, d_CxC, g_C, read_pre):
  """Transpose of _chunk_forward: (dm0, dk, dv, dq, dlr, de, dD, dG)."""
  m0, u_CxV, t_CxC, gram2 = res
  c = k_CxK.shape[0]
  dp, gp, dr, gr = _chunk_gates(d_CxC, g_C, read_pre)
  d_last, g_last = d_CxC[-1], g_C[-1]
  kk = gram2[:c]

  # m_end = g_last m0 + U^T (d_last o K)
  kd_CxK = d_last[:, None] * k_CxK
  dm0 = g_last * dm_end
  dg_last = jnp.sum(dm_end * m0)
  du_CxV = kd_CxK @ dm_end.T
  dkd_CxK = u_CxV @ dm_end
  dk_CxK = d_last[:, None] * dkd_CxK
  dd_last = jnp.sum(dkd_CxK * k_CxK, axis=-1)

  # Y = gr o (Q m0^T) + (dr o Q K^T) U
  ddr = dqk = None
  if q_CxK is not None:
    p_CxC = dr * gram2[c:]
    du_CxV = du_CxV + p_CxC.T @ dy_CxV
    dp_CxC = dy_CxV @ u_CxV.T
    dqk = dr * dp_CxC
    ddr = dp_CxC * gram2[c:]

  # U = T R, T = (I + A)^-1: dR = T^T dU and dA = -T^T dU R^T T^T = -dR U^T.
  dr_CxV = t_CxC.T @ du_CxV
  da_CxC = -(dr_CxV @ u_CxV.T)
  # R = lr V - (e gp) o (K m0^T)
  dv_CxV = lr_C[:, None] * dr_CxV
  dlr = jnp.sum(v_CxV * dr_CxV, axis=-1)
  # A = (e dp) o KK
  w_CxC = dp * kk * da_CxC
  ddp = e_C[:, None] * kk * da_CxC
  dkk = e_C[:, None] * dp * da_CxC

  # The m0 products of R and Y: their cotangents are (-(e gp) o dR) and (gr o dY). With
  # [dR; dY] m0 in hand, the gate gradients need no saved K m0^T or Q m0^T:
  # sum_v (K m0^T)[i, v] dR[i, v] = sum_k K[i, k] (dR m0)[i, k].
  egp = e_C * gp
  dkk_sym = dkk + dkk.T
  if q_CxK is None:
    drm_CxK = dr_CxV @ m0
    dm0 = dm0 - (egp[:, None] * dr_CxV).T @ k_CxK
    dk_CxK = dk_CxK - egp[:, None] * drm_CxK + dkk_sym @ k_CxK
    dq_CxK = dgr = None
  else:
    kq = jnp.concatenate([k_CxK, q_CxK], axis=0)
    drm2 = jnp.concatenate([dr_CxV, dy_CxV], axis=0) @ m0
    drm_CxK = drm2[:c]
    scale_2C = jnp.concatenate([-egp, gr])
    dm0 = dm0 + (scale_2C[:, None] * jnp.concatenate([dr_CxV, dy_CxV], axis=0)).T @ kq
    dkq = scale_2C[:, None] * drm2 + jnp.concatenate([dkk_sym, dqk], axis=0) @ k_CxK
    dk_CxK = dk_CxK + dkq[:c] + dqk.T @ q_CxK
    dq_CxK = dkq[c:]
    dgr = jnp.sum(q_CxK * drm2[c:], axis=-1)
  egp_grad = -jnp.sum(k_CxK * drm_CxK, axis=-1)
  de = gp * egp_grad + jnp.sum(w_CxC, axis=-1)
  dgp = e_C * egp_grad

  # Cotangents of D and G (Dp, Gp are D, G shifted down one row).
  if ddr is not None and read_pre:
    ddp, dgp = ddp + ddr, dgp + dgr
  dd, dg = _unshift(ddp), _unshift(dgp)
  if ddr is not None and not read_pre:
    dd, dg = dd + ddr, dg + dgr
  dd = dd.at[-1].add(dd_last)
  dg = dg.at[-1].add(dg_last)
  return dm0, dk_CxK, dv_CxV, dq_CxK, dlr, de, dd, dg


def _reset_carry(m, reset, fresh):
  if reset is None:
    return m
  return jnp.where(reset > 0, fresh, m)


def chunk_loop(body, carry, xs, *, reverse: bool = False):
  """``lax.scan(body, carry, xs, reverse=reverse)`` that reads xs and writes ys in place.

  Chunk j is read with a dynamic slice of each stacked input and its outputs are written
  with a dynamic update slice into a preallocated buffer. Under ``vmap`` (a batch of
  sequences) a scan over xs first moves the chunk axis in front of the batch axes, a full
  transpose of every input and output; indexing keeps the caller's layout.
  """
  n = jax.tree.leaves(xs)[0].shape[0]
  first = jax.tree.map(lambda a: a[0], xs)
  ys_shape = jax.eval_shape(lambda c, x: body(c, x)[1], carry, first)
  ys = jax.tree.map(lambda sd: jnp.zeros((n,) + sd.shape, sd.dtype), ys_shape)

  def step(i, state):
    carry, ys = state
    j = n - 1 - i if reverse else i
    x = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, j, 0, keepdims=False), xs)
    carry, y = body(carry, x)
    ys = jax.tree.map(lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, j, 0), ys, y)
    return carry, ys

  return jax.lax.fori_loop(0, n, step, (carry, ys))


def _forward_scan(m_init, fresh, reset_N, k, v, q, lr, e, log_a, read_pre, save):
  def body(m, xs):
    k_c, v_c, q_c, lr_c, e_c, la_c, r = xs
    d_c, g_c = gates.segment_log_products(la_c)
    m0 = _reset_carry(m, r, fresh)
    y, m_end, res = _chunk_forward(m0, k_c, v_c, q_c, lr_c, e_c, d_c, g_c, read_pre)
    return m_end, (y, res if save else None)

  m_final, (y, res) = chunk_loop(body, m_init, (k, v, q, lr, e, log_a, reset_N))
  return y, m_final, res


@functools.partial(jax.custom_vjp, nondiff_argnums=(9,))
def _scan(m_init, fresh, reset_N, k, v, q, lr, e, log_a, read_pre):
  y, m_final, _ = _forward_scan(m_init, fresh, reset_N, k, v, q, lr, e, log_a, read_pre, False)
  return y, m_final


def _scan_fwd(m_init, fresh, reset_N, k, v, q, lr, e, log_a, read_pre):
  y, m_final, res = _forward_scan(m_init, fresh, reset_N, k, v, q, lr, e, log_a, read_pre, True)
  return (y, m_final), (res, fresh, reset_N, k, v, q, lr, e, log_a)


def _scan_bwd(read_pre, saved, cotangents):
  res, fresh, reset_N, k, v, q, lr, e, log_a = saved
  dy, dm_final = cotangents

  def body(carry, xs):
    dm, dfresh = carry
    res_c, dy_c, k_c, v_c, q_c, lr_c, e_c, la_c, r = xs
    (d_c, g_c), seg_vjp = jax.vjp(gates.segment_log_products, la_c)
    dm0, dk, dv, dq, dlr, de, dd, dg = _chunk_backward(res_c, dy_c, dm, k_c, v_c, q_c, lr_c,
                                                       e_c, d_c, g_c, read_pre)
    if r is not None:
      dfresh = dfresh + jnp.where(r > 0, dm0, 0.0)
      dm0 = jnp.where(r > 0, 0.0, dm0)
    (dla,) = seg_vjp((dd, dg))
    return (dm0, dfresh), (dk, dv, dq, dlr, de, dla)

  dfresh0 = None if fresh is None else jnp.zeros_like(fresh)
  (dm_init, dfresh), grads = chunk_loop(
      body, (dm_final, dfresh0), (res, dy, k, v, q, lr, e, log_a, reset_N),
      reverse=True)
  dk, dv, dq, dlr, de, dla = grads
  dreset = None if reset_N is None else jnp.zeros_like(reset_N)
  return dm_init, dfresh, dreset, dk, dv, dq, dlr, de, dla


_scan.defvjp(_scan_fwd, _scan_bwd)


def chunked_gated_delta(m_init_VxK, k_NxCxK, v_NxCxV, q_NxCxK, lr_NxC, e_NxC, log_a_NxC, *,
                        read_pre: bool = False, reset_N=None, fresh_VxK=None):
  """Runs the recurrence above over N chunks of C tokens for one sequence.

  Args:
    m_init_VxK: state before the first chunk.
    k_NxCxK, v_NxCxV: keys and values, chunked.
    q_NxCxK: queries, or None (no reads).
    lr_NxC, e_NxC: write and erase coefficients (0 for padding tokens).
    log_a_NxC: log retentions, clipped by ``gates.safe_log_gate`` (0 for padding tokens).
    read_pre: read M_{i-1} q_i instead of M_i q_i.
    reset_N, fresh_VxK: optional per-chunk flags; where reset_N > 0 the chunk starts from
      fresh_VxK instead of the carried state.

  Returns:
    (y_NxCxV or None, final state).
  """
  if (reset_N is None) != (fresh_VxK is None):
    raise ValueError("chunked_gated_delta: reset_N and fresh_VxK go together")
  return _scan(m_init_VxK, fresh_VxK, reset_N, k_NxCxK, v_NxCxV, q_NxCxK, lr_NxC, e_NxC,
               log_a_NxC, read_pre)
