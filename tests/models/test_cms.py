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
"""ContinuumMemorySystem: chunk-parallel (a scan per level) == token loop (float64, forward and
gradient), streaming across calls with level chunks straddling the split, resets anywhere, the
first-order meta-gradient, no padded chunk for a fresh state, pretrained init."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.layers.cms import (
    CMSConfig,
    ContinuumMemorySystem,
    cms_scan,
    init_state,
    sequential_reference,
)
from tests.models.helpers import cms_run


def _setup(variant, dtype=jnp.float64, b=2, t=11, retention=None):
  cfg = CMSConfig(d_model=8, hidden=12, chunk_sizes=(2, 6), learning_rates=(0.05, 0.02),
                  variant=variant, retention=retention)
  layer = ContinuumMemorySystem(cfg, param_dtype=dtype, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (b, t, 8), dtype)
  return cfg, layer, x


def _tree_close(a, b, **kw):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), **kw)


@pytest.mark.parametrize("variant,retention", [
    ("sequential", None), ("sequential", (0.5, 0.8)),
    pytest.param("independent", None, marks=pytest.mark.slow)])
def test_chunk_parallel_equals_token_loop_float64(variant, retention):
  with jax.enable_x64(True):
    cfg, layer, x = _setup(variant, retention=retention)
    params = layer.params()
    reset = jnp.zeros(x.shape[:2], bool).at[1, 5].set(True)  # a document starts at position 6
    st = init_state(cfg, params, 2)._replace(position=jnp.array([1, 1], jnp.int32))

    (_, (y1, s1)), g1 = cms_run(cms_scan, cfg, params, st, x, reset)
    (_, (y2, s2)), g2 = cms_run(sequential_reference, cfg, params, st, x, reset)
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-12)
    _tree_close(s1, s2, rtol=1e-10, atol=1e-12)
    _tree_close(g1, g2, rtol=1e-9, atol=1e-12)
    # every level stepped at least once and the fast weights moved away from the init
    assert float(jnp.max(jnp.abs(s1.weights[1].w_up - params.init[1].w_up))) > 1e-6


def test_streaming_split_equals_one_call():
  """Split at 5: not on a segment boundary, and level 1's chunk [0, 6) straddles it."""
  cfg, layer, x = _setup("sequential", jnp.float32, t=14)
  params = layer.params()
  st = init_state(cfg, params, 2)
  reset = jnp.zeros(x.shape[:2], bool)
  fn = jax.jit(lambda st, x, r: cms_scan(cfg, params, st, x, r)[:2])
  y, s = fn(st, x, reset)
  ya, sa = fn(st, x[:, :5], reset[:, :5])
  yb, sb = fn(sa, x[:, 5:], reset[:, 5:])
  np.testing.assert_allclose(jnp.concatenate([ya, yb], 1), y, rtol=1e-5, atol=1e-6)
  _tree_close(sb, s, rtol=1e-5, atol=1e-6)


def test_long_level_is_plain_mlp_within_a_call_and_learns_across_calls():
  cfg = CMSConfig(d_model=8, hidden=12, chunk_sizes=(4, 16), learning_rates=(0.0, 0.05))
  layer = ContinuumMemorySystem(cfg, rngs=nnx.Rngs(3))
  x = jax.random.normal(jax.random.key(4), (1, 8, 8))
  st0 = layer.init_memory(1)
  _, st1, aux1 = layer(x, st0, jnp.zeros((1, 8), bool))
  np.testing.assert_array_equal(st1.weights[1].w_up, st0.weights[1].w_up)  # no step yet
  assert float(jnp.max(jnp.abs(st1.acc[1].w_up))) > 0  # but the gradient is accumulated
  _, st2, aux2 = layer(x, st1, jnp.zeros((1, 8), bool))  # reaches position 16: steps
  assert float(jnp.max(jnp.abs(st2.weights[1].w_up - st0.weights[1].w_up))) > 0
  assert float(aux2["level_1/update_norm"]) > 0 and float(aux1["level_1/update_norm"]) == 0


def test_load_pretrained_and_bad_config():
  cfg = CMSConfig(d_model=4, hidden=6, chunk_sizes=(2,))
  layer = ContinuumMemorySystem(cfg, rngs=nnx.Rngs(0))
  w = jnp.arange(24.0).reshape(4, 6)
  layer.load_pretrained(0, w, w + 1, w.T)
  np.testing.assert_array_equal(layer.params().init[0].w_down, w.T)
  with pytest.raises(ValueError, match="w_gate"):
    layer.load_pretrained(0, w.T, w, w.T)
  with pytest.raises(ValueError, match="multiple of the smallest"):
    CMSConfig(d_model=4, hidden=6, chunk_sizes=(4, 6))
  with pytest.raises(ValueError, match="learning_rates"):
    CMSConfig(d_model=4, hidden=6, chunk_sizes=(4, 8), learning_rates=(0.1,))
  with pytest.raises(ValueError, match="variant"):
    CMSConfig(d_model=4, hidden=6, variant="stacked")


