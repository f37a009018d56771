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
"""Statistics of fast memories for the trainer's aux metrics (no gradient flows through them).

The stability diagnosis (experiments/stability/README.md) found that what grows first before a
memory diverges is the scale of its values and of its weights; every memory layer reports them
with these functions so the trainer's growth guard can watch them.
"""

import jax
import jax.numpy as jnp


def rms(x: jax.Array) -> jax.Array:
  """Root mean square of the vectors along the last axis, averaged over all others."""
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  return jnp.sqrt(jnp.mean(jnp.sum(x * x, axis=-1)))


def max_weight_norm(w: jax.Array) -> jax.Array:
  """Largest Frobenius norm of the trailing matrices (over sequences, memories and heads)."""
  w = jax.lax.stop_gradient(w).astype(jnp.float32)
  return jnp.max(jnp.sqrt(jnp.sum(w * w, axis=(-2, -1))))


def update_norm(before, after) -> jax.Array:
  """RMS over sequences and heads of the Frobenius change of a memory's weights (a tree of
  [..., m, n] leaves) over one call."""
  sq = sum(jnp.sum((a - b) ** 2, axis=(-2, -1))
           for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True))
  return jax.lax.stop_gradient(jnp.sqrt(jnp.mean(sq)))
