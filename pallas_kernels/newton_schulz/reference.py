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
"""The executable spec of the Newton-Schulz kernels: ``nl_jax.optim``'s XLA iteration.

For a float32 stack ``x_BxMxN`` of wide matrices (M <= N) and one ``(a, b, c)`` per step::

    X_0 = X / (||X||_F + eps);  A_k = X_k X_k^T;  X_{k+1} = a_k X_k + (b_k A_k + c_k A_k^2) X_k

Its backward is plain autodiff of the same jnp code (the kernels' custom_vjp reuses it).
"""

import jax

from nl_jax.optim.newton_schulz import newton_schulz_wide


def newton_schulz_reference(x_BxMxN: jax.Array, coeffs: tuple[tuple[float, float, float], ...],
                            eps: float) -> jax.Array:
  """All steps on a float32 stack of wide matrices (see the module docstring)."""
  return newton_schulz_wide(x_BxMxN, coeffs, eps)


def flops(b: int, m: int, n: int, coeffs) -> float:
  """Useful FLOPs of the iteration with symmetric Gram products counted once per pair."""
  per = 0.0
  for _, _, c in coeffs:
    per += m * (m + 1) * n  # A = X X^T, one triangle (2 flops per multiply-add)
    if c != 0.0:
      per += m * (m + 1) * m  # A A, one triangle
    per += 2.0 * m * m * n  # (bA + cA^2) X
  return b * per
