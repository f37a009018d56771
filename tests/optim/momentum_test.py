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
"""Delta Momentum (eq. 49) and Deep Momentum GD (eq. 50)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nl_jax import optim


def _grads(params, i):
  return jax.tree.map(lambda p: jax.random.normal(jax.random.key(50 + i), p.shape), params)


def test_delta_momentum_beta_zero_is_heavy_ball():
  params = {"w": jnp.ones((5, 3)), "b": jnp.ones((3,))}
  tx = optim.delta_momentum(0.1, alpha=0.8, beta=0.0)
  ref = optax.sgd(0.1, momentum=0.8)
  s, r = tx.init(params), ref.init(params)
  for i in range(4):
    g = _grads(params, i)
    u, s = tx.update(g, s, params)
    v, r = ref.update(g, r, params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6)


def test_delta_momentum_matches_numpy():
  alpha, beta, eps = 0.9, 0.6, 1e-8
  params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros((4,))}
  tx = optim.scale_by_delta_momentum(alpha, beta, eps)
  state = tx.init(params)
  mu = {k: np.zeros(v.shape) for k, v in params.items()}
  for i in range(3):
    g = _grads(params, i)
    u, state = tx.update(g, state)
    for k in mu:
      gk = np.asarray(g[k], np.float64)
      gh = gk / (np.linalg.norm(gk) + eps)
      if gk.ndim == 2:  # (alpha I - beta g_hat g_hat^T) mu on the input side.
        mu[k] = (alpha * np.eye(gk.shape[0]) - beta * gh @ gh.T) @ mu[k] + gk
      else:
        mu[k] = alpha * mu[k] - beta * gh * (gh @ mu[k]) + gk
      np.testing.assert_allclose(u[k], mu[k], rtol=1e-5, atol=1e-6)


def test_delta_momentum_erases_along_gradient():
  """A repeated gradient direction is retained less than by heavy ball (decay alpha - beta)."""
  params = {"w": jnp.zeros((4,))}
  g = {"w": jnp.array([1.0, 0.0, 0.0, 0.0])}
  tx = optim.scale_by_delta_momentum(alpha=0.9, beta=0.5)
  state = tx.init(params)
  for _ in range(50):
    u, state = tx.update(g, state)
  np.testing.assert_allclose(u["w"][0], 1.0 / (1.0 - 0.4), rtol=1e-4)  # Fixed point 1/(1-(a-b)).


def test_deep_momentum_without_learning_is_heavy_ball():
  params = {"w": jnp.ones((5, 3)), "b": jnp.ones((3,))}
  tx = optim.deep_momentum(0.1, beta=0.7, inner_lr=0.0)
  ref = optax.sgd(0.1, momentum=0.7)
  s, r = tx.init(params), ref.init(params)
  for i in range(4):
    g = _grads(params, i)
    u, s = tx.update(g, s, params)
    v, r = ref.update(g, r, params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_deep_momentum_memory_learns_to_predict_gradients():
  """On a smooth quadratic the gradient is predictable: the inner L2 loss must fall."""
  params = {"w": jax.random.normal(jax.random.key(0), (16, 8))}
  def loss(p):
    return 0.5 * jnp.sum(jnp.square(p["w"]))
  tx = optim.scale_by_deep_momentum(beta=0.9, inner_lr=0.5, memory_decay=1.0)
  state = tx.init(params)
  phi0 = state.phi

  def inner_loss(phi, mu, prev, g):
    def rms(x):
      return jnp.sqrt(jnp.mean(x**2))
    from nl_jax.optim import momentum  # pylint: disable=import-outside-toplevel
    mu_hat = mu / (rms(mu) + 1e-8)
    pred = momentum._memory_apply(phi, mu_hat, prev)  # pylint: disable=protected-access
    return float(jnp.mean((pred - g / (rms(g) + 1e-8)) ** 2))

  p = params
  for _ in range(30):
    g = jax.grad(loss)(p)
    prev_state = state
    u, state = tx.update(g, state)
    p = optax.apply_updates(p, jax.tree.map(lambda x: -0.02 * x, u))
  g = jax.grad(loss)(p)
  args = (state.mu["w"], state.prev_grad["w"], g["w"])
  assert inner_loss(state.phi["w"], *args) < inner_loss(phi0["w"], *args)
  assert float(jnp.abs(state.phi["w"]["w2"]).max()) > 0
  del prev_state
