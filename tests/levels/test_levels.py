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
"""Declared nested systems (nl_jax.levels) equal the optimizers and loops they describe."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nl_jax import levels, optim


def _regression_stream(key, steps, n=6, d_in=5, d_out=3, dtype=jnp.float64):
  kx, kw = jax.random.split(key)
  xs = jax.random.normal(kx, (steps, n, d_in), dtype)
  w_star = jax.random.normal(kw, (d_in, d_out), dtype)
  return xs, jnp.einsum("tnd,de->tne", xs, w_star)


def _loss(w, item):
  x, y = item
  return 0.5 * jnp.mean(jnp.sum(jnp.square(x @ w - y), axis=-1))


def _weights_level(w0, lr, memory_name, read):
  """The outer level: W <- W - lr * (what the memory level holds)."""
  return levels.gradient_level(
      "weights", w0, objective=levels.dot_product, optimizer=optax.sgd(lr),
      context=lambda s, item: read(s[memory_name]))


def _reference(tx, w0, xs, ys):
  w, s = w0, tx.init(w0)
  for t in range(xs.shape[0]):
    u, s = tx.update(jax.grad(_loss)(w, (xs[t], ys[t])), s, w)
    w = optax.apply_updates(w, u)
  return w


def test_momentum_is_a_one_level_memory_over_gradients():
  """m <- argmin <m, g> + (1/2eta)||m - m_t||^2 with retention beta; W <- W + m."""
  eta, beta, steps = 0.1, 0.9, 12
  with jax.enable_x64(True):
    xs, ys = _regression_stream(jax.random.key(0), steps)
    w0 = jnp.zeros((5, 3), jnp.float64)
    momentum = levels.gradient_level(
        "momentum", jnp.zeros_like(w0), objective=levels.dot_product,
        # Weight decay (1 - beta)/eta inside an SGD step of size eta is the retention beta.
        optimizer=optax.chain(optax.add_decayed_weights((1 - beta) / eta), optax.sgd(eta)),
        context=lambda s, item: jax.grad(_loss)(s["weights"].params, item))
    weights = _weights_level(w0, 1.0, "momentum", lambda m: -m.params)
    system = levels.NestedSystem((momentum, weights))
    state = jax.jit(system.run)(system.init((xs[0], ys[0])), (xs, ys))
    ref = _reference(optax.sgd(eta, momentum=beta), w0, xs, ys)
    np.testing.assert_allclose(state.levels["weights"].params, ref, rtol=1e-12, atol=1e-13)
    assert int(state.tick) == steps


class AdamMemory(NamedTuple):
  """Sufficient statistics of the element-wise L2 memory over gradients, and its optimum."""
  m: jax.Array  # EMA of g (the cross term of the objective).
  v: jax.Array  # EMA of g^2 (the quadratic term).
  count: jax.Array
  memory: jax.Array  # The closed-form argmin.


def _adam_memory_level(shape, b1, b2, eps):
  r"""Appendix B: m* = argmin_m sum_i w2_i (m g_i)^2 - 2 w1_i m g_i P + lam m^2, element-wise.

  The objective is ||m g_i - P||^2 summed over past gradients (its constant dropped), with the
  quadratic part weighted by the bias-corrected beta2-EMA and the cross part by the beta1-EMA
  (the running sums M~, H of eq. 102 with decay). With P = sqrt(V_hat) (eq. 105) and the ridge
  lam = eps sqrt(V_hat), m* = P M_hat / (V_hat + lam) = M_hat / (sqrt(V_hat) + eps): Adam.
  """
  zeros = jnp.zeros(shape, jnp.float64)

  def update(s, g):
    m = b1 * s.m + (1 - b1) * g
    v = b2 * s.v + (1 - b2) * g * g
    t = s.count + 1
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    p, lam = jnp.sqrt(v_hat), eps * jnp.sqrt(v_hat)
    return AdamMemory(m, v, t, p * m_hat / (v_hat + lam))

  return levels.Level(
      name="adam", init=AdamMemory(zeros, zeros, jnp.zeros([], jnp.int32), zeros),
      context=lambda s, item: jax.grad(_loss)(s["weights"].params, item), update=update)


def test_adam_is_the_optimal_l2_memory_over_gradients():
  lr, b1, b2, eps, steps = 0.05, 0.9, 0.99, 1e-8, 15
  with jax.enable_x64(True):
    xs, ys = _regression_stream(jax.random.key(1), steps)
    w0 = 0.1 * jnp.ones((5, 3), jnp.float64)
    system = levels.NestedSystem((_adam_memory_level(w0.shape, b1, b2, eps),
                                  _weights_level(w0, lr, "adam", lambda a: a.memory)))
    state = jax.jit(system.run)(system.init((xs[0], ys[0])), (xs, ys))
    ref = _reference(optax.adam(lr, b1=b1, b2=b2, eps=eps), w0, xs, ys)
    np.testing.assert_allclose(state.levels["weights"].params, ref, rtol=1e-12, atol=1e-14)


def test_adam_memory_is_the_argmin_of_its_literal_objective():
  """Against the objective written as a weighted sum over the stored gradient history."""
  b1, b2, eps, t = 0.9, 0.99, 1e-8, 7
  with jax.enable_x64(True):
    gs = jax.random.normal(jax.random.key(2), (t, 4, 3), jnp.float64)
    level = _adam_memory_level((4, 3), b1, b2, eps)
    s = level.init
    for i in range(t):
      s = level.update(s, gs[i])
    ages = jnp.arange(t - 1, -1, -1, dtype=jnp.float64)
    w1 = (1 - b1) * b1**ages / (1 - b1**t)
    w2 = (1 - b2) * b2**ages / (1 - b2**t)
    v_hat = jnp.einsum("i,ijk->jk", w2, gs**2)
    p, lam = jnp.sqrt(v_hat), eps * jnp.sqrt(v_hat)

    def objective(m):  # Element-wise and separable: sum over entries.
      per_i = w2[:, None, None] * (m * gs)**2 - 2 * w1[:, None, None] * m * gs * p
      return jnp.sum(per_i) + jnp.sum(lam * m**2)

    g0, g1 = jax.grad(objective)(jnp.zeros((4, 3))), jax.grad(objective)(jnp.ones((4, 3)))
    argmin = -g0 / (g1 - g0)  # One Newton step on a separable quadratic.
    np.testing.assert_allclose(s.memory, argmin, rtol=1e-12)
    np.testing.assert_allclose(jax.grad(objective)(s.memory), 0.0, atol=1e-12)


def _block(a, x):
  return x + jnp.tanh(x @ a)


def test_cms_style_chain_equals_plain_loop_of_eq71():
  """Two MLP levels, chunk sizes 1 and 4: each sums its token-loss gradients over its chunk."""
  eta1, eta2, c2, steps, d = 0.05, 0.02, 4, 11, 4
  with jax.enable_x64(True):
    k = jax.random.split(jax.random.key(3), 4)
    a1 = 0.3 * jax.random.normal(k[0], (d, d), jnp.float64)
    a2 = 0.3 * jax.random.normal(k[1], (d, d), jnp.float64)
    xs = jax.random.normal(k[2], (steps, d), jnp.float64)
    ys = jnp.sin(jax.random.normal(k[3], (steps, d), jnp.float64))

    def token_loss(p1, p2, item):
      x, y = item
      return 0.5 * jnp.sum((_block(p2, _block(p1, x)) - y)**2)

    def grad_of(argnum):
      def ctx(s, item):
        return jax.grad(token_loss, argnums=argnum)(s["fast"].params, s["slow"].params, item)
      return ctx

    fast = levels.gradient_level("fast", a1, objective=levels.dot_product,
                                 optimizer=optax.sgd(eta1), context=grad_of(0),
                                 reads="tick_start")
    slow = levels.gradient_level("slow", a2, objective=levels.dot_product,
                                 optimizer=optax.sgd(eta2), context=grad_of(1), every=c2,
                                 reads="tick_start")
    system = levels.NestedSystem((fast, slow))
    state = jax.jit(system.run)(system.init((xs[0], ys[0])), (xs, ys))

    p1, p2, acc = np.asarray(a1), np.asarray(a2), np.zeros((d, d))
    for t in range(steps):
      g1, g2 = jax.grad(token_loss, argnums=(0, 1))(p1, p2, (xs[t], ys[t]))
      acc = acc + np.asarray(g2)
      p1 = p1 - eta1 * np.asarray(g1)
      if (t + 1) % c2 == 0:  # eq. 71: apply the chunk's summed gradient at its end.
        p2, acc = p2 - eta2 * acc, np.zeros((d, d))
    np.testing.assert_allclose(state.levels["fast"].params, p1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state.levels["slow"].params, p2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state.pending["slow"], acc, rtol=1e-12, atol=1e-14)


class _Momentum(NamedTuple):
  m: jax.Array
  o: jax.Array  # Its Newton-Schulz image.


def test_m3_is_a_four_level_system():
  """Algorithm 1 (running sums, literal division) as levels == nl_jax.optim.scale_by_m3."""
  lr, b1, b2, b3, alpha, f, eps, steps = 0.02, 0.9, 0.99, 0.8, 0.5, 3, 1e-8, 8
  xs, ys = _regression_stream(jax.random.key(4), steps, d_in=8, d_out=12, dtype=jnp.float32)
  w0 = 0.1 * jax.random.normal(jax.random.key(5), (8, 12))
  grad = lambda s, item: jax.grad(_loss)(s["weights"].params, item)  # noqa: E731
  zeros = jnp.zeros_like(w0)
  second = levels.Level("V", zeros, context=lambda s, it: grad(s, it)**2,
                        update=lambda v, c: v + b2 * c)
  fast = levels.Level("M1", _Momentum(zeros, zeros), context=grad,
                      update=lambda s, c: _Momentum(s.m + b1 * c,
                                                    optim.orthogonalize(s.m + b1 * c)))
  # The slow level sums the f gradients of its chunk; it reads the tick-start weights and
  # updates after the weights, so the refreshed O2 is used from the next step on.
  slow = levels.Level("M2", _Momentum(zeros, zeros), context=grad, every=f, reads="tick_start",
                      update=lambda s, c: _Momentum(s.m + b3 * c,
                                                    optim.orthogonalize(s.m + b3 * c)))
  weights = levels.gradient_level(
      "weights", w0, objective=levels.dot_product, optimizer=optax.sgd(lr),
      context=lambda s, it: (s["M1"].o + alpha * s["M2"].o) / (jnp.sqrt(s["V"]) + eps))
  system = levels.NestedSystem((second, fast, weights, slow))
  state = jax.jit(system.run)(system.init((xs[0], ys[0])), (xs, ys))
  tx = optax.chain(optim.scale_by_m3(b1, b2, b3, alpha, f, eps, accumulator="sum",
                                     denominator_guard="none", width_scaling=False),
                   optax.scale(-lr))
  ref = _reference(tx, w0, xs, ys)
  np.testing.assert_allclose(state.levels["weights"].params, ref, rtol=2e-5, atol=2e-6)


def test_bad_declarations_raise():
  ok = dict(init=0.0, context=lambda s, x: x, update=lambda s, c: s)
  with pytest.raises(ValueError, match="every"):
    levels.Level("a", every=0, **ok)
  with pytest.raises(ValueError, match="reduce"):
    levels.Level("a", reduce="max", **ok)
  with pytest.raises(ValueError, match="reads"):
    levels.Level("a", reads="later", **ok)
  with pytest.raises(ValueError, match="unique"):
    levels.NestedSystem((levels.Level("a", **ok), levels.Level("a", **ok)))
  with pytest.raises(ValueError, match="at least one"):
    levels.NestedSystem(())


def test_mean_reduce_and_state_is_a_pytree():
  lv = levels.Level("avg", jnp.zeros(()), context=lambda s, x: x, update=lambda s, c: c,
                    every=3, reduce="mean")
  system = levels.NestedSystem((lv,))
  state = system.run(system.init(jnp.zeros(())), jnp.arange(7.0))
  assert float(state.levels["avg"]) == 4.0  # mean(3, 4, 5); item 6 is pending.
  assert float(state.pending["avg"]) == 6.0
  assert len(jax.tree.leaves(state)) == 3


def _l2norm(x):
  return x / jnp.linalg.norm(x)


def test_hope_like_block_is_a_three_level_system():
  """A fast DGD matrix memory (nl_jax.memory) -> a CMS MLP level -> slow projections.

  Per token: k, v, q, eta from the projections P; the memory writes (k, v) with DGD and is read
  at q; the output o + tanh(o A) is compared with the token's target. The CMS level A sums its
  token-loss gradients over chunks of 4, the projection level over chunks of 8 (first order in
  time: the gradient flows through the read and the current token's write). The reference is
  a plain loop with the DGD write written out, M (I - c k k^T) + c v k^T.
  """
  from nl_jax.memory import MatrixMemory, MatrixMemoryParams, MemoryInputs  # noqa: PLC0415
  d, steps, eta_a, eta_p = 4, 17, 0.05, 0.02
  with jax.enable_x64(True):
    ks = jax.random.split(jax.random.key(6), 7)
    proj = {n: 0.5 * jax.random.normal(kk, (d, d), jnp.float64)
            for n, kk in zip(("wq", "wk", "wv"), ks[:3], strict=True)}
    proj["we"] = 0.5 * jax.random.normal(ks[3], (d,), jnp.float64)
    a0 = 0.3 * jax.random.normal(ks[4], (d, d), jnp.float64)
    xs = jax.random.normal(ks[5], (steps, d), jnp.float64)
    ys = jnp.sin(jax.random.normal(ks[6], (steps, d), jnp.float64))
    mem = MatrixMemory(key_dim=d, value_dim=d, rule="dgd", implementation="sequential")
    mem_params = MatrixMemoryParams(jnp.zeros((d, d), jnp.float64))

    def kvq(p, x):
      return (_l2norm(x @ p["wk"]), x @ p["wv"], _l2norm(x @ p["wq"]),
              jax.nn.sigmoid(x @ p["we"]))

    def write(p, mstate, x):
      k, v, _, eta = kvq(p, x)
      return mem.update(mem_params, mstate, MemoryInputs(keys=k[None], values=v[None],
                                                        eta=eta[None]))

    def out(p, a, mstate, x):
      o = mem.read(mem_params, mstate, kvq(p, x)[2][None])[0]
      return o + jnp.tanh(o @ a)

    def loss_a(a, s, item):
      x, y = item
      return 0.5 * jnp.sum((out(s["proj"].params, a, s["memory"], x) - y)**2)

    def loss_p(p, s, item):
      x, y = item
      return 0.5 * jnp.sum((out(p, s["cms"].params, write(p, s["memory"], x), x) - y)**2)

    # The fast level's context is the token and the current projections; its update writes.
    memory = levels.Level(
        "memory", mem.init_state(mem_params, ()),
        context=lambda s, item: (s["proj"].params, item[0]),
        update=lambda ms, c: write(c[0], ms, c[1]), reduce="last")
    cms = levels.gradient_level(
        "cms", a0, objective=levels.dot_product, optimizer=optax.sgd(eta_a), every=4,
        context=lambda s, item: jax.grad(loss_a)(s["cms"].params, s, item))
    slow = levels.gradient_level(
        "proj", proj, objective=levels.dot_product, optimizer=optax.sgd(eta_p), every=8,
        reads="tick_start", context=lambda s, item: jax.grad(loss_p)(s["proj"].params, s, item))
    system = levels.NestedSystem((memory, cms, slow))
    state = jax.jit(system.run)(system.init((xs[0], ys[0])), (xs, ys))

    # Reference: the same three levels as a plain loop, the DGD write spelled out.
    def ref_write(p, m, x):
      k, v, _, eta = kvq(p, x)
      c = eta / (1 + eta * k @ k)
      return m - c * jnp.outer(m @ k, k) + c * jnp.outer(v, k)

    def ref_loss(p, a, m_after, x, y):
      o = m_after @ kvq(p, x)[2]
      return 0.5 * jnp.sum((o + jnp.tanh(o @ a) - y)**2)

    p, a, m = proj, a0, jnp.zeros((d, d), jnp.float64)
    acc_a = jnp.zeros_like(a)
    acc_p = jax.tree.map(jnp.zeros_like, p)
    for t in range(steps):
      x, y = xs[t], ys[t]
      g_p = jax.grad(lambda p_, m=m, a=a, x=x, y=y: ref_loss(p_, a, ref_write(p_, m, x), x, y))(p)
      m = ref_write(p, m, x)
      acc_a = acc_a + jax.grad(lambda a_, m=m, x=x, y=y: ref_loss(p, a_, m, x, y))(a)
      acc_p = jax.tree.map(jnp.add, acc_p, g_p)
      if (t + 1) % 4 == 0:
        a, acc_a = a - eta_a * acc_a, jnp.zeros_like(a)
      if (t + 1) % 8 == 0:
        p = jax.tree.map(lambda w, g: w - eta_p * g, p, acc_p)
        acc_p = jax.tree.map(jnp.zeros_like, acc_p)
    np.testing.assert_allclose(state.levels["memory"].memory, m, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(state.levels["cms"].params, a, rtol=1e-11, atol=1e-13)
    for n in p:
      np.testing.assert_allclose(state.levels["proj"].params[n], p[n], rtol=1e-11, atol=1e-13)


def test_readme_levels_snippet_runs_as_written():
  import pathlib  # noqa: PLC0415
  import re  # noqa: PLC0415
  readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
  (snippet,) = re.findall(r"## Levels you can declare\n.*?```python\n(.*?)```", readme, re.S)
  exec(snippet, {})  # pylint: disable=exec-used
