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
"""Mosaic TPU kernels of the Newton-Schulz iteration.

* Fused: grid over the batch, one matrix per step resident in VMEM for every iteration (one
  launch for all steps). The Gram matrices X X^T and A A (symmetric) are computed tile by tile
  for the lower triangle only and mirrored with in-VMEM transposes.
* Tiled (matrices too large for VMEM): per step, a symmetric Gram kernel whose grid walks
  only the lower-triangular tile pairs (scalar-prefetched pair tables), the mirror in XLA, and a
  matmul kernel with the ``a X + P X`` epilogue fused.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.newton_schulz import common
from pallas_kernels.newton_schulz.config import NewtonSchulzConfig


def fused_vmem_bytes(m: int, n: int) -> int:
  """Working set of the fused kernel: double-buffered in/out, X, A, A A, two temporaries."""
  return 4 * (4 * m * n + 3 * m * n + 3 * m * m)


def fused_tile(m: int, config: NewtonSchulzConfig) -> int | None:
  """Gram tile of the fused kernel, or None when the shape does not tile legally.

  Mosaic needs tiles that are multiples of 128 (interpret mode does not; the tests use small
  tiles to exercise the mirrored triangle).
  """
  if m <= config.tile:
    return m
  legal = config.tile % 128 == 0 or config.interpret
  return config.tile if (m % config.tile == 0 and legal) else None


def _sym_gram(src_ref, dst_ref, tile):
  """dst = src src^T, lower tile triangle computed, upper mirrored (src [m, k])."""
  m = src_ref.shape[0]
  if m <= tile:
    v = src_ref[...]
    dst_ref[...] = common.dot_t(v, v)
    return
  nt = m // tile
  for i in range(nt):
    xi = src_ref[pl.ds(i * tile, tile), :]
    for j in range(i + 1):
      xj = xi if i == j else src_ref[pl.ds(j * tile, tile), :]
      t = common.dot_t(xi, xj)
      dst_ref[pl.ds(i * tile, tile), pl.ds(j * tile, tile)] = t
      if i != j:
        dst_ref[pl.ds(j * tile, tile), pl.ds(i * tile, tile)] = t.T


def _fused_kernel(x_ref, o_ref, x_scr, a_scr, p_scr, *, coeffs, eps, tile):
  x_scr[...] = common.frobenius_normalize(x_ref[...].astype(jnp.float32), eps)
  for a, b, c in coeffs:
    _sym_gram(x_scr, a_scr, tile)
    if c != 0.0:
      _sym_gram(a_scr, p_scr, tile)  # A is symmetric, so A A^T = A A
      poly = b * a_scr[...] + c * p_scr[...]
    else:
      poly = b * a_scr[...]
    x = x_scr[...]
    x_scr[...] = a * x + common.dot(poly, x)
  o_ref[...] = x_scr[...].astype(o_ref.dtype)


def _fused(x, coeffs, eps, config):
  bsz, m, n = x.shape
  tile = fused_tile(m, config)
  if tile is None:
    raise ValueError(f"newton_schulz: fused TPU kernel needs m <= tile or m % tile == 0 with "
                     f"tile % 128 == 0 (m={m}, tile={config.tile})")
  spec = pl.BlockSpec((None, m, n), lambda i: (i, 0, 0))
  return pl.pallas_call(
      functools.partial(_fused_kernel, coeffs=coeffs, eps=eps, tile=tile),
      grid=(bsz,), in_specs=[spec], out_specs=spec,
      out_shape=jax.ShapeDtypeStruct(x.shape, jnp.float32),
      scratch_shapes=[pltpu.VMEM((m, n), jnp.float32), pltpu.VMEM((m, m), jnp.float32),
                      pltpu.VMEM((m, m), jnp.float32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",),
                                           vmem_limit_bytes=config.fused_vmem_bytes),
      interpret=config.interpret, name="newton_schulz_fused")(x)


def _gram_kernel(ii_ref, jj_ref, l_ref, r_ref, o_ref, acc_ref):
  del ii_ref, jj_ref
  k = pl.program_id(2)

  @pl.when(k == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  acc_ref[...] += common.dot_t(l_ref[...], r_ref[...])

  @pl.when(k == pl.num_programs(2) - 1)
  def _():
    o_ref[...] = acc_ref[...]


def sym_gram(x, tile, block_k, interpret):
  """x x^T for x [B, m, k]; only the lower tile pairs are computed, then mirrored."""
  bsz, m, kdim = x.shape
  nt = m // tile
  pairs = [(i, j) for i in range(nt) for j in range(i + 1)]
  ii = jnp.asarray(np.array([p[0] for p in pairs], np.int32))
  jj = jnp.asarray(np.array([p[1] for p in pairs], np.int32))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(bsz, len(pairs), kdim // block_k),
      in_specs=[pl.BlockSpec((None, tile, block_k), lambda b, p, k, ii, jj: (b, ii[p], k)),
                pl.BlockSpec((None, tile, block_k), lambda b, p, k, ii, jj: (b, jj[p], k))],
      out_specs=pl.BlockSpec((None, tile, tile), lambda b, p, k, ii, jj: (b, ii[p], jj[p])),
      scratch_shapes=[pltpu.VMEM((tile, tile), jnp.float32)])
  lower = pl.pallas_call(
      _gram_kernel, grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct((bsz, m, m), jnp.float32),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret, name="newton_schulz_sym_gram")(ii, jj, x, x)
  return common.mirror_lower_blocks(lower, tile)


def _update_kernel(p_ref, x_ref, xo_ref, o_ref, acc_ref, *, a):
  k = pl.program_id(3)

  @pl.when(k == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  acc_ref[...] += common.dot(p_ref[...], x_ref[...])

  @pl.when(k == pl.num_programs(3) - 1)
  def _():
    o_ref[...] = a * xo_ref[...] + acc_ref[...]


def update(poly, x, a, tile, block_k, interpret):
  """a x + poly @ x for poly [B, m, m], x [B, m, n]."""
  bsz, m, n = x.shape
  tn = min(tile, n)
  return pl.pallas_call(
      functools.partial(_update_kernel, a=a),
      grid=(bsz, m // tile, n // tn, m // block_k),
      in_specs=[pl.BlockSpec((None, tile, block_k), lambda b, i, j, k: (b, i, k)),
                pl.BlockSpec((None, block_k, tn), lambda b, i, j, k: (b, k, j)),
                pl.BlockSpec((None, tile, tn), lambda b, i, j, k: (b, i, j))],
      out_specs=pl.BlockSpec((None, tile, tn), lambda b, i, j, k: (b, i, j)),
      out_shape=jax.ShapeDtypeStruct(x.shape, jnp.float32),
      scratch_shapes=[pltpu.VMEM((tile, tn), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret, name="newton_schulz_update")(poly, x, x)


def tiled_blocks(m: int, n: int, config: NewtonSchulzConfig) -> tuple[int, int] | None:
  """(tile, block_k) of the tiled path, or None when (m, n) does not tile legally.

  Blocks must divide the matrix; for Mosaic (not interpret mode) they must also be multiples
  of 128 or the whole dimension (interpret mode accepts small tiles, which the tests use).
  """
  tile, bk = min(config.tile, m), min(config.block_k, m, n)
  tn = min(tile, n)
  ok = m % tile == 0 and n % bk == 0 and m % bk == 0 and n % tn == 0
  if not config.interpret:
    ok = ok and all(blk % 128 == 0 or blk == dim
                    for blk, dim in ((tile, m), (bk, min(m, n)), (tn, n)))
  return (tile, bk) if ok else None


def _tiled(x, coeffs, eps, config):
  bsz, m, n = x.shape
  blocks = tiled_blocks(m, n, config)
  if blocks is None:
    raise ValueError(f"newton_schulz: tiled TPU path cannot tile (m, n)=({m}, {n}) with "
                     f"tile={config.tile}, block_k={config.block_k}")
  tile, bk = blocks
  sq = jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True)
  x = x / (jnp.sqrt(sq) + eps)
  bk_m = min(bk, m)
  for a, b, c in coeffs:
    gram = sym_gram(x, tile, bk, config.interpret)
    poly = b * gram
    if c != 0.0:
      poly = poly + c * sym_gram(gram, tile, bk_m, config.interpret)
    x = update(poly, x, a, tile, bk_m, config.interpret)
  return x


def forward(x, coeffs, eps, config):
  """Fused kernel when the working set fits in VMEM, else the tiled path."""
  _, m, n = x.shape
  if fused_vmem_bytes(m, n) <= config.fused_vmem_bytes and fused_tile(m, config) is not None:
    return _fused(x, coeffs, eps, config)
  return _tiled(x, coeffs, eps, config)


newton_schulz = common.with_reference_vjp(forward)
