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
"""Nested CMS (variant="nested", eq. 72): segment-parallel == the token loop written from the
equations (float64, forward and gradient, resets, a call starting mid-segment), streaming,
the degenerate cases that equal the sequential variant, the re-initialisation schedule, bad
configurations, and Hope / Hope-Attention running it."""

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
    nested_reference,
)
from nl_jax.models import registry
from tests.models.helpers import cms_run, jitted_forward


def _setup(chunk_sizes, lrs, dtype=jnp.float64, b=2, t=11, variant="nested", **options):
  cfg = CMSConfig(d_model=8, hidden=12, chunk_sizes=chunk_sizes, learning_rates=lrs,
                  variant=variant, **options)
  params = ContinuumMemorySystem(cfg, param_dtype=dtype, rngs=nnx.Rngs(0)).params()
  x = jax.random.normal(jax.random.key(1), (b, t, 8), dtype)
  return cfg, params, x


def _tree_close(a, b, **kw):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), **kw)


def _moved(a, b):
  return max(float(jnp.max(jnp.abs(u - v))) for u, v in
             zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("chunk_sizes,lrs,options", [
    # the clip bites on some steps and not others; retention on every level
    ((2, 4), (0.3, 0.1), dict(max_step_norm=0.3, retention=(0.9, 0.7))),
    pytest.param((2, 4, 8), (0.3, 0.2, 0.1), dict(), marks=pytest.mark.slow),
    pytest.param((2, 2, 6), (0.3, 0.05, 0.2), dict(max_step_norm=0.5, retention=(1.0, 0.8, 0.6)),
                 marks=pytest.mark.slow),
])
def test_chunk_parallel_equals_token_loop_float64(chunk_sizes, lrs, options):
  """The call starts at position 1 (mid-segment) and row 1 starts a document at position 6
  (inside level 1's context [4, 8)); outputs, the whole state and the gradients w.r.t. every
  parameter and the input agree."""
  with jax.enable_x64(True):
    cfg, params, x = _setup(chunk_sizes, lrs, **options)
    reset = jnp.zeros(x.shape[:2], bool).at[1, 5].set(True)
    st = init_state(cfg, params, 2)._replace(position=jnp.array([1, 1], jnp.int32))

    (_, (y1, s1)), g1 = cms_run(cms_scan, cfg, params, st, x, reset)
    (_, (y2, s2)), g2 = cms_run(nested_reference, cfg, params, st, x, reset)
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-12)
    _tree_close(s1, s2, rtol=1e-10, atol=1e-12)
    _tree_close(g1, g2, rtol=1e-9, atol=1e-12)
    # not vacuous: every meta-learned initial state moved, and so did its outer gradient
    for lvl in range(cfg.n_levels - 1):
      assert _moved(s1.meta_init[lvl], jax.tree.map(lambda a: a[None], params.init[lvl])) > 1e-4
      assert _moved(g1[0].init[lvl], jax.tree.map(jnp.zeros_like, g1[0].init[lvl])) > 1e-4


def test_streaming_split_equals_one_call():
  """Split at 7: mid-segment, inside level 0's context [4, 8) and level 1's chunk [4, 8)."""
  with jax.enable_x64(True):
    cfg, params, x = _setup((2, 4), (0.3, 0.1), t=14, max_step_norm=0.3, retention=(0.9, 0.7))
    st = init_state(cfg, params, 2)
    reset = jnp.zeros(x.shape[:2], bool)
    fn = jax.jit(lambda st, x, r: cms_scan(cfg, params, st, x, r)[:2])
    y, s = fn(st, x, reset)
    ya, sa = fn(st, x[:, :7], reset[:, :7])
    yb, sb = fn(sa, x[:, 7:], reset[:, 7:])
    np.testing.assert_allclose(jnp.concatenate([ya, yb], 1), y, rtol=1e-10, atol=1e-12)
    _tree_close(sb, s, rtol=1e-10, atol=1e-12)
    assert _moved(sa.meta_acc[0], jax.tree.map(jnp.zeros_like, sa.meta_acc[0])) > 1e-4


def test_degenerate_cases_equal_the_sequential_variant():
  """One level: nested is sequential. Equal learning rates, no clip, no retention: level l+1
  steps phi_l by the sum of level l's gradients over its context, which is exactly where
  level l's own steps took it, so every re-initialisation is a no-op and nested ==
  sequential (a stepping or bookkeeping slip breaks it)."""
  with jax.enable_x64(True):
    for chunk_sizes, lrs in (((2,), (0.3,)), ((2, 4, 8), (0.2, 0.2, 0.2))):
      out = {}
      for variant in ("sequential", "nested"):
        cfg, params, x = _setup(chunk_sizes, lrs, t=17, variant=variant, max_step_norm=None)
        reset = jnp.zeros(x.shape[:2], bool).at[0, 10].set(True)
        out[variant] = jax.jit(lambda st, x, r, cfg=cfg, params=params: cms_scan(
            cfg, params, st, x, r)[:2])(init_state(cfg, params, 2), x, reset)
      (y1, s1), (y2, s2) = out["sequential"], out["nested"]
      np.testing.assert_allclose(y2, y1, rtol=1e-10, atol=1e-12)
      _tree_close((s2.weights, s2.acc), (s1.weights, s1.acc), rtol=1e-10, atol=1e-12)
      assert len(s2.meta_init) == len(chunk_sizes) - 1


