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
"""Generalized GD with windowed retention (Definition 5) against a per-token argmin solve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.memory import MatrixMemory, MemoryInputs, WindowedMatrixMemory
from tests.memory.helpers import random_inputs

D_K, D_V, T = 4, 3, 9


def _argmin_reference(rule, window, read_at, initial_VxK, inp):
  """One sequence, token by token: the argmin of Definition 5 by a linear solve.

  L2: W (k k^T + I/eta) = v k^T + (alpha/eta) mean(window); dot: W = alpha mean + eta v k^T.
  """
  hist = [initial_VxK] * window
  outs = []
  for t in range(inp.keys.shape[0]):
    k, v, eta, a = inp.keys[t], inp.values[t], inp.eta[t], inp.alpha[t]
    center = a * sum(hist[-window:]) / window
    if rule == "dgd":
      lhs = jnp.outer(k, k) + jnp.eye(D_K, dtype=k.dtype) / eta
      rhs = jnp.outer(v, k) + center / eta
      new = jnp.linalg.solve(lhs.T, rhs.T).T  # W lhs = rhs (lhs symmetric).
    else:
      new = center + eta * jnp.outer(v, k)
    outs.append((new if read_at == "post" else hist[-1]) @ inp.queries[t])
    hist.append(new)
  return jnp.stack(outs), jnp.stack(hist[-window:])


def _loss(fn, params, inputs):
  outs, final = fn(params, inputs)
  return jnp.sum(jnp.sin(outs)) + jnp.sum(final**2)


@pytest.mark.parametrize("rule", ["dgd", "hebbian"])
@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("read_at", ["post", "pre"])
def test_equals_argmin_reference_forward_and_gradient_f64(rule, window, read_at):
  with jax.enable_x64(True):
    mem = WindowedMatrixMemory(key_dim=D_K, value_dim=D_V, window=window, rule=rule,
                               read_at=read_at, chunk_size=4)
    params = mem.init_params(jax.random.key(0), scale=1.0, dtype=jnp.float64)
    inputs = random_inputs(jax.random.key(1), (2,), T, D_K, D_V, jnp.float64, unit_keys=False)

    def ours(p, inp):
      out, state = mem.scan(p, mem.init_state(p, (2,)), inp)
      return out, state.memory

    def ref(p, inp):
      outs, finals = [], []
      for b in range(2):
        o, f = _argmin_reference(rule, window, read_at, p.initial,
                                 jax.tree.map(lambda x, b=b: x[b], inp))
        outs.append(o)
        finals.append(f)
      return jnp.stack(outs), jnp.stack(finals)

    o1, f1 = jax.jit(ours)(params, inputs)
    o2, f2 = ref(params, inputs)
    np.testing.assert_allclose(o1, o2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f1, f2, rtol=1e-10, atol=1e-12)
    g1 = jax.jit(jax.grad(lambda p, i: _loss(ours, p, i), argnums=(0, 1)))(params, inputs)
    g2 = jax.grad(lambda p, i: _loss(ref, p, i), argnums=(0, 1))(params, inputs)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("rule, order", [("dgd", "before"), ("hebbian", "after")])
def test_window_one_is_the_matrix_memory_rule(rule, order):
  with jax.enable_x64(True):
    win = WindowedMatrixMemory(key_dim=D_K, value_dim=D_V, window=1, rule=rule)
    ref = MatrixMemory(key_dim=D_K, value_dim=D_V, rule=rule, retention_order=order,
                       implementation="sequential")
    params = win.init_params(jax.random.key(2), scale=1.0, dtype=jnp.float64)
    inputs = random_inputs(jax.random.key(3), (2,), T, D_K, D_V, jnp.float64)
    o1, s1 = win.scan(params, win.init_state(params, (2,)), inputs)
    o2, s2 = ref.scan(params, ref.init_state(params, (2,)), inputs)
    np.testing.assert_allclose(o1, o2, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(s1.memory[:, -1], s2.memory, rtol=1e-12, atol=1e-13)


def test_streaming_split_equals_one_call_and_reset_refills_window():
  with jax.enable_x64(True):
    mem = WindowedMatrixMemory(key_dim=D_K, value_dim=D_V, window=3)
    params = mem.init_params(jax.random.key(4), scale=1.0, dtype=jnp.float64)
    inputs = random_inputs(jax.random.key(5), (2,), T, D_K, D_V, jnp.float64)
    state = mem.init_state(params, (2,))
    o_all, s_all = mem.scan(params, state, inputs)
    head = jax.tree.map(lambda x: x[:, :4], inputs)
    tail = jax.tree.map(lambda x: x[:, 4:], inputs)
    o_a, s_a = mem.scan(params, state, head)
    o_b, s_b = mem.scan(params, s_a, tail)
    np.testing.assert_allclose(jnp.concatenate([o_a, o_b], axis=1), o_all, rtol=1e-13)
    np.testing.assert_allclose(s_b.memory, s_all.memory, rtol=1e-13)
    # A reset at token 4 makes the tail behave as a fresh sequence.
    reset = jnp.zeros((2, T), bool).at[:, 4].set(True)
    o_r, _ = mem.scan(params, state, inputs._replace(reset=reset))
    o_fresh, _ = mem.scan(params, state, tail)
    np.testing.assert_allclose(o_r[:, 4:], o_fresh, rtol=1e-13)
    assert s_all.memory.shape == (2, 3, D_V, D_K)


def test_read_uses_newest_state():
  mem = WindowedMatrixMemory(key_dim=D_K, value_dim=D_V, window=2)
  params = mem.init_params(jax.random.key(6), scale=1.0)
  state = mem.init_state(params, (1,))
  inputs = random_inputs(jax.random.key(7), (1,), 3, D_K, D_V)
  out, state = mem.scan(params, state, inputs)
  q = inputs.queries
  np.testing.assert_allclose(mem.read(params, state, q[:, -1:]), out[:, -1:], rtol=1e-5)


@pytest.mark.parametrize("kw, match", [
    (dict(window=0), "window"),
    (dict(rule="gd"), "rule"),
    (dict(momentum=True), "momentum"),
    (dict(semantics="anchored"), "semantics"),
    (dict(read_at="anchor", semantics="anchored"), "semantics"),
    (dict(retention_order="after"), "retention_order"),
    (dict(implementation="chunked"), "implementation"),
])
def test_bad_config_raises(kw, match):
  with pytest.raises(ValueError, match=match):
    WindowedMatrixMemory(key_dim=D_K, value_dim=D_V, **kw)


def test_bad_inputs_raise():
  mem = WindowedMatrixMemory(key_dim=D_K, value_dim=D_V)
  params = mem.init_params(jax.random.key(8))
  state = mem.init_state(params, (2,))
  bad = MemoryInputs(keys=jnp.zeros((2, 5, D_K + 1)), values=jnp.zeros((2, 5, D_V)),
                     eta=jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="keys"):
    mem.scan(params, state, bad)
