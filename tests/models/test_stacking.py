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
"""Ad-hoc level stacking: a Hope-Attention model built from a Transformer++'s MLPs.

With every CMS learning rate 0 the converted model is the Transformer++ (every mapping, in the
variants where it is exact); with rates > 0 its levels learn in context from there.
"""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.models import registry, stacking

CHUNKS = (8, 32)


def _trained_like_transformer(scan_layers=False):
  """A tiny Transformer++ with every parameter perturbed (norm scales not all 1, w_down not
  small), standing in for a trained one."""
  cfg = registry.model_config("transformer_pp", "tiny", scan_layers=scan_layers)
  model = registry.build_model(cfg, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(treedef, leaves))
  return model


def _tokens():
  return jax.random.randint(jax.random.key(2), (2, 64), 0, 259)


@pytest.mark.parametrize("mapping,variant", [("split", "independent"),
                                             ("copy", "independent"),
                                             ("slowest", "sequential"),
                                             ("slowest", "independent")])
def test_at_learning_rate_zero_the_converted_model_is_the_transformer(mapping, variant):
  tpp = _trained_like_transformer()
  hope = stacking.stack_levels(tpp, mapping=mapping, cms=dict(
      variant=variant, chunk_sizes=CHUNKS, learning_rates=(0.0, 0.0)))
  assert hope.config.cms.variant == variant
  want = tpp(_tokens())[0]
  got = hope(_tokens())[0]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
  # The levels really hold the pretrained weights (not a copy of the block's output path).
  lv = nnx.to_pure_dict(nnx.state(hope, nnx.Param))["blocks"][0]["cms"]
  mlp = nnx.to_pure_dict(nnx.state(tpp, nnx.Param))["blocks"][0]["mlp"]
  if mapping == "split":
    np.testing.assert_array_equal(np.concatenate([lv["level_0_init"]["w_up"],
                                                  lv["level_1_init"]["w_up"]], axis=1),
                                  mlp["w_up"])
  else:
    np.testing.assert_array_equal(lv["level_1_init"]["w_down"], mlp["w_down"])


def test_with_learning_rates_the_levels_learn_from_the_pretrained_weights():
  """Rates > 0: identical up to the first chunk end (nothing has stepped yet), then the CMS has
  learned in context and the outputs move away from the Transformer++'s."""
  tpp = _trained_like_transformer()
  hope = stacking.stack_levels(tpp, cms=dict(chunk_sizes=CHUNKS, learning_rates=(0.3, 0.3)))
  want = np.asarray(tpp(_tokens())[0])
  got = np.asarray(hope(_tokens())[0])
  np.testing.assert_allclose(got[:, :CHUNKS[0]], want[:, :CHUNKS[0]], rtol=2e-5, atol=2e-5)
  assert np.abs(got[:, CHUNKS[0]:] - want[:, CHUNKS[0]:]).max() > 1e-2


def test_scanned_blocks_convert_too():
  tpp = _trained_like_transformer(scan_layers=True)
  hope = stacking.stack_levels(tpp, cms=dict(chunk_sizes=CHUNKS, learning_rates=(0.0, 0.0)))
  assert hope.config.scan_layers
  np.testing.assert_allclose(np.asarray(hope(_tokens())[0]), np.asarray(tpp(_tokens())[0]),
                             rtol=2e-5, atol=2e-5)


def test_bad_requests_are_refused_in_one_line():
  tpp = registry.model_config("transformer_pp", "tiny")
  with pytest.raises(ValueError, match="Transformer"):
    stacking.stacked_config(registry.model_config("titans", "tiny"))
  with pytest.raises(ValueError, match="mapping='bogus'"):
    stacking.stacked_config(tpp, mapping="bogus")
  with pytest.raises(ValueError, match="cms.variant in \\('independent',\\)"):
    stacking.stacked_config(tpp, mapping="split", **{"cms.variant": "sequential"})
  with pytest.raises(ValueError, match="divides the SwiGLU's 192 hidden units among 5"):
    stacking.stacked_config(tpp, **{"cms.chunk_sizes": (8, 16, 32, 64, 128)})
  with pytest.raises(ValueError, match="mlp_hidden=50"):
    stacking.stacked_config(tpp, mlp_hidden=50)
  with pytest.raises(ValueError, match="conv_width=4"):
    stacking.stacked_config(registry.model_config("transformer_pp", "tiny", conv_width=4))
  cfg = stacking.stacked_config(tpp, mapping="copy", **{"cms.chunk_sizes": CHUNKS})
  assert (cfg.mlp_hidden, cfg.n_layers, cfg.d_model) == (192, 2, 64)
  assert jnp.dtype(cfg.dtype) == jnp.float32
