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
"""The executable spec of Newton-Schulz: the one copy of the iteration.

For a float32 stack ``x_BxMxN`` of wide matrices (M <= N) and one ``(a, b, c)`` per step::

    X_0 = X / (||X||_F + eps);  A_k = X_k X_k^T;  X_{k+1} = a_k X_k + (b_k A_k + c_k A_k^2) X_k

``nl_jax.optim.orthogonalize`` runs it as its XLA path (it adds the matrix views, presets and
sharding around it), the TPU / GPU kernels are checked against it, and its backward is plain
autodiff of the same jnp code (the kernels' custom_vjp reuses it).
"""

import jax
import jax.numpy as jnp


def newton_schulz_reference(x_BxMxN: jax.Array, coeffs: tuple[tuple[float, float, float], ...],
                            eps: float) -> jax.Array:
  """All steps on a float32 stack of wide matrices (see the module docstring).

  Args:
    x_BxMxN: float32 stack ``[B, M, N]`` with ``M <= N`` (the Gram matrix is ``M x M``).
    coeffs: one static ``(a, b, c)`` per step; ``c == 0`` skips the ``A^2`` product.
    eps: added to the Frobenius norm of each matrix before the first step.

  Returns:
    The stack after the last step, ``[B, M, N]``.
  """
  norm_Bx1x1 = jnp.sqrt(jnp.sum(jnp.square(x_BxMxN), axis=(-2, -1), keepdims=True))
  x_BxMxN = x_BxMxN / (norm_Bx1x1 + eps)
  for a, b, c in coeffs:
    gram_BxMxM = jnp.einsum("bij,bkj->bik", x_BxMxN, x_BxMxN)
    if c == 0.0:
      poly_BxMxM = b * gram_BxMxM
    else:
      poly_BxMxM = b * gram_BxMxM + c * jnp.einsum("bij,bjk->bik", gram_BxMxM, gram_BxMxM)
    x_BxMxN = a * x_BxMxN + jnp.einsum("bij,bjk->bik", poly_BxMxM, x_BxMxN)
  return x_BxMxN


def flops(b: int, m: int, n: int, coeffs) -> float:
  """Useful FLOPs of the iteration with symmetric Gram products counted once per pair."""
  per = 0.0
  for _, _, c in coeffs:
    per += m * (m + 1) * n  # A = X X^T, one triangle (2 flops per multiply-add)
    if c != 0.0:
      per += m * (m + 1) * m  # A A, one triangle
    per += 2.0 * m * m * n  # (bA + cA^2) X
  return b * per
