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
"""The hand-written backward of a CMS level's chunk (nl_jax.layers.cms_chunk, CMSConfig
chunk_backward="manual"): equal to autodiff of the same pass and to finite differences in
float64 (cotangents on the outputs and on the in-context gradient), and the layer with it equal
to the token loop (forward and gradient; every variant, retention and clip, resets anywhere, a
call starting mid-chunk)."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nl_jax.layers import cms_chunk
from nl_jax.layers.cms import (
    CMSConfig,
    ContinuumMemorySystem,
    cms_scan,
    init_state,
    nested_reference,
    sequential_reference,
)
from tests.models.helpers import cms_run


def _chunk_inputs(b=2, c=5, d=4, f=6):
  ks = jax.random.split(jax.random.key(0), 6)
  w = (0.5 * jax.random.normal(ks[0], (b, d, f)), 0.5 * jax.random.normal(ks[1], (b, d, f)),
       0.5 * jax.random.normal(ks[2], (b, f, d)))
  h = jax.random.normal(ks[3], (b, c + 1, d))
  target = jax.random.normal(ks[4], (b, c, d))
  mask = jax.random.uniform(ks[5], (b, c)) > 0.3
  return w, h, target, mask


def _probe(backward, target, mask):
  """A scalar of both outputs (z and every leaf of g), random weights on each."""
  def fn(w, h):
    z, g = cms_chunk.mlp_and_grad(w, h, target, mask, backward)
    leaves = (z,) + tuple(g)
    ks = jax.random.split(jax.random.key(7), len(leaves))
    return sum(jnp.sum(jax.random.normal(k, x.shape, x.dtype) * x)
               for k, x in zip(ks, leaves, strict=True))
  return fn


def test_manual_backward_equals_autodiff_and_finite_differences_float64():
  with jax.enable_x64(True):
    w, h, target, mask = _chunk_inputs()
    z1, g1 = cms_chunk.mlp_and_grad(w, h, target, mask, "autodiff")
    z2, g2 = cms_chunk.mlp_and_grad(w, h, target, mask, "manual")
    np.testing.assert_allclose(z1, z2, rtol=1e-13, atol=1e-14)
    for a, b in zip(g1, g2, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    auto = jax.grad(_probe("autodiff", target, mask), argnums=(0, 1))(w, h)
    manual = jax.grad(_probe("manual", target, mask), argnums=(0, 1))(w, h)
    for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(manual), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    # the second-order term is there: without it the weights' cotangents would differ
    assert float(jnp.max(jnp.abs(auto[0][0]))) > 1e-3
    check_grads(_probe("manual", target, mask), (w, h), order=1, modes=("rev",),
                atol=1e-6, rtol=1e-6)
    # the target carries no gradient (the local objective stops it)
    gt = jax.grad(lambda t: jnp.sum(cms_chunk.mlp_and_grad(w, h, t, mask, "manual")[1][2]))(
        target)
    np.testing.assert_array_equal(gt, 0.0)
  with pytest.raises(ValueError, match="backward"):
    cms_chunk.mlp_and_grad(w, h, target, mask, "symbolic")


@pytest.mark.parametrize("variant,options", [
    ("sequential", dict(max_step_norm=0.3, retention=(0.9, 0.7))),
    ("nested", dict(max_step_norm=0.3, retention=(0.9, 0.7))),
    pytest.param("independent", dict(), marks=pytest.mark.slow),
])
def test_layer_with_manual_backward_equals_token_loop_float64(variant, options):
  """Resets off and on the chunk grid (row 0 at 3; row 1 at 7 and 10, two in level 1's chunk
  [6, 12)) and a call that starts mid-chunk (position 1)."""
  with jax.enable_x64(True):
    cfg = CMSConfig(d_model=8, hidden=12, chunk_sizes=(2, 6), learning_rates=(0.3, 0.1),
                    variant=variant, chunk_backward="manual", **options)
    params = ContinuumMemorySystem(cfg, param_dtype=jnp.float64, rngs=nnx.Rngs(0)).params()
    x = jax.random.normal(jax.random.key(1), (2, 14, 8), jnp.float64)
    reset = jnp.zeros(x.shape[:2], bool).at[0, 2].set(True).at[1, 6].set(True)
    reset = reset.at[1, 9].set(True)
    st = init_state(cfg, params, 2)._replace(position=jnp.array([1, 1], jnp.int32))
    reference = nested_reference if variant == "nested" else sequential_reference

    (_, (y1, s1)), g1 = cms_run(cms_scan, cfg, params, st, x, reset)
    (_, (y2, s2)), g2 = cms_run(reference, cfg, params, st, x, reset)
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-12)
    for a, b in zip(jax.tree.leaves((s1, g1)), jax.tree.leaves((s2, g2)), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_manual_backward_is_refused_where_it_does_not_apply():
  with pytest.raises(ValueError, match="chunk_backward"):
    CMSConfig(d_model=4, hidden=6, chunk_backward="fast")
  with pytest.raises(ValueError, match="exact meta-gradient"):
    CMSConfig(d_model=4, hidden=6, chunk_backward="manual", meta_gradient="first_order")
  with pytest.raises(ValueError, match="exact meta-gradient"):
    CMSConfig(d_model=4, hidden=6, chunk_backward="manual", objective="ntp")
