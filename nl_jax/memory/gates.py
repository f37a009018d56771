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
"""Gate squashing and log-space helpers shared by every memory.

Every data-dependent gate of a fast level goes through one of these maps, so the recurrence
stays bounded whatever the projections produce:

* learning rate eta in (0, eta_max] (eta_from_logits);
* retention alpha in [alpha_min, 1] (alpha_from_logits);
* momentum decay mu in [0, mu_max] with mu_max < 1 (momentum_from_logits).

Stability of the per-token map along the key direction (unit keys, no momentum):

* dgd: factor alpha - c, c = eta / (1 + eta); contracts for every eta > 0.
* gd: factor alpha - eta; contracts for eta <= 1.
* paper_l2: factor alpha - 2 eta; no sign flip for eta <= alpha / 2.
* hebbian: factor alpha; the state grows linearly with the writes unless alpha < 1.

The chunked paths never exponentiate a cumulative sum over the whole sequence: products of
gates are formed inside one chunk only, from clipped logarithms, as segment sums (see
``segment_log_products``).
"""

import jax
import jax.numpy as jnp

# exp(-30) ~ 1e-13: a gate below this is treated as exactly this small, which keeps every log
# finite (no -inf - -inf = nan) and every gradient finite (no 0 * inf).
LOG_GATE_MIN = -30.0


def eta_from_logits(logits: jax.Array, eta_max: float = 1.0) -> jax.Array:
  """Maps logits to a learning rate in (0, eta_max]."""
  if eta_max <= 0:
    raise ValueError(f"eta_max must be > 0, got {eta_max}")
  return eta_max * jax.nn.sigmoid(logits)


def alpha_from_logits(logits: jax.Array, alpha_min: float = 0.0) -> jax.Array:
  """Maps logits to a retention gate in [alpha_min, 1]."""
  if not 0.0 <= alpha_min <= 1.0:
    raise ValueError(f"alpha_min must lie in [0, 1], got {alpha_min}")
  return alpha_min + (1.0 - alpha_min) * jax.nn.sigmoid(logits)


def momentum_from_logits(logits: jax.Array, mu_max: float = 0.99) -> jax.Array:
  """Maps logits to a momentum decay in [0, mu_max], mu_max < 1."""
  if not 0.0 <= mu_max < 1.0:
    raise ValueError(f"mu_max must lie in [0, 1), got {mu_max}")
  return mu_max * jax.nn.sigmoid(logits)


def safe_log_gate(gate: jax.Array) -> jax.Array:
  """log(gate) for gates in [0, 1], clipped below at LOG_GATE_MIN with finite gradients."""
  return jnp.log(jnp.maximum(gate, jnp.exp(jnp.asarray(LOG_GATE_MIN, gate.dtype))))


def segment_log_products(log_gate_C: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Products of gates over every segment of one chunk.

  Args:
    log_gate_C: [C] clipped log gates of one chunk.

  Returns:
    decay_CxC[i, j] = prod_{j < r <= i} gate_r for j <= i and 0 above the diagonal,
    and prefix_C[i] = prod_{r <= i} gate_r.
  """
  c = log_gate_C.shape[0]
  idx = jnp.arange(c)
  strictly_below = idx[:, None] > idx[None, :]
  lower = idx[:, None] >= idx[None, :]
  # Summing only the terms inside each segment (instead of differencing one cumulative sum)
  # keeps every entry exact to rounding even when the cumulative sum is very negative.
  # The cumulative sum down the columns is a product with the lower-triangular ones matrix: one
  # C x C x C matmul, where XLA:CPU lowers cumsum to an O(C^3) scalar reduce-window.
  masked_CxC = jnp.where(strictly_below, log_gate_C[:, None], 0.0)
  seg_CxC = jnp.matmul(lower.astype(log_gate_C.dtype), masked_CxC,
                       precision=jax.lax.Precision.HIGHEST)
  decay_CxC = jnp.where(lower, jnp.exp(jnp.where(lower, seg_CxC, 0.0)), 0.0)
  prefix_C = jnp.exp(jnp.cumsum(log_gate_C))
  return decay_CxC, prefix_C
