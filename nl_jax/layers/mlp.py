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
"""SwiGLU feed-forward block (Llama style)."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from nl_jax.layers.projection import project, project_shared


def dense_init(rng: jax.Array, shape: tuple[int, ...], fan_in: int, dtype) -> jax.Array:
  """LeCun normal: N(0, 1 / fan_in), so activations keep unit scale at init."""
  return jax.random.normal(rng, shape, dtype) / jnp.sqrt(jnp.asarray(fan_in, dtype))


class SwiGLU(nnx.Module):
  """y = (silu(x W_gate) * (x W_up)) W_down.

  Parameters `w_gate`, `w_up` [d_model, hidden_dim] and `w_down` [hidden_dim, d_model]
  (names the trainer's sharding rules match). Matmuls run in `dtype`.

  Args:
    d_model: model width.
    hidden_dim: inner width (Llama uses about 8/3 d_model).
    dtype: activation dtype of the matmuls.
    param_dtype: storage dtype of the weights.
    rngs: parameter initialisation.
  """

  def __init__(self, d_model: int, hidden_dim: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.w_gate = nnx.Param(dense_init(rngs.params(), (d_model, hidden_dim), d_model, param_dtype))
    self.w_up = nnx.Param(dense_init(rngs.params(), (d_model, hidden_dim), d_model, param_dtype))
    self.w_down = nnx.Param(dense_init(rngs.params(), (hidden_dim, d_model), hidden_dim,
                                       param_dtype))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    x = x_BxTxD.astype(self.dtype)
    gate_BxTxF, up_BxTxF = project_shared("...d,df->...f", x, (self.w_gate, self.w_up),
                                          self.dtype)
    return project("...f,fd->...d", jax.nn.silu(gate_BxTxF) * up_BxTxF, self.w_down, self.dtype)
