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
"""Pieces shared by the TPU and GPU Newton-Schulz kernels."""

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.newton_schulz import reference

_HI = jax.lax.Precision.HIGHEST


def dot(a, b):
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_HI,
                             preferred_element_type=jnp.float32)


def dot_t(a, b):
  """a @ b.T."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HI,
                             preferred_element_type=jnp.float32)


def frobenius_normalize(x, eps):
  sq = jnp.sum(jnp.sum(x * x, axis=1, keepdims=True), axis=0, keepdims=True)
  return x / (jnp.sqrt(sq) + eps)


def mirror_lower_blocks(lower_BxMxM, tile: int):
  """Fills the block-upper triangle from the block-lower one (the kernels compute only that)."""
  m = lower_BxMxM.shape[-1]
  blk = jnp.arange(m) // tile
  keep = blk[:, None] >= blk[None, :]
  return jnp.where(keep, lower_BxMxM, jnp.swapaxes(lower_BxMxM, -1, -2))


def with_reference_vjp(forward):
  """Wraps forward(x, coeffs, eps, config) in a custom_vjp whose backward is the reference's.

  Newton-Schulz is used inside optimizers (no gradient); the backward exists so the kernel is
  a drop-in for the differentiable reference, and recomputes the iteration with XLA.
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
  def fn(x, coeffs, eps, config):
    return forward(x, coeffs, eps, config)

  def fwd(x, coeffs, eps, config):
    return forward(x, coeffs, eps, config), x

  def bwd(coeffs, eps, config, x, ct):
    del config
    _, vjp = jax.vjp(lambda x: reference.newton_schulz_reference(x, coeffs, eps), x)
    return vjp(ct)

  fn.defvjp(fwd, bwd)
  return fn
