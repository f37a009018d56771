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
"""The momentum family (eqs. 46-52) against independent plain-loop recurrences in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nl_jax import optim


def _params():
  return {"w": jnp.zeros((5, 3)), "b": jnp.zeros((4,))}


def _grads(params, i, scale=1.0):
  return jax.tree.map(
      lambda p: scale * jax.random.normal(jax.random.key(300 + i), p.shape, p.dtype), params)


def _run(tx, params, steps, scale=1.0):
  state = tx.init(params)
  update = jax.jit(tx.update)
  outs = []
  for i in range(steps):
    u, state = update(_grads(params, i, scale), state, params)
    outs.append(u)
  return outs, state


def _np_erase(mu, g, beta, normalize, eps):
  k = g / (np.linalg.norm(g) + eps) if normalize else g
  if g.ndim == 2:
    return beta * k @ (k.T @ mu)
  return beta * k * (k @ mu)


def _np_poly(c, x, normalize, eps):
  s = np.sqrt(np.mean(x**2)) + eps if normalize else 1.0
  return s * sum(ck * (x / s)**k for k, ck in enumerate(c))


def _np_poly_learn(c, x, normalize, eps, lr):
  s = np.sqrt(np.mean(x**2)) + eps if normalize else 1.0
  xh = (x / s).reshape(-1)
  feats = np.stack([xh**k for k in range(len(c))], axis=-1)
  grad = np.zeros(len(c))
  for j in range(xh.size):  # Per-entry loop: the mean of the per-entry L2 gradients.
    grad += (feats[j] @ c - np.sign(xh[j])) * feats[j]
  grad /= xh.size
  norm = np.mean(np.sum(feats**2, axis=-1))
  return c - lr * grad / (norm + eps)


@pytest.mark.parametrize("normalize", [True, False])
def test_expressive_core_matches_plain_loop_float64(normalize):
  """Learned diagonal P, learned polynomial phi and the erase, token by token in numpy."""
  alpha, beta, eps, zeta, lr_c = 0.85, (0.4 if normalize else 0.05), 1e-8, 0.3, 0.5
  poly = optim.Polynomial((0.0, 1.0, 0.0, 0.2), normalize=True, learned=True, inner_lr=lr_c,
                          eps=eps)
  with jax.enable_x64(True):
    params = {"w": jnp.zeros((5, 3), jnp.float64), "b": jnp.zeros((4,), jnp.float64)}
    tx = optim.scale_by_expressive_momentum(
        alpha, beta, preconditioner=optim.LearnedDiagonal(inner_lr=zeta, init=0.7),
        feature_map=poly, normalize_erase=normalize, eps=eps)
    outs, state = _run(tx, params, 5, scale=0.7)
    for k in params:
      mu = np.zeros(params[k].shape)
      d = np.full(params[k].shape, 0.7)
      c = np.array(poly.coeffs)
      for i in range(5):
        g = np.asarray(_grads(params, i, 0.7)[k])
        c = _np_poly_learn(c, g, True, eps, lr_c)
        x = _np_poly(c, g, True, eps)
        for j in np.ndindex(x.shape):  # Element-wise proximal step of the diagonal memory.
          d[j] = d[j] - zeta * (d[j] * x[j] - np.sign(x[j])) * x[j] / (1 + zeta * x[j] ** 2)
        mu = alpha * mu - _np_erase(mu, g, beta, normalize, eps) + d * x
        np.testing.assert_allclose(outs[i][k], mu, rtol=1e-12, atol=1e-13)
      np.testing.assert_allclose(state.precond[k], d, rtol=1e-6)
      np.testing.assert_allclose(state.features[k], c, rtol=1e-6)


def test_delta_momentum_p_literal_is_eq49_as_printed():
  """normalize=False, beta=1: m <- m (alpha I - g g^T) - eta P g, on the paper's (out, in)."""
  alpha, eta = 0.9, 0.1
  scale_p = lambda x: 2.0 * x  # noqa: E731  A fixed callable P_i.
  with jax.enable_x64(True):
    params = {"w": jnp.zeros((5, 3), jnp.float64)}
    tx = optim.delta_momentum_p(eta, alpha=alpha, beta=1.0, preconditioner=scale_p,
                                normalize=False)
    outs, _ = _run(tx, params, 4, scale=0.3)
    m = np.zeros((3, 5))  # The paper's (out, in) convention: W^T.
    w = np.zeros((3, 5))
    for i in range(4):
      g = np.asarray(_grads(params, i, 0.3)["w"]).T
      m = m @ (alpha * np.eye(5) - g.T @ g) - eta * 2.0 * g
      np.testing.assert_allclose(outs[i]["w"], m.T, rtol=1e-12, atol=1e-14)
      w = w + m
    del w


