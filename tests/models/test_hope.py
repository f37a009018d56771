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
"""Hope and Hope-Attention: causality by gradient, streaming, per-sequence memory, resets,
presets, jit forward+backward, overfitting one batch, bad inputs."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nl_jax.models import registry
from tests.models.helpers import assert_causal, causal_gradients, jitted_forward


def _tokens(b=2, t=24, seed=0, vocab=259):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, vocab, jnp.int32)


def _close(a, b, **kw):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), **kw)


def test_hope_streaming_per_sequence_and_resets():
  """One call == two calls (split at 12: mid SMT chunk, mid CMS segment, inside CMS level
  1's 32-token chunk); changing sequence 1 leaves sequence 0 alone; a document starting at
  position 8 (the alignment) sees exactly what a fresh stream sees."""
  model = registry.build_model(registry.model_config("hope", "tiny", n_layers=1),
                               rngs=nnx.Rngs(0))
  fwd = jitted_forward(model)
  tok = _tokens()
  seg = jnp.ones_like(tok)
  fresh = model.init_memory(2)
  logits, state, aux = fwd(tok, fresh, seg)
  assert logits.shape == (2, 24, 259) and logits.dtype == jnp.float32
  for key in ("block_0/smt/inner_loss", "block_0/smt/eta_mean", "block_0/smt/alpha_mean",
              "block_0/cms/level_0/update_norm", "block_0/smt/update_norm"):
    assert np.isfinite(float(aux[key])), key
  assert float(aux["block_0/cms/level_0/update_norm"]) > 0
  la, sa, _ = fwd(tok[:, :12], fresh, seg[:, :12])
  lb, sb, _ = fwd(tok[:, 12:], sa, seg[:, 12:])
  np.testing.assert_allclose(jnp.concatenate([la, lb], 1), logits, rtol=2e-4, atol=2e-5)
  _close(sb, state, rtol=2e-4, atol=2e-5)
  # per-sequence memory: same compiled program, sequence 1 changed
  l2, _, _ = fwd(tok.at[1].set((tok[1] + 7) % 259), fresh, seg)
  np.testing.assert_array_equal(l2[0], logits[0])
  assert float(jnp.max(jnp.abs(l2[1] - logits[1]))) > 1e-3
  # resets: documents [0, 8) and [8, 24) packed, vs the second document alone from a fresh
  # state (padded by a third document so the compiled shape is reused)
  packed_seg = jnp.concatenate([jnp.ones((2, 8), jnp.int32), 2 * jnp.ones((2, 16), jnp.int32)],
                               axis=1)
  lp, _, _ = fwd(tok, fresh, packed_seg)
  alone = jnp.concatenate([tok[:, 8:], tok[:, :8]], axis=1)
  alone_seg = jnp.concatenate([jnp.ones((2, 16), jnp.int32), 2 * jnp.ones((2, 8), jnp.int32)],
                              axis=1)
  la2, _, _ = fwd(alone, fresh, alone_seg)
  np.testing.assert_allclose(lp[:, 8:], la2[:, :16], rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name,overrides", [
    ("hope", dict(smt=dict(momentum=True, adaptive_q=True, rule="paper_l2", read_at="post",
                           eta_max=0.4, proj_chunk_size=4), cms=dict(variant="independent"))),
    pytest.param("hope_attention", dict(), marks=pytest.mark.slow),
    pytest.param("hope", dict(), marks=pytest.mark.slow),
    pytest.param("hope", dict(smt=dict(rule="gd", read_at="anchor", stop_target_grad=True)),
                 marks=pytest.mark.slow),
    pytest.param("hope_attention", dict(cms=dict(variant="independent"), sliding_window=4),
                 marks=pytest.mark.slow),
])
def test_causality_by_gradient(name, overrides):
  cfg = registry.model_config(name, "tiny", n_layers=1, **overrides)
  model = registry.build_model(cfg, rngs=nnx.Rngs(1))
  assert_causal(causal_gradients(model, _tokens(b=1, t=12, seed=2)))


def test_small_presets_size_matched():
  small_ref = registry.count_params(registry.model_config("transformer_pp", "small"))
  for name in ("hope", "hope_attention"):
    small = registry.count_params(registry.model_config(name, "small"))
    assert abs(small / small_ref - 1) < 0.05, (name, small, small_ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hope", "hope_attention"])
def test_large_presets_parameter_counts(name):
  for preset, target in (("760m", 760e6), ("1_3b", 1.3e9)):
    n = registry.count_params(registry.model_config(name, preset))
    assert abs(n / target - 1) < 0.05, (name, preset, n)


def test_bad_inputs():
  model = registry.build_model(registry.model_config("hope", "tiny", n_layers=1),
                               rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="vocab_size"):
    model(jnp.full((1, 4), 300, jnp.int32))
  with pytest.raises(ValueError, match="rank 2"):
    model(jnp.zeros((4,), jnp.int32))
  other = registry.build_model(registry.model_config("hope_attention", "tiny", n_layers=1),
                               rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="memory_state"):
    model(jnp.zeros((1, 4), jnp.int32), other.init_memory(1))
  with pytest.raises(ValueError, match=r"cms: CMSConfig.chunk_sizes"):
    registry.model_config("hope", "tiny", cms=dict(chunk_sizes=(8, 12)))
  with pytest.raises(ValueError, match=r"smt: SelfModifyingTitansConfig.rule"):
    registry.model_config("hope", "tiny", **{"smt.rule": "hebbian"})
  with pytest.raises(ValueError, match=r"cms: CMSConfig.objective"):
    registry.model_config("hope_attention", "tiny", cms=dict(objective="next_token"))
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['smt.rules'\]"):
    registry.model_config("hope", "tiny", **{"smt.rules": "dgd"})
  # The model sets its layers' widths: a layer config may not set them otherwise.
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['cms.d_model'\]"):
    registry.model_config("hope", "tiny", **{"cms.d_model": 32})
  # One level may be given as a scalar (command-line overrides); static k / v are options.
  cfg = registry.model_config("hope", "tiny", cms=dict(chunk_sizes=16, learning_rates=0.0),
                              smt=dict(static_projections=["k"]))
  assert cfg.cms.chunk_sizes == (16,) and cfg.cms.learning_rates == (0.0,)
  assert cfg.smt_config().static_projections == ("k",)
  with pytest.raises(ValueError, match="static_projections"):
    registry.model_config("hope", "tiny", smt=dict(static_projections=("q",)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hope", "hope_attention"])
def test_tiny_overfits_one_batch(name):
  model = registry.build_model(registry.model_config(name, "tiny"), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tok = _tokens(b=2, t=16, seed=5)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    def loss_fn(params):
      logits, _, _ = nnx.merge(graphdef, params)(tok)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tok[:, 1:])
      return jnp.mean(ce)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for _ in range(30):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.7 * losses[0], losses