def test_retention_bounds_drift():
  """With retention the drift from the initial weights stays within max_step_norm /
  (1 - gamma) over a long stream (the long-stream cost found in
  experiments/stability/README.md comes from an unbounded drift)."""

  def drift_after(cfg, calls):
    layer = ContinuumMemorySystem(cfg, rngs=nnx.Rngs(0))
    st = layer.init_memory(1)
    fn = jax.jit(lambda st, x: layer(x, st, jnp.zeros((1, 64), bool))[1:])
    out = []
    for i in range(calls):
      st, aux = fn(st, jax.random.normal(jax.random.key(i), (1, 64, 8)))
      out.append(float(aux["level_0/drift"]))
    return np.array(out)

  base = dict(d_model=8, hidden=12, chunk_sizes=(2, 8), learning_rates=(0.5, 0.5))
  free = drift_after(CMSConfig(**base), 16)
  kept = drift_after(CMSConfig(**base, retention=(0.8, 0.8)), 16)
  assert kept.max() <= 1.0 / (1 - 0.8) + 1e-5 < free.max()
  with pytest.raises(ValueError, match="retention"):
    CMSConfig(**base, retention=(1.5, 0.8))


@pytest.mark.parametrize("variant", ["sequential", "nested"])
def test_resets_anywhere_equal_token_loop_float64(variant):
  """Each level scans its own chunks, and a reset inside one (not on a segment boundary either)
  is exact: row 0 starts a document at position 3; row 1 at 7 and again at 10, two resets in
  level 1's chunk [6, 12)."""
  with jax.enable_x64(True):
    cfg, layer, x = _setup(variant, t=14)
    params = layer.params()
    reset = jnp.zeros(x.shape[:2], bool).at[0, 2].set(True).at[1, 6].set(True)
    reset = reset.at[1, 9].set(True)
    st = init_state(cfg, params, 2)._replace(position=jnp.array([1, 1], jnp.int32))

    (_, (y1, s1)), g1 = cms_run(cms_scan, cfg, params, st, x, reset)
    (_, (y2, s2)), g2 = cms_run(sequential_reference, cfg, params, st, x, reset)
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-12)
    _tree_close(s1, s2, rtol=1e-10, atol=1e-12)
    _tree_close(g1, g2, rtol=1e-9, atol=1e-12)


def test_first_order_meta_gradient():
  """meta_gradient="first_order": the same outputs and state as "exact"; the outer gradient is
  the token loop's with every in-context gradient held constant, and differs from the exact
  one (the in-context gradients depend on the initial weights)."""
  with jax.enable_x64(True):
    exact, layer, x = _setup("sequential", t=14)
    first = CMSConfig(**{**exact.__dict__, "meta_gradient": "first_order"})
    params = layer.params()
    reset = jnp.zeros(x.shape[:2], bool).at[1, 5].set(True)
    st = init_state(exact, params, 2)

    (_, (y1, s1)), g1 = cms_run(cms_scan, first, params, st, x, reset)
    (_, (y2, s2)), g2 = cms_run(sequential_reference, first, params, st, x, reset)
    (_, (y3, s3)), g3 = cms_run(cms_scan, exact, params, st, x, reset)
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-12)
    _tree_close(g1, g2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(y1, y3, rtol=1e-12, atol=1e-13)
    _tree_close(s1, s3, rtol=1e-12, atol=1e-13)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(g1[0].init), jax.tree.leaves(g3[0].init), strict=True))
    assert diff > 1e-6
  with pytest.raises(ValueError, match="meta_gradient"):
    CMSConfig(d_model=4, hidden=6, meta_gradient="none")
  with pytest.raises(ValueError, match="objective='local' only"):
    CMSConfig(d_model=4, hidden=6, objective="ntp", meta_gradient="first_order")


def _scan_lengths(fn, *args):
  """The trip counts of the top-level scans of fn's program."""
  return [e.params["length"] for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns
          if e.primitive.name == "scan"]


@pytest.mark.parametrize("t", [12, 11])
def test_fresh_state_runs_no_padded_chunk(t):
  """start_aligned (the caller created the state): each level runs ceil(T / C_l) chunks, not
  the ceil((T + C_l - 1) / C_l) a traced start position needs; same results."""
  cfg, layer, x = _setup("sequential", jnp.float32, t=t)
  params = layer.params()
  st = init_state(cfg, params, 2)
  reset = jnp.zeros(x.shape[:2], bool).at[0, 4].set(True)
  ya, sa, _ = jax.jit(lambda x: cms_scan(cfg, params, st, x, reset, start_aligned=True))(x)
  yb, sb, _ = jax.jit(lambda x: cms_scan(cfg, params, st, x, reset))(x)
  np.testing.assert_allclose(ya, yb, rtol=1e-6, atol=1e-6)
  _tree_close(sa, sb, rtol=1e-6, atol=1e-6)
  aligned = _scan_lengths(lambda x: cms_scan(cfg, params, st, x, reset, start_aligned=True), x)
  general = _scan_lengths(lambda x: cms_scan(cfg, params, st, x, reset), x)
  assert aligned == [-(-t // c) for c in cfg.chunk_sizes]
  assert general == [-(-(t + c - 1) // c) for c in cfg.chunk_sizes]
