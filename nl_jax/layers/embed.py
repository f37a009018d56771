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
"""Token embedding with an optional tied read-out."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from nl_jax.layers.projection import project


class Embed(nnx.Module):
  """Token embedding table `embedding` [vocab_size, d_model], N(0, 1/d_model) at init.

  The 1/sqrt(d_model) scale makes the tied read-out `attend` give O(1) logits for
  unit-RMS hidden states (the final RMSNorm guarantees that).
  """

  def __init__(self, vocab_size: int, d_model: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = nnx.Param(
        jax.random.normal(rngs.params(), (vocab_size, d_model), param_dtype)
        / jnp.sqrt(jnp.asarray(d_model, param_dtype)))

  def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], tokens_BxT, axis=0).astype(self.dtype)

  def attend(self, x_BxTxD: jax.Array) -> jax.Array:
    """Tied output head: float32 logits x E^T."""
    return project("...d,vd->...v", x_BxTxD, self.embedding, jnp.float32)
