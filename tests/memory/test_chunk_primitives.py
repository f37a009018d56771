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
"""The two per-chunk primitives every chunked path rests on, against plain numpy.

``gates.segment_log_products`` (decay products of every segment of a chunk) and
``chunk_ops.unit_lower_inverse`` (the UT transform's triangular inverse, blocked) are
pinned to their direct definitions for chunk sizes that are powers of two, composites,
primes and one token, forward and gradient, in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nl_jax.memory import chunk_ops, gates

# Default runs: one token, a prime (blocks of 1), a composite, a power of two.
_DEFAULT = (1, 7, 12, 64)
SIZES = [c if c in _DEFAULT else pytest.param(c, marks=pytest.mark.slow)
         for c in (1, 2, 3, 4, 7, 8, 12, 16, 31, 48, 64, 100)]


def _log_gates(rng, c):
  # Mixed scales: near-1 gates, strong forgetting, and gates clipped at LOG_GATE_MIN.
  g = rng.uniform(0.0, 1.0, c) ** rng.choice([0.01, 1.0, 20.0], c)
  return np.maximum(np.log(np.maximum(g, 1e-300)), gates.LOG_GATE_MIN)


def _segment_reference(log_gate):
  """decay[i, j] = exp(sum_{j < r <= i} log_gate[r]), each sum taken directly."""
  c = log_gate.shape[0]
  decay = np.zeros((c, c))
  for i in range(c):
    for j in range(i + 1):
      decay[i, j] = np.exp(np.sum(log_gate[j + 1:i + 1]))
  return decay, np.exp(np.cumsum(log_gate))


@pytest.mark.parametrize("c", SIZES)
def test_segment_log_products_equal_direct_sums(c):
  rng = np.random.default_rng(c)
  log_gate = _log_gates(rng, c)
  want_decay, want_prefix = _segment_reference(log_gate)
  with jax.enable_x64(True):
    decay, prefix = jax.jit(gates.segment_log_products)(jnp.asarray(log_gate))
  np.testing.assert_allclose(np.asarray(decay), want_decay, rtol=1e-12, atol=1e-300)
  np.testing.assert_allclose(np.asarray(prefix), want_prefix, rtol=1e-12, atol=1e-300)
  assert np.all(np.triu(np.asarray(decay), 1) == 0.0)


def test_segment_log_products_float32_keeps_small_products_exact():
  # A long run of strong forgetting: a difference of cumulative sums would lose every digit
  # of the late segments; segment sums keep them to float32 rounding.
  c = 64
  rng = np.random.default_rng(1)
  log_gate = np.concatenate([rng.uniform(-30.0, -20.0, 32), rng.uniform(-1.0, -0.01, 32)])
  log_gate = log_gate.astype(np.float32).astype(np.float64)  # the values float32 sees
  want, _ = _segment_reference(log_gate)
  decay, _ = jax.jit(gates.segment_log_products)(jnp.asarray(log_gate, jnp.float32))
  assert decay.dtype == jnp.float32
  late = np.zeros((c, c), bool)
  late[40:, 33:] = True
  late &= np.tril(np.ones((c, c), bool))
  np.testing.assert_allclose(np.asarray(decay)[late], want[late], rtol=1e-5)


@pytest.mark.parametrize("c", [3, 24])
def test_segment_log_products_gradient(c):
  rng = np.random.default_rng(100 + c)
  log_gate = np.maximum(np.log(rng.uniform(0.5, 1.0, c)), gates.LOG_GATE_MIN)
  with jax.enable_x64(True):
    check_grads(jax.jit(gates.segment_log_products), (jnp.asarray(log_gate),), order=1,
                modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("c", SIZES)
def test_unit_lower_inverse_equals_numpy(c):
  rng = np.random.default_rng(200 + c)
  a = np.tril(rng.normal(size=(c, c)) * 0.3, -1)
  with jax.enable_x64(True):
    inv = np.asarray(jax.jit(chunk_ops.unit_lower_inverse)(jnp.asarray(a)))
  np.testing.assert_allclose(inv, np.linalg.inv(np.eye(c) + a), rtol=1e-12, atol=1e-12)


def test_unit_lower_inverse_gradient_and_batching():
  rng = np.random.default_rng(7)
  a = np.tril(rng.normal(size=(3, 12, 12)) * 0.3, -1)
  with jax.enable_x64(True):
    batched = jax.jit(jax.vmap(chunk_ops.unit_lower_inverse))(jnp.asarray(a))
    for i in range(3):
      np.testing.assert_allclose(np.asarray(batched[i]), np.linalg.inv(np.eye(12) + a[i]),
                                 rtol=1e-12, atol=1e-12)
    check_grads(jax.jit(lambda x: chunk_ops.unit_lower_inverse(jnp.tril(x, -1))),
                (jnp.asarray(a[0]),),
                order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-7)


def test_chunk_of_one_differentiates_under_vmap_and_remat():
  """C = 1 (chunk_size=1): the inverse is the constant 1; the gradient of a vmapped,
  rematerialised solve through it used to fail to transpose (a batching mismatch)."""
  keys = jax.random.normal(jax.random.key(0), (2, 3, 1, 4))
  rhs = jax.random.normal(jax.random.key(1), (2, 3, 1, 5))

  def solve(k_CxK, r_CxV):
    a_CxC = jnp.tril(k_CxK @ k_CxK.T, -1)
    return chunk_ops.unit_lower_inverse(a_CxC) @ r_CxV

  def loss(keys, rhs):
    out = jax.vmap(jax.vmap(jax.checkpoint(solve)))(keys, rhs)
    return jnp.sum(out * out)

  gk, gr = jax.jit(jax.grad(loss, argnums=(0, 1)))(keys, rhs)
  np.testing.assert_allclose(gr, 2.0 * rhs, rtol=1e-6)
  np.testing.assert_array_equal(gk, jnp.zeros_like(keys))


@pytest.mark.parametrize("c", SIZES)
def test_unit_lower_inverse_hand_written_derivative_equals_autodiff_of_the_recursion(c):
  """The custom JVP (dX = -X tril(da) X) against autodiff of the blocked recursion itself, on a
  full matrix (entries on and above the diagonal are not read, so their gradient is zero)."""
  rng = np.random.default_rng(300 + c)
  a = rng.normal(size=(c, c)) * 0.3
  r = rng.normal(size=(c, c))
  with jax.enable_x64(True):
    loss = lambda f: lambda x: jnp.sum(f(x) * r) + 0.5 * jnp.sum(f(x) ** 2)  # noqa: E731
    got = jax.jit(jax.grad(loss(chunk_ops.unit_lower_inverse)))(jnp.asarray(a))
    want = jax.jit(jax.grad(loss(chunk_ops._blocked_unit_lower_inverse)))(jnp.asarray(a))  # noqa: SLF001
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-11, atol=1e-12)
    assert np.all(np.triu(np.asarray(got)) == 0.0)
    tangent = jnp.asarray(rng.normal(size=(c, c)))
    _, jvp = jax.jvp(chunk_ops.unit_lower_inverse, (jnp.asarray(a),), (tangent,))
    _, jvp_ref = jax.jvp(chunk_ops._blocked_unit_lower_inverse, (jnp.asarray(a),), (tangent,))  # noqa: SLF001
    np.testing.assert_allclose(np.asarray(jvp), np.asarray(jvp_ref), rtol=1e-11, atol=1e-12)


def test_unit_lower_inverse_second_order_finite_differences():
  rng = np.random.default_rng(11)
  a = np.tril(rng.normal(size=(12, 12)) * 0.3, -1)
  with jax.enable_x64(True):
    check_grads(jax.jit(chunk_ops.unit_lower_inverse), (jnp.asarray(a),), order=2,
                modes=("fwd", "rev"), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_unit_lower_inverse_backward_is_two_matmuls():
  """The backward multiplies by the saved inverse twice; it does not transpose the log2(C)
  levels of the recursion (12 matmuls at C = 64) and keeps none of their intermediates."""
  a = jnp.zeros((64, 64))

  def dots(fn):  # every matmul of the program, sub-jaxprs included
    return str(jax.make_jaxpr(fn)(a)).count("dot_general[")
  forward = dots(chunk_ops.unit_lower_inverse)
  backward = dots(jax.grad(lambda x: jnp.sum(chunk_ops.unit_lower_inverse(x))))
  assert forward == 12
  assert backward == forward + 2