def test_delta_momentum_p_defaults_equal_delta_momentum():
  params = _params()
  a, _ = _run(optim.delta_momentum_p(0.1, alpha=0.8, beta=0.3), params, 4)
  b, _ = _run(optim.delta_momentum(0.1, alpha=0.8, beta=0.3), params, 4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [
    lambda: optim.preconditioned_momentum(0.1, alpha=0.8),
    lambda: optim.feature_momentum(0.1, alpha=0.8, feature_map=optim.Polynomial((0.0, 1.0))),
    lambda: optim.preconditioned_momentum(
        0.1, alpha=0.8, preconditioner=optim.LearnedDiagonal(inner_lr=0.0)),
    lambda: optim.nonlinear_momentum(0.1, beta=0.8, sigma=lambda m: m),
], ids=["no_P", "identity_phi", "frozen_diagonal", "identity_sigma"])
def test_identity_members_are_heavy_ball(make):
  params = _params()
  a, _ = _run(make(), params, 4)
  b, _ = _run(optax.sgd(0.1, momentum=0.8), params, 4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_fixed_polynomial_matches_numpy():
  poly = optim.Polynomial((0.1, 1.0, -0.5, 0.25))
  with jax.enable_x64(True):
    params = {"w": jnp.zeros((4, 3), jnp.float64)}
    outs, _ = _run(optim.scale_by_expressive_momentum(0.7, feature_map=poly), params, 3)
    mu = np.zeros((4, 3))
    for i in range(3):
      g = np.asarray(_grads(params, i)["w"])
      mu = 0.7 * mu + 0.1 + g - 0.5 * g**2 + 0.25 * g**3
      np.testing.assert_allclose(outs[i]["w"], mu, rtol=1e-13)


def test_learned_diagonal_converges_to_its_argmin():
  """Repeated gradient x: d -> sign(x)/x, the argmin of 1/2 (d x - sign x)^2."""
  tx = optim.scale_by_expressive_momentum(0.0, preconditioner=optim.LearnedDiagonal(inner_lr=1.0))
  state = tx.init({"w": jnp.zeros(3)})
  g = {"w": jnp.array([4.0, -0.5, 2.0])}
  for _ in range(60):
    u, state = tx.update(g, state)
  np.testing.assert_allclose(state.precond["w"], 1.0 / jnp.abs(g["w"]), rtol=1e-5)
  np.testing.assert_allclose(u["w"], jnp.sign(g["w"]), rtol=1e-5)


@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])
def test_nonlinear_momentum_newton_schulz_is_muon(shape):
  """Eq. 52 with sigma = Newton-Schulz and a linear memory is optax.contrib.muon (matrices)."""
  params = {"w": jax.random.normal(jax.random.key(0), shape)}
  ours = optim.nonlinear_momentum(0.05, beta=0.9, ns_eps=1e-7)
  ref = optax.contrib.muon(0.05, beta=0.9, nesterov=False, eps=1e-7)
  s1, s2 = ours.init(params), ref.init(params)
  up1, up2 = jax.jit(ours.update), jax.jit(ref.update)
  p = params
  for i in range(5):
    g = _grads(p, i)
    u1, s1 = up1(g, s1, p)
    u2, s2 = up2(g, s2, p)
    np.testing.assert_allclose(u1["w"], u2["w"], atol=2e-6, rtol=1e-5)
    p = optax.apply_updates(p, u1)


def test_deep_momentum_gd_linear_memory_is_heavy_ball():
  """hidden=0: w0 <- alpha w0 - eta u, W <- W + w0 == optax.sgd(eta, momentum=alpha)."""
  params = _params()
  a, _ = _run(optim.deep_momentum_gd(0.1, alpha=0.8, hidden=0), params, 5)
  b, _ = _run(optax.sgd(0.1, momentum=0.8), params, 5)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_deep_momentum_gd_matches_hand_derived_loop_float64():
  """Eq. 50 with hand-written gradients of <m_phi(u), u> (no autodiff in the reference)."""
  eta, alpha, hidden = 0.2, 0.9, 3
  with jax.enable_x64(True):
    params = {"w": jnp.zeros((4, 3), jnp.float64)}
    tx = optim.scale_by_deep_momentum_gd(eta, alpha=alpha, hidden=hidden, init_scale=0.8, seed=3)
    state0 = tx.init(params)
    outs, state = _run(tx, params, 4)
    phi = jax.tree.map(lambda x: np.asarray(x, np.float64), state0.memory["w"])
    w0, w1, b1, w2 = phi.w0, phi.w1, phi.b1, phi.w2
    for i in range(4):
      u = np.asarray(_grads(params, i)["w"]).reshape(-1)
      u = u.reshape(w0.shape)
      z = np.tanh(u[..., None] * w1 + b1)  # [*leaf, hidden]: one MLP per entry.
      dz = (1 - z**2) * w2
      g_w0 = u
      g_w2 = z * u[..., None]
      g_w1 = dz * (u**2)[..., None]
      g_b1 = dz * u[..., None]
      w0, w1, b1, w2 = (alpha * w0 - eta * g_w0, alpha * w1 - eta * g_w1,
                        alpha * b1 - eta * g_b1, alpha * w2 - eta * g_w2)
      out = w0 + (np.tanh(u[..., None] * w1 + b1) * w2).sum(-1)
      np.testing.assert_allclose(outs[i]["w"], out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state.memory["w"].w2, w2, rtol=1e-12)


