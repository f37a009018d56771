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
"""Triton (GPU) kernels of the Newton-Schulz iteration.

* Fused (small matrices, up to ``gpu_fused_max_elements``): one program per matrix holds it in
  registers for every step, one launch for the whole iteration.
* Tiled: per step a symmetric Gram kernel whose programs above the block diagonal exit at once
  (only the lower tile triangle is computed; XLA mirrors it) and a matmul kernel with the
  ``a X + P X`` epilogue fused. Triton programs run concurrently, so a step cannot be fused
  across tiles without a grid-wide barrier.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from pallas_kernels.newton_schulz import common
from pallas_kernels.newton_schulz.config import NewtonSchulzConfig


def _pow2(d: int) -> bool:
  return d >= 16 and not d & (d - 1)


def fused_applies(m: int, n: int, config: NewtonSchulzConfig) -> bool:
  return _pow2(m) and _pow2(n) and m * n <= config.gpu_fused_max_elements


def tiled_blocks(m: int, n: int, config: NewtonSchulzConfig) -> tuple[int, int] | None:
  """(tile, block_k) of the tiled path, or None when (m, n) does not tile."""
  tile, bk = min(config.gpu_tile, m, n), min(config.gpu_block_k, m, n)
  ok = all(_pow2(b) for b in (tile, bk)) and not (m % tile or n % tile or m % bk or n % bk)
  return (tile, bk) if ok else None


def _fused_kernel(x_ref, o_ref, *, coeffs, eps):
  x = common.frobenius_normalize(x_ref[...].astype(jnp.float32), eps)
  for a, b, c in coeffs:
    gram = common.dot_t(x, x)
    poly = b * gram if c == 0.0 else b * gram + c * common.dot(gram, gram)
    x = a * x + common.dot(poly, x)
  o_ref[...] = x.astype(o_ref.dtype)


def _fused(x, coeffs, eps, config):
  bsz, m, n = x.shape
  spec = pl.BlockSpec((None, m, n), lambda i: (i, 0, 0))
  return pl.pallas_call(
      functools.partial(_fused_kernel, coeffs=coeffs, eps=eps), grid=(bsz,), in_specs=[spec],
      out_specs=spec, out_shape=jax.ShapeDtypeStruct(x.shape, jnp.float32),
      compiler_params=pltr.CompilerParams(num_warps=config.num_warps, num_stages=1),
      interpret=config.interpret, name="newton_schulz_fused")(x)


def _gram_kernel(l_ref, r_ref, o_ref, *, block_k, nk):
  i, j = pl.program_id(1), pl.program_id(2)

  @pl.when(j <= i)
  def _():
    def body(k, acc):
      cols = pl.ds(pl.multiple_of(k * block_k, block_k), block_k)
      return acc + common.dot_t(l_ref[:, cols], r_ref[:, cols])

    tile = o_ref.shape[0]
    o_ref[...] = jax.lax.fori_loop(0, nk, body, jnp.zeros((tile, tile), jnp.float32))


def sym_gram(x, tile, block_k, config):
  bsz, m, kdim = x.shape
  nt = m // tile
  lower = pl.pallas_call(
      functools.partial(_gram_kernel, block_k=block_k, nk=kdim // block_k),
      grid=(bsz, nt, nt),
      in_specs=[pl.BlockSpec((None, tile, kdim), lambda b, i, j: (b, i, 0)),
                pl.BlockSpec((None, tile, kdim), lambda b, i, j: (b, j, 0))],
      out_specs=pl.BlockSpec((None, tile, tile), lambda b, i, j: (b, i, j)),
      out_shape=jax.ShapeDtypeStruct((bsz, m, m), jnp.float32),
      compiler_params=pltr.CompilerParams(num_warps=config.num_warps, num_stages=2),
      interpret=config.interpret, name="newton_schulz_sym_gram")(x, x)
  return common.mirror_lower_blocks(lower, tile)


def _update_kernel(p_ref, x_ref, xo_ref, o_ref, *, a, block_k, nk):
  def body(k, acc):
    rows = pl.ds(pl.multiple_of(k * block_k, block_k), block_k)
    return acc + common.dot(p_ref[:, rows], x_ref[rows, :])

  acc = jax.lax.fori_loop(0, nk, body, jnp.zeros(o_ref.shape, jnp.float32))
  o_ref[...] = a * xo_ref[...] + acc


def update(poly, x, a, tile, block_k, config):
  bsz, m, n = x.shape
  return pl.pallas_call(
      functools.partial(_update_kernel, a=a, block_k=block_k, nk=m // block_k),
      grid=(bsz, m // tile, n // tile),
      in_specs=[pl.BlockSpec((None, tile, m), lambda b, i, j: (b, i, 0)),
                pl.BlockSpec((None, m, tile), lambda b, i, j: (b, 0, j)),
                pl.BlockSpec((None, tile, tile), lambda b, i, j: (b, i, j))],
      out_specs=pl.BlockSpec((None, tile, tile), lambda b, i, j: (b, i, j)),
      out_shape=jax.ShapeDtypeStruct(x.shape, jnp.float32),
      compiler_params=pltr.CompilerParams(num_warps=config.num_warps, num_stages=2),
      interpret=config.interpret, name="newton_schulz_update")(poly, x, x)


def _tiled(x, coeffs, eps, config):
  _, m, n = x.shape
  blocks = tiled_blocks(m, n, config)
  if blocks is None:
    raise ValueError(f"newton_schulz: tiled GPU path cannot tile (m, n)=({m}, {n}) with "
                     f"gpu_tile={config.gpu_tile}, gpu_block_k={config.gpu_block_k}")
  tile, bk = blocks
  sq = jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True)
  x = x / (jnp.sqrt(sq) + eps)
  for a, b, c in coeffs:
    gram = sym_gram(x, tile, bk, config)
    poly = b * gram
    if c != 0.0:
      poly = poly + c * sym_gram(gram, tile, bk, config)
    x = update(poly, x, a, tile, bk, config)
  return x


def forward(x, coeffs, eps, config):
  """Fused kernel for small matrices, else the tiled path."""
  _, m, n = x.shape
  if fused_applies(m, n, config):
    return _fused(x, coeffs, eps, config)
  return _tiled(x, coeffs, eps, config)


newton_schulz = common.with_reference_vjp(forward)
