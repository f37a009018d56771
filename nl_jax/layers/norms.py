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
"""RMSNorm and L2 normalisation with float32 statistics."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, scale: jax.Array | None, eps: float = 1e-6) -> jax.Array:
  """x / rms(x) * scale over the last axis, computed in float32 and cast back to x.dtype."""
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float64 stays float64 (tests)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  if scale is not None:
    y = y * scale.astype(x32.dtype)
  return y.astype(x.dtype)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / ||x|| over the last axis, computed in (at least) float32 and cast back to x.dtype."""
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float64 stays float64 (tests)
  return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class RMSNorm(nnx.Module):
  """Root-mean-square norm over the last axis with a learned `scale` (ones at init).

  Statistics are always float32 (bf16 sums of squares lose the small components).

  Args:
    dim: size of the normalised (last) axis; `scale` may also have leading axes given by
      `shape` (e.g. per-head norms `(H, K)`).
    eps: added to the mean square.
    param_dtype: dtype of `scale`.
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, shape: tuple[int, ...] | None = None,
               param_dtype=jnp.float32):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones(shape if shape is not None else (dim,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.scale[...], self.eps)
