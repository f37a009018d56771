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
"""Delta Gradient Descent: closed forms, reductions to SGD and the flax NNX input capture."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nl_jax import optim


def _numpy_argmin(w, xs, us, eta):
  """argmin_W 1/(2N) sum_b ||x_b W - u_b||^2 + 1/(2 eta) ||W - W_t||^2 by a dense solve.

  Stationarity: (X^T X / N + I / eta) W = W_t / eta + X^T U / N.
  """
  w, xs, us = (np.asarray(a, np.float64) for a in (w, xs, us))
  n, d_in = xs.shape
  lhs = xs.T @ xs / n + np.eye(d_in) / eta
  return np.linalg.solve(lhs, w / eta + xs.T @ us / n)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("solve", ["auto", "direct", "woodbury"])
def test_single_sample_matches_argmin(seed, solve):
  rng = np.random.default_rng(seed)
  d_in, d_out = 7, 5
  w = rng.normal(size=(d_in, d_out))
  x = rng.normal(size=(d_in,)) * rng.uniform(0.2, 3.0)
  g_y = rng.normal(size=(d_out,))
  eta = rng.uniform(0.05, 2.0)
  expected = _numpy_argmin(w, x[None], -g_y[None], eta)
  # Eq. 57 in the (in, out) convention with c = eta / (1 + eta ||x||^2).
  c = eta / (1 + eta * x @ x)
  eq57 = (np.eye(d_in) - c * np.outer(x, x)) @ w - c * np.outer(x, g_y)
  np.testing.assert_allclose(expected, eq57, atol=1e-10)
  tx = optim.dgd(eta, solve=solve)
  params = {"kernel": jnp.asarray(w, jnp.float32)}
  grads = {"kernel": jnp.asarray(np.outer(x, g_y), jnp.float32)}  # dL/dW = x g_y^T.
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params,
                            layer_inputs={"kernel": jnp.asarray(x[None], jnp.float32)})
  np.testing.assert_allclose(w + np.asarray(u["kernel"]), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [3, 20])  # Woodbury (N < in) and direct (N >= in) under "auto".
def test_batch_matches_argmin(n):
  rng = np.random.default_rng(n)
  d_in, d_out, eta = 8, 4, 0.3
  w = rng.normal(size=(d_in, d_out))
  xs = rng.normal(size=(n, d_in))
  g_ys = rng.normal(size=(n, d_out)) / n  # Gradient of a mean loss w.r.t. each output row.
  expected = _numpy_argmin(w, xs, -g_ys * n, eta)
  tx = optim.dgd(eta)
  params = {"kernel": jnp.asarray(w, jnp.float32)}
  grads = {"kernel": jnp.asarray(xs.T @ g_ys, jnp.float32)}
  u, _ = tx.update(grads, tx.init(params), params,
                   layer_inputs={"kernel": jnp.asarray(xs.reshape(1, n, d_in), jnp.float32)})
  np.testing.assert_allclose(w + np.asarray(u["kernel"]), expected, atol=2e-5, rtol=1e-5)


def test_zero_inputs_no_inputs_and_zero_decay_equal_sgd():
  params = {"kernel": jax.random.normal(jax.random.key(0), (6, 3)), "bias": jnp.ones((3,))}
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)
  sgd = optax.sgd(0.2)
  ref, _ = sgd.update(grads, sgd.init(params), params)
  tx = optim.dgd(0.2)
  cases = [
      (tx, {"kernel": jnp.zeros((4, 6)), "bias": None}),
      (tx, None),
      (tx, {"kernel": None, "bias": None}),
      (optim.dgd(0.2, decay=0.0), {"kernel": jnp.ones((4, 6)), "bias": None}),
  ]
  for t, inputs in cases:
    u, _ = t.update(grads, t.init(params), params, layer_inputs=inputs)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ref), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_schedule_and_weight_decay():
  params = {"kernel": jnp.ones((3, 2))}
  sched = optax.linear_schedule(0.4, 0.2, 1)
  tx = optim.dgd(sched, weight_decay=0.5)
  state = tx.init(params)
  zero = {"kernel": jnp.zeros((3, 2))}
  for lr in (0.4, 0.2):
    u, state = tx.update(zero, state, params)
    np.testing.assert_allclose(u["kernel"], -lr * 0.5 * params["kernel"], rtol=1e-6)
  assert int(state[0].count) == 2


def test_errors():
  params = {"kernel": jnp.ones((3, 2))}
  tx = optim.dgd(0.1)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params), None, layer_inputs={"kernel": jnp.ones((2, 3))})
  with pytest.raises(ValueError, match="fan-in"):
    tx.update(params, tx.init(params), params, layer_inputs={"kernel": jnp.ones((2, 4))})
  with pytest.raises(ValueError, match="solve"):
    optim.dgd(0.1, solve="qr")


def test_nnx_mlp_end_to_end():
  """Capture the inputs of every nnx.Linear, then train the MLP with DGD on pure-dict params."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  class MLP(nnx.Module):

    def __init__(self, rngs):
      self.l1 = nnx.Linear(6, 32, rngs=rngs)
      self.norm = nnx.LayerNorm(32, rngs=rngs)
      self.l2 = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x):
      return self.l2(jnp.tanh(self.norm(self.l1(x))))

  model = MLP(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (64, 6))
  y = jnp.sin(x @ jnp.arange(1.0, 7.0)[:, None] / 4.0)
  original_call = nnx.Linear.__call__
  out, inputs = optim.capture_linear_inputs(model, x)
  assert nnx.Linear.__call__ is original_call  # The patch is undone.
  np.testing.assert_allclose(out, model(x))
  np.testing.assert_allclose(inputs["l1"]["kernel"], x)
  np.testing.assert_allclose(inputs["l2"]["kernel"],
                             jnp.tanh(model.norm(model.l1(x))), rtol=1e-6)
  assert inputs["l1"]["bias"] is None and inputs["norm"]["scale"] is None

  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  def forward(p):
    st = jax.tree.map(lambda a: a, state)
    nnx.replace_by_pure_dict(st, p)
    return nnx.merge(graphdef, st)

  def loss_and_inputs(p):
    pred, ins = optim.capture_linear_inputs(forward(p), x)
    return jnp.mean((pred - y) ** 2), ins

  tx = optim.dgd(0.05)
  opt_state = tx.init(params)

  @jax.jit
  def step(p, s):
    (loss, ins), grads = jax.value_and_grad(loss_and_inputs, has_aux=True)(p)
    u, s = tx.update(grads, s, p, layer_inputs=ins)
    return optax.apply_updates(p, u), s, loss

  # The captured inputs are really used: kernels move differently from SGD, biases like SGD.
  (_, ins), grads = jax.value_and_grad(loss_and_inputs, has_aux=True)(params)
  u, _ = tx.update(grads, opt_state, params, layer_inputs=ins)
  assert not np.allclose(u["l2"]["kernel"], -0.05 * grads["l2"]["kernel"], rtol=1e-3)
  np.testing.assert_allclose(u["l2"]["bias"], -0.05 * grads["l2"]["bias"], rtol=1e-6)

  losses = []
  for _ in range(100):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  # DGD's input-direction decay acts like an activation-norm penalty, so the loss plateaus above
  # zero; a 2x drop is the clear, robust signal here.
  assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("dims", ["tree", "none"])
