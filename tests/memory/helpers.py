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
"""Random inputs and comparisons shared by the memory tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nl_jax.memory import MemoryInputs


def random_inputs(key, batch_shape, t, d_in, d_out, dtype=jnp.float32, momentum=False,
                  eta_range=(0.1, 0.9), alpha_range=(0.8, 1.0), unit_keys=True):
  ks = jax.random.split(key, 6)
  shape = tuple(batch_shape) + (t,)
  k = jax.random.normal(ks[0], shape + (d_in,), dtype)
  if unit_keys:
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  v = jax.random.normal(ks[1], shape + (d_out,), dtype)
  q = jax.random.normal(ks[2], shape + (d_in,), dtype)
  eta = jax.random.uniform(ks[3], shape, dtype, *eta_range)
  alpha = jax.random.uniform(ks[4], shape, dtype, *alpha_range)
  mu = jax.random.uniform(ks[5], shape, dtype, 0.0, 0.9) if momentum else None
  return MemoryInputs(keys=k, values=v, eta=eta, queries=q, alpha=alpha, momentum=mu)


def rel_err(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))


def assert_trees_close(a, b, rtol, what=""):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb), f"{what}: tree structures differ"
  for i, (x, y) in enumerate(zip(la, lb, strict=True)):
    assert x.shape == y.shape, f"{what}[{i}]: shapes {x.shape} vs {y.shape}"
    err = rel_err(x, y)
    assert err <= rtol, f"{what}[{i}]: relative error {err:.3e} > {rtol:.1e}"


@functools.partial(jax.jit, static_argnums=(0, 3))
def loss_and_grads(mem, params, inputs, implementation):
  """Scalar outer loss through outputs and final state; grads w.r.t. params and every float
  input (document resets, when given, are held fixed: their grad entry is None)."""
  batch_shape = inputs.keys.shape[:-2]
  reset = inputs.reset

  def loss(params, inputs):
    state = mem.init_state(params, batch_shape)
    out, state = mem.scan(params, state, inputs._replace(reset=reset),
                          implementation=implementation)
    # Fixed random-ish weights make every output coordinate matter differently.
    w = jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)
    state_term = sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(state.memory))
    return jnp.sum(w * out) + state_term, (out, state)

  (value, (out, state)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      params, inputs._replace(reset=None))
  return value, out, state, grads
