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
"""Expressive momentum memories of paper section 4.4: Delta Momentum (eq. 49) and Deep Momentum
GD (eq. 50)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nl_jax.optim import _common


class ScaleByDeltaMomentumState(NamedTuple):
  """State of `scale_by_delta_momentum`: step count (int32) and momentum ``mu``."""
  count: jax.Array
  mu: optax.Updates


def _delta_decay(mu: jax.Array, g: jax.Array, alpha: Any, beta: Any, eps: Any) -> jax.Array:
  """``(alpha I - beta g_hat g_hat^T) mu`` on the input side of a (in, out) kernel."""
  g_hat = g / (jnp.sqrt(jnp.sum(jnp.square(g))) + eps)
  if g.ndim == 2:
    # g_hat (g_hat^T mu): the (in, in) projector is never formed.
    small = jnp.matmul(g_hat.T, mu, out_sharding=_common.replicated_like(mu))  # (out, out)
    return alpha * mu - beta * (g_hat @ small)
  return alpha * mu - beta * g_hat * jnp.sum(g_hat * mu)


def scale_by_delta_momentum(alpha: float = 0.9, beta: float = 0.5, eps: float = 1e-8,
                            mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Momentum with a gradient-dependent (delta-rule) decay, paper eq. 49.

  Derivation (spec section 3): the momentum is a memory ``mu`` trained on the objective

  .. math::
    \mathcal{L}_t(\mu) = \tfrac12 \|\hat g_t^\top \mu\|_F^2
      - \tfrac{1}{\beta}\langle \mu, g_t\rangle,
    \qquad \hat g_t = g_t / (\|g_t\|_F + \epsilon),

  i.e. the L2 "erase" term of eq. 48's ``||m g^T - P||^2`` (with the key normalised so the step
  size is explicit) plus the value-less write of plain momentum (eqs. 10-13). One gradient step
  of size ``beta`` on it, after the retention ``alpha``, gives for a ``(in, out)`` kernel

  .. math::
    \mu_t = (\alpha I - \beta\, \hat g_t \hat g_t^\top)\, \mu_{t-1} + g_t ,

  which is eq. 49 (``m (alpha - g^T g) - eta P g``) with the explicit step ``beta``, the
  normalised gradient, and the transposed kernel convention (the paper's right-multiplication by
  ``g^T g`` on an ``(out, in)`` matrix is the input side). The decay factors lie in
  ``[alpha - beta, alpha]``: directions the current gradient spans are forgotten faster. Leaves
  that are not matrices use the flattened vector form ``(alpha I - beta g_hat g_hat^T) mu``
  (rank-1 erase along the gradient). ``beta = 0`` is heavy-ball momentum (`optax.trace`).

  Args:
    alpha: retention in [0, 1).
    beta: erase step in [0, 1].
    eps: added to ``||g||_F`` (> 0).
    mu_dtype: dtype of the momentum (default: the parameter dtype).

  Returns:
    An `optax.GradientTransformation`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nl_jax.optim import scale_by_delta_momentum
    >>> tx = scale_by_delta_momentum(alpha=0.9, beta=0.5)
    >>> state = tx.init({'w': jnp.zeros((2, 2))})
    >>> u, state = tx.update({'w': jnp.eye(2)}, state)
    >>> u['w'].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  _common.check_range("alpha", alpha, low=0.0, high=1.0, high_inclusive=False)
  _common.check_range("beta", beta, low=0.0, high=1.0)
  _common.check_range("eps", eps, low=0.0, low_inclusive=False)

  def init_fn(params):
    return ScaleByDeltaMomentumState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(lambda p: _common.zeros_like(p, mu_dtype), params))

  def update_fn(updates, state, params=None):
    del params

    def leaf(g, m):
      g32 = g.astype(jnp.float32)
      return _delta_decay(m.astype(jnp.float32), g32, alpha, beta, eps) + g32

    mu32 = jax.tree.map(leaf, updates, state.mu)
    mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu32, state.mu)
    out = jax.tree.map(lambda m, g: m.astype(g.dtype), mu32, updates)
    return out, ScaleByDeltaMomentumState(count=optax.safe_increment(state.count), mu=mu)

  return optax.GradientTransformation(init_fn, update_fn)


def delta_momentum(learning_rate: optax.ScalarOrSchedule, alpha: float = 0.9, beta: float = 0.5,
                   eps: float = 1e-8, weight_decay: float = 0.0, weight_decay_mask: Any = None,
                   mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Delta Momentum gradient descent (eq. 48-49).

  .. math::
    \mu_t = (\alpha I - \beta \hat g_t \hat g_t^\top)\mu_{t-1} + g_t, \qquad
    W_t = W_{t-1} - \eta_t (\mu_t + \lambda W_{t-1}).

  Args:
    learning_rate: scalar or schedule (>= 0).
    alpha, beta, eps, mu_dtype: see `scale_by_delta_momentum`.
    weight_decay: decoupled weight decay (multiplied by the learning rate).
    weight_decay_mask: optional mask for the weight decay.

  Returns:
    An `optax.GradientTransformation`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from nl_jax.optim import delta_momentum
    >>> params = {'w': jnp.ones((3, 2))}
    >>> loss = lambda p: jnp.sum(p['w'] ** 2)
    >>> tx = delta_momentum(learning_rate=0.05)
    >>> state = tx.init(params)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, u)
    >>> bool(loss(params) < 1e-2)
    True
  """
  _common.check_learning_rate(learning_rate)
  _common.check_range("weight_decay", weight_decay, low=0.0)
  return optax.chain(
      scale_by_delta_momentum(alpha, beta, eps, mu_dtype),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


class ScaleByDeepMomentumState(NamedTuple):
  """State of `scale_by_deep_momentum`.

  Attributes:
    count: step count (int32).
    mu: linear momentum buffer (the memory's main input feature).
    prev_grad: previous gradient, RMS-normalised (the memory's key for the next inner step).
    phi: per-leaf MLP memory parameters ``{'w1': (2, h), 'b1': (h,), 'w2': (h,)}`` (float32).
  """
  count: jax.Array
  mu: optax.Updates
  prev_grad: optax.Updates
  phi: Any


def _memory_apply(phi: dict[str, jax.Array], mu_hat: jax.Array, g_hat: jax.Array) -> jax.Array:
  """Element-wise residual MLP ``mu_hat + w2 . tanh(W1 [mu_hat, g_hat] + b1)``."""
  z = jnp.stack([mu_hat, g_hat], axis=-1)
  hidden = jnp.tanh(z @ phi["w1"] + phi["b1"])
  return mu_hat + hidden @ phi["w2"]


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def scale_by_deep_momentum(beta: float = 0.9, inner_lr: float = 0.1, memory_decay: float = 0.99,
                           hidden: int = 8, eps: float = 1e-8, seed: int = 0,
                           mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Deep Momentum Gradient Descent (eq. 50): momentum read out by a learned MLP memory.

  Each parameter leaf owns a tiny MLP ``m_phi: R^2 -> R`` applied element-wise (so it fits any
  shape) to the features ``z = (mu_hat, g_hat)`` of every entry, where ``mu`` is a heavy-ball
  buffer and ``x_hat = x / (rms(x) + eps)`` makes the memory scale-free:

  .. math::
    m_\phi(z) = \hat\mu + w_2^\top \tanh(W_1 z + b_1).

  Inner level (one step per optimizer step, eq. 50 with an L2 objective): the memory learns to
  predict the incoming normalised gradient from the previous features,

  .. math::
    \phi \leftarrow \alpha_\phi \phi - \zeta \nabla_\phi\,
      \tfrac12 \operatorname{mean}\big(m_\phi(\hat\mu_{t-1}, \hat g_{t-1}) - \hat g_t\big)^2 .

  Outer level: :math:`\mu_t = \beta \mu_{t-1} + g_t` and the weights move by the memory's output,
  :math:`u_t = (\mathrm{rms}(\mu_t) + \epsilon)\, m_\phi(\hat\mu_t, \hat g_t)`. With
  ``w2 = 0`` (the initialisation) or ``inner_lr = 0`` the memory is the identity read-out and
  this is heavy-ball momentum exactly; ``memory_decay < 1`` pulls it back there.

  This is the project's reinterpretation of eq. 50 (an L2 memory predicting the next gradient,
  read out around a heavy-ball buffer). Eq. 50 taken literally (an MLP memory over gradients
  trained by GD on its dot-product objective, the weights moving by its output) is
  `nl_jax.optim.deep_momentum_gd`.

  Args:
    beta: heavy-ball factor in [0, 1).
    inner_lr: step ``zeta`` of the memory's inner gradient step (>= 0).
    memory_decay: retention ``alpha_phi`` of the memory weights in [0, 1].
    hidden: hidden width of the memory (>= 1; static under `inject_hyperparams`).
    eps: normalisation epsilon (> 0).
    seed: seed of the memory's first-layer initialisation.
    mu_dtype: dtype of the momentum buffers (default: the parameter dtype).

  Returns:
    An `optax.GradientTransformation`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nl_jax.optim import scale_by_deep_momentum
    >>> tx = scale_by_deep_momentum()
    >>> state = tx.init({'w': jnp.zeros((3, 2))})
    >>> u, state = tx.update({'w': jnp.ones((3, 2))}, state)
    >>> u['w'].shape
    (3, 2)
  """
  _common.check_range("beta", beta, low=0.0, high=1.0, high_inclusive=False)
  _common.check_range("inner_lr", inner_lr, low=0.0)
  _common.check_range("memory_decay", memory_decay, low=0.0, high=1.0)
  _common.check_range("eps", eps, low=0.0, low_inclusive=False)
  hidden = _common.static_int("hidden", hidden)
  seed = _common.static_int("seed", seed, low=0)

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    phis = [{
        "w1": jax.random.normal(k, (2, hidden), jnp.float32) / jnp.sqrt(2.0),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jnp.zeros((hidden,), jnp.float32),
    } for k in keys[:len(leaves)]]
    def zeros():
      return jax.tree.map(lambda p: _common.zeros_like(p, mu_dtype), params)
    return ScaleByDeepMomentumState(
        count=jnp.zeros([], jnp.int32), mu=zeros(), prev_grad=zeros(),
        phi=jax.tree.unflatten(treedef, phis) if leaves else {})

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    mus = treedef.flatten_up_to(state.mu)
    prevs = treedef.flatten_up_to(state.prev_grad)
    phis = treedef.flatten_up_to(state.phi)
    new_mu, new_prev, new_phi, out = [], [], [], []
    for g, mu, prev, phi in zip(leaves, mus, prevs, phis, strict=True):
      g32 = g.astype(jnp.float32)
      g_hat = g32 / (_rms(g32) + eps)
      mu_old = mu.astype(jnp.float32)
      mu_old_hat = mu_old / (_rms(mu_old) + eps)
      prev32 = prev.astype(jnp.float32)

      def inner_loss(p, mu_old_hat=mu_old_hat, prev32=prev32, g_hat=g_hat):
        return 0.5 * jnp.mean(jnp.square(_memory_apply(p, mu_old_hat, prev32) - g_hat))

      grads = jax.grad(inner_loss)(phi)
      phi = jax.tree.map(lambda w, dw: memory_decay * w - inner_lr * dw, phi, grads)
      mu_new = beta * mu_old + g32
      scale = _rms(mu_new) + eps
      u = scale * _memory_apply(phi, mu_new / scale, g_hat)
      new_mu.append(mu_new.astype(mu.dtype))
      new_prev.append(g_hat.astype(prev.dtype))
      new_phi.append(phi)
      out.append(u.astype(g.dtype))
    def unflat(xs):
      return jax.tree.unflatten(treedef, xs)
    return unflat(out), ScaleByDeepMomentumState(
        count=optax.safe_increment(state.count), mu=unflat(new_mu), prev_grad=unflat(new_prev),
        phi=unflat(new_phi))

  return optax.GradientTransformation(init_fn, update_fn)


def deep_momentum(learning_rate: optax.ScalarOrSchedule, beta: float = 0.9, inner_lr: float = 0.1,
                  memory_decay: float = 0.99, hidden: int = 8, eps: float = 1e-8,
                  weight_decay: float = 0.0, weight_decay_mask: Any = None, seed: int = 0,
                  mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Deep Momentum Gradient Descent (DMGD, eq. 50).

  .. math::
    W_t = W_{t-1} - \eta_t \big(u_t + \lambda W_{t-1}\big), \qquad
    u_t = (\mathrm{rms}(\mu_t)+\epsilon)\, m_{\phi_t}(\hat\mu_t, \hat g_t),

  with the per-leaf MLP memory ``m_phi`` and its inner step described in
  `scale_by_deep_momentum`.

  Args:
    learning_rate: scalar or schedule (>= 0).
    beta, inner_lr, memory_decay, hidden, eps, seed, mu_dtype: see `scale_by_deep_momentum`.
    weight_decay: decoupled weight decay (multiplied by the learning rate).
    weight_decay_mask: optional mask for the weight decay.

  Returns:
    An `optax.GradientTransformation`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from nl_jax.optim import deep_momentum
    >>> params = {'w': jnp.ones((3, 2))}
    >>> loss = lambda p: jnp.sum(p['w'] ** 2)
    >>> tx = deep_momentum(learning_rate=0.05)
    >>> state = tx.init(params)
    >>> for _ in range(60):
    ...   u, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, u)
    >>> bool(loss(params) < 1e-2)
    True
  """
  _common.check_learning_rate(learning_rate)
  _common.check_range("weight_decay", weight_decay, low=0.0)
  return optax.chain(
      scale_by_deep_momentum(beta, inner_lr, memory_decay, hidden, eps, seed, mu_dtype),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )
