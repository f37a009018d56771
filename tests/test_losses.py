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
"""`nl_jax.losses.masked_cross_entropy` against a token loop written from its definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.losses import masked_cross_entropy


def _token_loop(logits, targets, mask):
  total = 0.0
  for b in range(logits.shape[0]):
    for t in range(logits.shape[1]):
      z = np.asarray(logits[b, t], np.float64)
      nll = np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[targets[b, t]]
      total += float(mask[b, t]) * nll
  return total, float(np.sum(mask))


def test_matches_the_definition_in_float64_with_gradient():
  k = jax.random.split(jax.random.key(0), 3)
  with jax.enable_x64(True):
    logits = 4.0 * jax.random.normal(k[0], (2, 7, 11), jnp.float64)
    targets = jax.random.randint(k[1], (2, 7), 0, 11)
    mask = (jax.random.uniform(k[2], (2, 7)) > 0.4).astype(jnp.float64)
    total, count = jax.jit(masked_cross_entropy)(logits, targets, mask)
    assert total.dtype == jnp.float64
    want_total, want_count = _token_loop(np.asarray(logits), np.asarray(targets),
                                         np.asarray(mask))
    np.testing.assert_allclose(float(total), want_total, rtol=1e-13)
    assert float(count) == want_count
    # d total / d logits = mask * (softmax - onehot)
    grad = jax.jit(jax.grad(lambda z: masked_cross_entropy(z, targets, mask)[0]))(logits)
    want = mask[..., None] * (jax.nn.softmax(logits, -1) - jax.nn.one_hot(targets, 11))
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_masked_tokens_drop_out_and_low_precision_is_upcast(dtype):
  k = jax.random.split(jax.random.key(1), 2)
  logits = (3.0 * jax.random.normal(k[0], (2, 5, 13))).astype(dtype)
  targets = jax.random.randint(k[1], (2, 5), 0, 13)
  mask = jnp.zeros((2, 5), bool).at[0, :3].set(True)
  total, count = masked_cross_entropy(logits, targets, mask)
  assert total.dtype == count.dtype == jnp.float32
  assert float(count) == 3.0
  # the three counted tokens alone, computed in float32 from the same (rounded) logits
  alone, _ = masked_cross_entropy(logits[:1, :3].astype(jnp.float32), targets[:1, :3],
                                  jnp.ones((1, 3)))
  np.testing.assert_allclose(float(total), float(alone), rtol=1e-6)
  # an all-masked batch sums to zero (callers guard the division)
  assert float(masked_cross_entropy(logits, targets, jnp.zeros((2, 5)))[0]) == 0.0
