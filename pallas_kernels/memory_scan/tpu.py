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
"""Mosaic TPU kernels of the matrix-memory scan (forward and backward, custom_vjp).

Grid (sequence n, value block v, chunk c) with the chunk axis innermost and sequential
("arbitrary"): the state block [block_v, d_k] lives in a float32 VMEM scratch across the chunks
of one (sequence, value block), so HBM sees each input once and the state once per chunk
(saved for the backward). The backward walks the same grid with the chunk index reversed:
it reloads the state saved at the chunk's start, recomputes the chunk under ``jax.vjp``
and carries the state cotangent in VMEM. Key, query and gate gradients are partial sums per
value block, added up outside the kernel.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.memory_scan import chunk_math, reference, vjp

S = reference.NUM_SCALARS


def _columns(sc_ref, momentum):
  col = lambda j: sc_ref[:, j:j + 1]  # noqa: E731
  log_mu = col(reference.LOG_MU) if momentum else None
  valid = col(reference.VALID) if momentum else None
  return (col(reference.LOG_A), col(reference.LR), col(reference.BETA), col(reference.G),
          log_mu, valid)


def _compiler_params():
  return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _fwd_kernel(*refs, momentum, save_states, dtype):
  it = iter(refs)
  k_ref, v_ref, q_ref, sc_ref, m0_ref = (next(it) for _ in range(5))
  s0_ref = next(it) if momentum else None
  y_ref, m_out_ref = next(it), next(it)
  s_out_ref = next(it) if momentum else None
  m_save_ref = next(it) if save_states else None
  s_save_ref = next(it) if (save_states and momentum) else None
  m_scr = next(it)
  s_scr = next(it) if momentum else None
  c, nc = pl.program_id(2), pl.num_programs(2)

  @pl.when(c == 0)
  def _():
    m_scr[...] = m0_ref[...].astype(dtype)
    if momentum:
      s_scr[...] = s0_ref[...].astype(dtype)

  m0 = m_scr[...]
  s0 = s_scr[...] if momentum else None
  if save_states:
    m_save_ref[...] = m0
    if momentum:
      s_save_ref[...] = s0
  y, m_end, s_end = chunk_math.chunk_step(m0, s0, k_ref[...], v_ref[...], q_ref[...],
                                          *_columns(sc_ref, momentum))
  y_ref[...] = y.astype(y_ref.dtype)
  m_scr[...] = m_end
  if momentum:
    s_scr[...] = s_end

  @pl.when(c == nc - 1)
  def _():
    m_out_ref[...] = m_end.astype(m_out_ref.dtype)
    if momentum:
      s_out_ref[...] = s_end.astype(s_out_ref.dtype)


def _bwd_kernel(*refs, momentum, dtype):
  it = iter(refs)
  k_ref, v_ref, q_ref, sc_ref, m_save_ref = (next(it) for _ in range(5))
  s_save_ref = next(it) if momentum else None
  dy_ref, dm_ref = next(it), next(it)
  ds_ref = next(it) if momentum else None
  dk_ref, dv_ref, dq_ref, dsc_ref, dm0_ref = (next(it) for _ in range(5))
  ds0_ref = next(it) if momentum else None
  dm_scr = next(it)
  ds_scr = next(it) if momentum else None
  c, nc = pl.program_id(2), pl.num_programs(2)

  @pl.when(c == 0)
  def _():
    dm_scr[...] = dm_ref[...].astype(dtype)
    if momentum:
      ds_scr[...] = ds_ref[...].astype(dtype)

  cols = _columns(sc_ref, momentum)
  n_cols = 6 if momentum else 4
  k, v, q = (r[...].astype(dtype) for r in (k_ref, v_ref, q_ref))
  m0 = m_save_ref[...]
  s0 = s_save_ref[...] if momentum else None

  def fn(m0, s0, k, v, q, *cols):
    full = tuple(cols) + (None,) * (6 - len(cols))
    return chunk_math.chunk_step(m0, s0, k, v, q, *full)

  _, vjp = jax.vjp(fn, m0, s0, k, v, q, *cols[:n_cols])
  ds = ds_scr[...] if momentum else None
  grads = vjp((dy_ref[...].astype(dtype), dm_scr[...], ds))
  dm0, ds0, dk, dv, dq = grads[:5]
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  dq_ref[...] = dq.astype(dq_ref.dtype)
  dsc_ref[...] = jnp.zeros(dsc_ref.shape, dsc_ref.dtype)
  for j, g in enumerate(grads[5:5 + min(n_cols, 5)]):
    dsc_ref[:, j:j + 1] = g.astype(dsc_ref.dtype)
  dm_scr[...] = dm0
  if momentum:
    ds_scr[...] = ds0

  @pl.when(c == nc - 1)
  def _():
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


def _forward(k, v, q, sc, m0, s0, config, save_states):
  momentum = s0 is not None
  n, t, dk, dv, c, nc, bv = _shapes(k, v, config)
  dtype = m0.dtype
  k, v, q, sc = _pad_inputs(k, v, q, sc, c, nc, momentum)
  nv = dv // bv
  seq = lambda shape: pl.BlockSpec((None,) + shape, lambda i, j, ch: (i, ch, 0))  # noqa: E731
  vblk = pl.BlockSpec((None, c, bv), lambda i, j, ch: (i, ch, j))
  state = pl.BlockSpec((None, bv, dk), lambda i, j, ch: (i, j, 0))
  saved = pl.BlockSpec((None, None, bv, dk), lambda i, j, ch: (i, ch, j, 0))
  in_specs = [seq((c, dk)), vblk, seq((c, dk)), seq((c, S)), state] + [state] * momentum
  args = [k, v, q, sc, m0] + ([s0] if momentum else [])
  out_specs = [vblk, state] + [state] * momentum
  out_shape = [jax.ShapeDtypeStruct((n, nc * c, dv), dtype),
               jax.ShapeDtypeStruct((n, dv, dk), dtype)]
  out_shape += [jax.ShapeDtypeStruct((n, dv, dk), dtype)] * momentum
  if save_states:
    n_saved = 1 + momentum
    out_specs += [saved] * n_saved
    out_shape += [jax.ShapeDtypeStruct((n, nc, dv, dk), dtype)] * n_saved
  scratch = [pltpu.VMEM((bv, dk), dtype)] * (1 + momentum)
  outs = pl.pallas_call(
      functools.partial(_fwd_kernel, momentum=momentum, save_states=save_states, dtype=dtype),
      grid=(n, nv, nc), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=scratch, compiler_params=_compiler_params(), interpret=config.interpret,
      name="memory_scan_fwd")(*args)
  outs = list(outs)
  y, m_end = outs[0][:, :t], outs[1]
  s_end = outs[2] if momentum else None
  saved_states = tuple(outs[2 + momentum:])
  return (y, m_end, s_end), saved_states


def _backward(k, v, q, sc, saved_states, dy, dm, ds, config):
  momentum = ds is not None
  n, t, dk, dv, c, nc, bv = _shapes(k, v, config)
  dtype = saved_states[0].dtype
  kp, vp, qp, scp = _pad_inputs(k, v, q, sc, c, nc, momentum)
  dy = reference.pad_time(dy.astype(dtype), nc * c)
  nv = dv // bv
  rev = lambda ch: nc - 1 - ch  # noqa: E731
  seq = lambda shape: pl.BlockSpec((None,) + shape, lambda i, j, ch: (i, rev(ch), 0))  # noqa: E731
  vblk = pl.BlockSpec((None, c, bv), lambda i, j, ch: (i, rev(ch), j))
  state = pl.BlockSpec((None, bv, dk), lambda i, j, ch: (i, j, 0))
  saved = pl.BlockSpec((None, None, bv, dk), lambda i, j, ch: (i, rev(ch), j, 0))
  part = lambda shape: pl.BlockSpec((None, None) + shape,  # noqa: E731
                                    lambda i, j, ch: (i, j, rev(ch), 0))
  in_specs = ([seq((c, dk)), vblk, seq((c, dk)), seq((c, S))] + [saved] * (1 + momentum)
              + [vblk] + [state] * (1 + momentum))
  args = [kp, vp, qp, scp, *saved_states, dy, dm.astype(dtype)]
  args += [ds.astype(dtype)] if momentum else []
  out_specs = [part((c, dk)), vblk, part((c, dk)), part((c, S))] + [state] * (1 + momentum)
  tp = nc * c
  out_shape = [jax.ShapeDtypeStruct((n, nv, tp, dk), dtype),
               jax.ShapeDtypeStruct((n, tp, dv), dtype),
               jax.ShapeDtypeStruct((n, nv, tp, dk), dtype),
               jax.ShapeDtypeStruct((n, nv, tp, S), dtype)]
  out_shape += [jax.ShapeDtypeStruct((n, dv, dk), dtype)] * (1 + momentum)
  scratch = [pltpu.VMEM((bv, dk), dtype)] * (1 + momentum)
  outs = pl.pallas_call(
      functools.partial(_bwd_kernel, momentum=momentum, dtype=dtype),
      grid=(n, nv, nc), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=scratch, compiler_params=_compiler_params(), interpret=config.interpret,
      name="memory_scan_bwd")(*args)
  return vjp.reduce_backward_outputs(outs, momentum, t, k, v, q, sc)


# Kernel version of `reference.reference_core` (same arguments, config last).
scan_core = vjp.make_scan_core(_forward, _backward)