def test_adam_learning_rate_sends_the_other_leaves_to_adamw(dims):
  """With ``adam_learning_rate`` every leaf that is not a DGD matrix takes exactly
  ``optax.adamw``'s step at that rate; the matrices take exactly the plain alias's DGD step."""
  rng = np.random.default_rng(5)
  params = {"kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
            "embed": jnp.asarray(rng.normal(size=(9, 6)), jnp.float32),
            "scale": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  if dims == "tree":
    wdn = {"kernel": optim.DimensionNumbers(0, 1), "embed": None, "scale": None}
    matrices, others = ("kernel",), ("embed", "scale")
  else:
    wdn = None  # every 2-D leaf is a kernel; only the embedding needs inputs too
    matrices, others = ("kernel", "embed"), ("scale",)
  inputs = {k: (jnp.asarray(rng.normal(size=(12, params[k].shape[0])), jnp.float32)
                if k in matrices else None) for k in params}
  tx = optim.dgd(0.5, weight_decay=0.1, weight_dimension_numbers=wdn, adam_learning_rate=3e-3)
  plain = optim.dgd(0.5, weight_decay=0.1, weight_dimension_numbers=wdn)
  adam = optax.adamw(3e-3, weight_decay=0.1)
  state, pstate, astate = tx.init(params), plain.init(params), adam.init(params)
  p = params
  for step in range(3):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
    u, state = jax.jit(tx.update)(grads, state, p, layer_inputs=inputs)
    want_dgd, pstate = plain.update(grads, pstate, p, layer_inputs=inputs)
    want_adam, astate = adam.update(grads, astate, p)
    for k in matrices:
      np.testing.assert_allclose(u[k], want_dgd[k], rtol=1e-5, atol=1e-7, err_msg=f"{k}@{step}")
    for k in others:
      np.testing.assert_allclose(u[k], want_adam[k], rtol=1e-5, atol=1e-8, err_msg=f"{k}@{step}")
    p = optax.apply_updates(p, u)
