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
"""The hand-written backward of the matrix memory's exact chunked scan.

Checked three ways in float64: against autodiff of the generic closed-form chunks (the path
it replaces), against the token loop, and against finite differences of the function itself.
"""

import itertools

import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

from nl_jax.memory import RULES, MatrixMemory, gates
from nl_jax.memory.gated_delta_scan import chunked_gated_delta
from tests.memory.helpers import assert_trees_close, loss_and_grads, random_inputs

D_K, D_V, B, T, C = 8, 6, 2, 67, 16  # T = 67: a ragged, padded last chunk.


def _setup(custom_backward, seed, **cfg):
  mem = MatrixMemory(key_dim=D_K, value_dim=D_V, chunk_size=C, custom_backward=custom_backward,
                     **cfg)
  params = mem.init_params(jax.random.PRNGKey(seed), scale=1.0, dtype=jnp.float64)
  inputs = random_inputs(jax.random.PRNGKey(seed + 1), (B,), T, D_K, D_V, jnp.float64)
  return mem, params, inputs


# By default one combination with every term (erase and state gradient, 'pre' reads, retention
# first); dgd with 'post' reads runs by default in test_matrix_memory and test_reset.
_DEFAULT = {("paper_l2", "pre", "before")}


@pytest.mark.parametrize("rule,read_at,order", [
    pytest.param(*c, marks=() if c in _DEFAULT else pytest.mark.slow)
    for c in itertools.product(RULES, ("post", "pre"), ("after", "before"))])
def test_hand_written_backward_equals_autodiff_and_token_loop(rule, read_at, order):
  cfg = dict(rule=rule, read_at=read_at, retention_order=order)
  with jax.enable_x64(True):
    mem, params, inputs = _setup(True, 0, **cfg)
    assert mem._hand_written_backward
    generic, _, _ = _setup(False, 0, **cfg)  # closed-form chunks, rematerialised, autodiff
    _, o1, s1, g1 = loss_and_grads(mem, params, inputs, "chunked")
    _, o2, s2, g2 = loss_and_grads(generic, params, inputs, "chunked")
    _, o3, s3, g3 = loss_and_grads(mem, params, inputs, "sequential")
    assert_trees_close((o1, s1), (o2, s2), 1e-12, "forward vs generic chunks")
    assert_trees_close(g1, g2, 1e-10, "grads vs autodiff of generic chunks")
    assert_trees_close((o1, s1), (o3, s3), 1e-10, "forward vs token loop")
    assert_trees_close(g1, g3, 1e-9, "grads vs token loop")


def test_write_only_update_gradients():
  """No queries (MatrixMemory.update): only the final state carries the loss."""
  with jax.enable_x64(True):
    mem, params, inputs = _setup(True, 4, rule="dgd")
    inputs = inputs._replace(queries=None)

    def loss(params, inputs, impl):
      _, state = mem.scan(params, mem.init_state(params, (B,)), inputs, implementation=impl)
      return jnp.sum(jnp.sin(state.memory))

    g1 = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, inputs, "chunked")
    g2 = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, inputs, "sequential")
    assert_trees_close(g1, g2, 1e-9, "write-only grads")


@pytest.mark.parametrize("read_pre,with_reset", [(False, True), (True, False)])
def test_gradients_match_finite_differences(read_pre, with_reset):
  """check_grads on the raw function: independent of both implementations above."""
  n, c, dk, dv = 3, 4, 3, 2
  ks = jax.random.split(jax.random.PRNGKey(5), 9)
  with jax.enable_x64(True):
    f64 = jnp.float64
    k = jax.random.normal(ks[0], (n, c, dk), f64) / jnp.sqrt(dk)
    v = jax.random.normal(ks[1], (n, c, dv), f64)
    q = jax.random.normal(ks[2], (n, c, dk), f64)
    lr = jax.random.uniform(ks[3], (n, c), f64, 0.1, 0.9)
    e = jax.random.uniform(ks[4], (n, c), f64, 0.1, 0.9)
    log_a = gates.safe_log_gate(jax.random.uniform(ks[5], (n, c), f64, 0.5, 1.0))
    m0 = jax.random.normal(ks[6], (dv, dk), f64)
    fresh = jax.random.normal(ks[7], (dv, dk), f64)
    reset = jnp.array([0.0, 1.0, 0.0], f64)

    def f(m0, fresh, k, v, q, lr, e, log_a):
      y, m = chunked_gated_delta(m0, k, v, q, lr, e, log_a, read_pre=read_pre,
                                 reset_N=reset if with_reset else None,
                                 fresh_VxK=fresh if with_reset else None)
      return jnp.sum(jnp.cos(y)) + jnp.sum(jnp.sin(m))

    check_grads(f, (m0, fresh, k, v, q, lr, e, log_a), order=1, modes=("rev",), atol=1e-6,
                rtol=1e-6)


def test_exact_matrix_memory_takes_the_hand_written_path():
  """The benchmarked configuration really runs the custom VJP (and the others do not)."""
  for cfg, expected in [(dict(), True), (dict(read_at="pre"), True), (dict(momentum=True), False),
                        (dict(semantics="anchored"), False), (dict(first_order=True), False),
                        (dict(custom_backward=False), False)]:
    mem = MatrixMemory(key_dim=D_K, value_dim=D_V, chunk_size=C, **cfg)
    params = mem.init_params(jax.random.PRNGKey(1))
    x = random_inputs(jax.random.PRNGKey(0), (B,), T, D_K, D_V, momentum=mem.momentum)
    jaxpr = jax.make_jaxpr(lambda p, x, mem=mem: mem.scan(
        p, mem.init_state(p, (B,)), x, implementation="chunked"))(params, x)
    assert ("custom_vjp_call" in str(jaxpr)) == expected, cfg


def test_forward_mode_needs_custom_backward_off():
  """jax.jvp is refused by the custom VJP and works on the generic path, with the same value."""
  inputs = random_inputs(jax.random.PRNGKey(2), (B,), T, D_K, D_V)
  tangent = jax.tree.map(jnp.ones_like, inputs)
  outs = {}
  for custom in (True, False):
    mem = MatrixMemory(key_dim=D_K, value_dim=D_V, chunk_size=C, custom_backward=custom)
    params = mem.init_params(jax.random.PRNGKey(3), scale=1.0)

    def f(x, mem=mem, params=params):
      return mem.scan(params, mem.init_state(params, (B,)), x)[0]

    if custom:
      with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(f, (inputs,), (tangent,))
      outs[custom] = f(inputs)
    else:
      outs[custom], _ = jax.jvp(f, (inputs,), (tangent,))
  assert_trees_close(outs[True], outs[False], 1e-5, "primal")


def test_reset_needs_fresh_state():
  z = jnp.zeros((2, 4, 3))
  with pytest.raises(ValueError, match="reset_N and fresh_VxK go together"):
    chunked_gated_delta(jnp.zeros((3, 3)), z, z, None, jnp.zeros((2, 4)), jnp.zeros((2, 4)),
                        jnp.zeros((2, 4)), reset_N=jnp.zeros((2,)))