def test_deep_momentum_gd_memory_learns_antialigned_step():
  """The MLP part learns a function of u anti-aligned with u (<m(u), u> decreases)."""
  params = {"w": jnp.zeros((8, 8))}
  tx = optim.scale_by_deep_momentum_gd(0.05, alpha=0.95, hidden=4)
  state = tx.init(params)
  for i in range(20):
    g = _grads(params, i)
    _, state = tx.update(g, state)
  phi = state.memory["w"]
  u = _grads(params, 99)["w"]
  mlp_only = optim.DeepMomentumMemory(jnp.zeros_like(phi.w0), phi.w1, phi.b1, phi.w2)
  assert float(jnp.sum(optim.momentum_family.deep_memory_apply(mlp_only, u) * u)) < 0


@pytest.mark.parametrize("make, match", [
    (lambda: optim.scale_by_expressive_momentum(1.5), "alpha"),
    (lambda: optim.scale_by_expressive_momentum(0.9, -0.1), "beta"),
    (lambda: optim.scale_by_expressive_momentum(0.9, preconditioner="diag"), "preconditioner"),
    (lambda: optim.scale_by_expressive_momentum(0.9, feature_map=3), "feature_map"),
    (lambda: optim.LearnedDiagonal(inner_lr=-1.0), "inner_lr"),
    (lambda: optim.LearnedDiagonal(target="cube"), "target"),
    (lambda: optim.LearnedLowRank(rank=0), "rank"),
    (lambda: optim.Polynomial(()), "coeffs"),
    (lambda: optim.scale_by_nonlinear_momentum(0.9, sigma="tanh"), "sigma"),
    (lambda: optim.scale_by_nonlinear_momentum(1.0), "beta"),
    (lambda: optim.deep_momentum_gd(-0.1), "learning_rate"),
    (lambda: optim.deep_momentum_gd(0.1, hidden=-1), "hidden"),
    (lambda: optim.deep_momentum_gd(0.1, alpha=2.0), "alpha"),
    (lambda: optim.deep_momentum_gd(0.1, activation="sin"), "activation"),
])
def test_bad_hyperparameters_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_learned_low_rank_matches_plain_loop_float64():
  """P(x) = x + U V^T x on matrix leaves, (U, V) one normalised GD step before use."""
  alpha, zeta, rank = 0.8, 0.7, 2
  pre = optim.LearnedLowRank(rank=rank, inner_lr=zeta, init_scale=1.0, seed=4)
  with jax.enable_x64(True):
    params = {"w": jnp.zeros((5, 3), jnp.float64), "b": jnp.zeros((4,), jnp.float64)}
    tx = optim.scale_by_expressive_momentum(alpha, preconditioner=pre)
    state0 = tx.init(params)
    outs, state = _run(tx, params, 4)
    u, v = (np.asarray(x) for x in state0.precond["w"])
    assert not np.any(u) and v.shape == (5, rank) and state0.precond["b"] == ()
    mu_w, mu_b = np.zeros((5, 3)), np.zeros(4)
    for i in range(4):
      g = _grads(params, i)
      x = np.asarray(g["w"])
      tau = np.sqrt(np.mean(x**2)) * np.sign(x)
      resid = x + u @ v.T @ x - tau
      s = zeta / (np.sum(x**2) + 1e-12)
      u, v = u - s * resid @ (v.T @ x).T, v - s * x @ resid.T @ u
      mu_w = alpha * mu_w + x + u @ v.T @ x
      mu_b = alpha * mu_b + np.asarray(g["b"])  # Non-matrix leaves: P = I.
      np.testing.assert_allclose(outs[i]["w"], mu_w, rtol=1e-12, atol=1e-13)
      np.testing.assert_allclose(outs[i]["b"], mu_b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(state.precond["w"][1], v, rtol=1e-12)


def test_learned_low_rank_lowers_its_inner_loss_on_a_fixed_gradient():
  """Repeated gradient: the inner L2 loss ||P(x) - tau(x)||^2 falls at every step."""
  pre = optim.LearnedLowRank(rank=4, inner_lr=0.5)
  tx = optim.scale_by_expressive_momentum(0.0, preconditioner=pre)
  x = jax.random.normal(jax.random.key(9), (6, 4))
  state = tx.init({"w": x})
  update = jax.jit(tx.update)
  tau = jnp.sqrt(jnp.mean(x**2)) * jnp.sign(x)
  errs = []
  for _ in range(200):
    u, state = update({"w": x}, state)
    errs.append(float(jnp.sum((u["w"] - tau)**2)))
  assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:], strict=False))
  assert errs[-1] < 0.2 * errs[0], (errs[0], errs[-1])
