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
"""Triton (GPU) kernels of the matrix-memory scan (forward and backward, custom_vjp).

Triton runs grid programs concurrently, so a state cannot persist across grid steps as it
does on TPU: the grid is (sequence n, value block v) and each program loops over the chunks
itself (``lax.fori_loop``), the state block [block_v, d_k] carried in registers. Every input
element is read once; the state at each chunk start is written for the backward, which loops
over the chunks in reverse, recomputes each chunk under ``jax.vjp`` from its saved start state
and carries the state cotangent in registers. Key, query and gate gradients are partial sums
per value block, added up outside the kernel.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from pallas_kernels.memory_scan import chunk_math, reference, vjp

S = reference.NUM_SCALARS


def _columns(sc_ref, rows, momentum):
  col = lambda j: sc_ref[rows, pl.ds(j, 1)]  # noqa: E731
  log_mu = col(reference.LOG_MU) if momentum else None
  valid = col(reference.VALID) if momentum else None
  return (col(reference.LOG_A), col(reference.LR), col(reference.BETA), col(reference.G),
          log_mu, valid)


def _params(config):
  return pltr.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)


def _fwd_kernel(*refs, momentum, save_states, dtype, c, nc):
  it = iter(refs)
  k_ref, v_ref, q_ref, sc_ref, m0_ref = (next(it) for _ in range(5))
  s0_ref = next(it) if momentum else None
  y_ref, m_out_ref = next(it), next(it)
  s_out_ref = next(it) if momentum else None
  m_save_ref = next(it) if save_states else None
  s_save_ref = next(it) if (save_states and momentum) else None

  def body(ch, carry):
    m0, s0 = carry
    rows = pl.ds(pl.multiple_of(ch * c, c), c)
    if save_states:
      m_save_ref[ch] = m0
      if momentum:
        s_save_ref[ch] = s0
    y, m_end, s_end = chunk_math.chunk_step(m0, s0, k_ref[rows, :], v_ref[rows, :],
                                            q_ref[rows, :], *_columns(sc_ref, rows, momentum))
    y_ref[rows, :] = y.astype(y_ref.dtype)
    return m_end, s_end

  m0 = m0_ref[...].astype(dtype)
  s0 = s0_ref[...].astype(dtype) if momentum else None
  m_end, s_end = jax.lax.fori_loop(0, nc, body, (m0, s0))
  m_out_ref[...] = m_end.astype(m_out_ref.dtype)
  if momentum:
    s_out_ref[...] = s_end.astype(s_out_ref.dtype)


def _bwd_kernel(*refs, momentum, dtype, c, nc):
  it = iter(refs)
  k_ref, v_ref, q_ref, sc_ref, m_save_ref = (next(it) for _ in range(5))
  s_save_ref = next(it) if momentum else None
  dy_ref, dm_ref = next(it), next(it)
  ds_ref = next(it) if momentum else None
  dk_ref, dv_ref, dq_ref, dsc_ref, dm0_ref = (next(it) for _ in range(5))
  ds0_ref = next(it) if momentum else None
  n_cols = 6 if momentum else 4

  def fn(m0, s0, k, v, q, *cols):
    full = tuple(cols) + (None,) * (6 - len(cols))
    return chunk_math.chunk_step(m0, s0, k, v, q, *full)

  def body(i, carry):
    dm, ds = carry
    ch = nc - 1 - i
    rows = pl.ds(pl.multiple_of(ch * c, c), c)
    cols = _columns(sc_ref, rows, momentum)[:n_cols]
    k, v, q = (r[rows, :].astype(dtype) for r in (k_ref, v_ref, q_ref))
    m0 = m_save_ref[ch]
    s0 = s_save_ref[ch] if momentum else None
    _, vjp = jax.vjp(fn, m0, s0, k, v, q, *cols)
    grads = vjp((dy_ref[rows, :].astype(dtype), dm, ds))
    dm0, ds0, dk, dv, dq = grads[:5]
    dk_ref[rows, :] = dk.astype(dk_ref.dtype)
    dv_ref[rows, :] = dv.astype(dv_ref.dtype)
    dq_ref[rows, :] = dq.astype(dq_ref.dtype)
    for j in range(S):
      g = grads[5 + j] if j < min(n_cols, 5) else jnp.zeros((c, 1), dtype)
      dsc_ref[rows, pl.ds(j, 1)] = g.astype(dsc_ref.dtype)
    return dm0, ds0

  dm = dm_ref[...].astype(dtype)
  ds = ds_ref[...].astype(dtype) if momentum else None
  dm0, ds0 = jax.lax.fori_loop(0, nc, body, (dm, ds))
  dm0_ref[...] = dm0.astype(dm0_ref.dtype)
  if momentum:
    ds0_ref[...] = ds0.astype(ds0_ref.dtype)


def _shapes(k, v, config):
  n, t, dk = k.shape
  dv = v.shape[-1]
  c = config.chunk_size
  nc = max(1, math.ceil(t / c))
  return n, t, dk, dv, c, nc, config.value_block(dv)


def _pad_inputs(k, v, q, sc, c, nc, momentum):
  tp = nc * c
  t = k.shape[1]
  k, v, q, sc = (reference.pad_time(x, tp) for x in (k, v, q, sc))
  if momentum:
    valid = (jnp.arange(tp) < t).astype(sc.dtype)
    sc = sc.at[:, :, reference.VALID].set(valid)
  return k, v, q, sc


def _specs(tp, dk, dv, bv, nc):
  seq = lambda d: pl.BlockSpec((None, tp, d), lambda i, j: (i, 0, 0))  # noqa: E731
  vblk = pl.BlockSpec((None, tp, bv), lambda i, j: (i, 0, j))
  state = pl.BlockSpec((None, bv, dk), lambda i, j: (i, j, 0))
  saved = pl.BlockSpec((None, nc, bv, dk), lambda i, j: (i, 0, j, 0))
  part = lambda d: pl.BlockSpec((None, None, tp, d), lambda i, j: (i, j, 0, 0))  # noqa: E731
  return seq, vblk, state, saved, part


def _forward(k, v, q, sc, m0, s0, config, save_states):
  momentum = s0 is not None
  n, t, dk, dv, c, nc, bv = _shapes(k, v, config)
  dtype = m0.dtype
  tp = nc * c
  k, v, q, sc = _pad_inputs(k, v, q, sc, c, nc, momentum)
  seq, vblk, state, saved, _ = _specs(tp, dk, dv, bv, nc)
  in_specs = [seq(dk), vblk, seq(dk), seq(S), state] + [state] * momentum
  args = [k, v, q, sc, m0] + ([s0] if momentum else [])
  out_specs = [vblk, state] + [state] * momentum
  out_shape = [jax.ShapeDtypeStruct((n, tp, dv), dtype), jax.ShapeDtypeStruct((n, dv, dk), dtype)]
  out_shape += [jax.ShapeDtypeStruct((n, dv, dk), dtype)] * momentum
  if save_states:
    out_specs += [saved] * (1 + momentum)
    out_shape += [jax.ShapeDtypeStruct((n, nc, dv, dk), dtype)] * (1 + momentum)
  outs = list(pl.pallas_call(
      functools.partial(_fwd_kernel, momentum=momentum, save_states=save_states, dtype=dtype,
                        c=c, nc=nc),
      grid=(n, dv // bv), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=_params(config), interpret=config.interpret,
      name="memory_scan_fwd")(*args))
  y, m_end = outs[0][:, :t], outs[1]
  s_end = outs[2] if momentum else None
  return (y, m_end, s_end), tuple(outs[2 + momentum:])


def _backward(k, v, q, sc, saved_states, dy, dm, ds, config):
  momentum = ds is not None
  n, t, dk, dv, c, nc, bv = _shapes(k, v, config)
  dtype = saved_states[0].dtype
  tp = nc * c
  nv = dv // bv
  kp, vp, qp, scp = _pad_inputs(k, v, q, sc, c, nc, momentum)
  dy = reference.pad_time(dy.astype(dtype), tp)
  seq, vblk, state, saved, part = _specs(tp, dk, dv, bv, nc)
  in_specs = ([seq(dk), vblk, seq(dk), seq(S)] + [saved] * (1 + momentum) + [vblk]
              + [state] * (1 + momentum))
  args = [kp, vp, qp, scp, *saved_states, dy, dm.astype(dtype)]
  args += [ds.astype(dtype)] if momentum else []
  out_specs = [part(dk), vblk, part(dk), part(S)] + [state] * (1 + momentum)
  out_shape = [jax.ShapeDtypeStruct((n, nv, tp, dk), dtype),
               jax.ShapeDtypeStruct((n, tp, dv), dtype),
               jax.ShapeDtypeStruct((n, nv, tp, dk), dtype),
               jax.ShapeDtypeStruct((n, nv, tp, S), dtype)]
  out_shape += [jax.ShapeDtypeStruct((n, dv, dk), dtype)] * (1 + momentum)
  outs = pl.pallas_call(
      functools.partial(_bwd_kernel, momentum=momentum, dtype=dtype, c=c, nc=nc),
      grid=(n, nv), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=_params(config), interpret=config.interpret,
      name="memory_scan_bwd")(*args)
  return vjp.reduce_backward_outputs(outs, momentum, t, k, v, q, sc)


# Kernel version of `reference.reference_core` (same arguments, config last).
scan_core = vjp.make_scan_core(_forward, _backward)