def test_parent_learning_rate_zero_restarts_the_child_every_context():
  """lr_1 = 0: phi_0 stays at level_0_init, so level 0 is back at it exactly at every end of
  level 1's context (positions 4, 8) and has learned in between (positions 2, 6)."""
  cfg, params, x = _setup((2, 4), (0.3, 0.0), dtype=jnp.float32, t=8)
  reset = jnp.zeros((2, 2), bool)
  fn = jax.jit(lambda st, x: cms_scan(cfg, params, st, x, reset)[1])
  init0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (2,) + a.shape), params.init[0])
  st = init_state(cfg, params, 2)
  for end in (2, 4, 6, 8):
    st = fn(st, x[:, end - 2:end])
    gap = _moved(st.weights[0], init0)
    assert (gap == 0.0) if end % 4 == 0 else (gap > 1e-4), (end, gap)


def test_bad_configurations_are_refused():
  def one_line(match, **kw):
    with pytest.raises(ValueError, match=match) as e:
      CMSConfig(d_model=4, hidden=6, variant="nested", **kw)
    assert "\n" not in str(e.value)
  one_line(r"chunk_sizes=\(8, 4\): variant='nested'", chunk_sizes=(8, 4))
  one_line(r"chunk_sizes=\(2, 4, 6\): variant='nested'", chunk_sizes=(2, 4, 6))
  # Both objectives (ntp: tests/models/test_cms_ntp.py), so the paper profile takes it as is.
  assert registry.model_config("hope", "tiny", **{"cms.variant": "nested"},
                               profile="paper").cms_config().objective == "ntp"
  with pytest.raises(ValueError, match=r"cms: CMSConfig.chunk_sizes=\(32, 8\)"):
    registry.model_config("hope_attention", "tiny", cms=dict(variant="nested",
                                                             chunk_sizes=(32, 8)))
  cfg = registry.model_config("hope", "tiny", profile="paper",
                              cms=dict(variant="nested", objective="local"))
  assert cfg.cms_config().variant == "nested"


def test_hope_attention_runs_nested():
  """Selectable in Hope-Attention: the CMS state carries the meta-learned initial state, which
  level 1 steps at the end of each of its chunks (positions 8, 16)."""
  cfg = registry.model_config("hope_attention", "tiny", n_layers=1,
                              cms=dict(variant="nested", chunk_sizes=(4, 8)))
  model = registry.build_model(cfg, rngs=nnx.Rngs(0))
  tok = jax.random.randint(jax.random.key(0), (2, 20), 0, 259, jnp.int32)
  fresh = model.init_memory(2)
  logits, state, aux = jitted_forward(model)(tok, fresh)
  assert np.all(np.isfinite(logits)) and float(aux["block_0/cms/level_1/update_norm"]) > 0
  phi0, phi = fresh["block_0"]["cms"].meta_init[0], state["block_0"]["cms"].meta_init[0]
  assert len(fresh["block_0"]["cms"].meta_init) == 1 and _moved(phi, phi0) > 1e-6


@pytest.mark.slow
def test_hope_nested_streaming_split_equals_one_call():
  """Selectable in Hope: a stream split mid-segment (10, inside level 1's chunk [8, 16))
  equals one call."""
  cfg = registry.model_config("hope", "tiny", n_layers=1,
                              cms=dict(variant="nested", chunk_sizes=(4, 8)))
  model = registry.build_model(cfg, rngs=nnx.Rngs(0))
  fwd = jitted_forward(model)
  tok = jax.random.randint(jax.random.key(0), (2, 24), 0, 259, jnp.int32)
  fresh = model.init_memory(2)
  logits, state, _ = fwd(tok, fresh)
  la, sa, _ = fwd(tok[:, :10], fresh)
  lb, sb, _ = fwd(tok[:, 10:], sa)
  np.testing.assert_allclose(jnp.concatenate([la, lb], 1), logits, rtol=2e-4, atol=2e-5)
  _tree_close(sb, state, rtol=2e-4, atol=2e-5)
  assert _moved(state["block_0"]["cms"].meta_init[0], fresh["block_0"]["cms"].meta_init[0]) > 0
