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
"""TransformerPP: causality by gradient, segments, jit forward+backward, bad inputs."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.models import registry
from tests.models import helpers


def _model(**overrides):
  config = registry.model_config("transformer_pp", "tiny", n_layers=1, d_model=32, n_heads=2,
                                 head_dim=16, mlp_hidden=64, **overrides)
  return registry.build_model(config, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("overrides,segments", [
    pytest.param(dict(), False, marks=pytest.mark.slow),  # the second case covers it and more
    (dict(sliding_window=3, attention_block_size=4, tie_embeddings=False), True),
    (dict(conv_width=3), True),  # the short conv neither looks ahead nor crosses documents
])
def test_causality_by_gradient(overrides, segments):
  model = _model(**overrides)
  tokens = jax.random.randint(jax.random.key(0), (2, 10), 0, 259)
  seg = jnp.array([[1] * 4 + [2] * 6, [1] * 10]) if segments else None
  g = helpers.causal_gradients(model, tokens, seg)
  helpers.assert_causal(g)
  if segments:  # no gradient across the document boundary either
    assert np.all(g[4:, 0, :4] == 0.0)
  if overrides.get("sliding_window"):  # and none from beyond the window
    assert np.all(g[9, 1, :7] == 0.0)


def test_tiny_forward_backward_under_jit_and_state_is_empty():
  model = registry.build_model(registry.model_config("transformer_pp", "tiny"),
                               rngs=nnx.Rngs(1))
  assert model.init_memory(3) == {}
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 259)
  value, state, grads = helpers.tiny_loss_and_grads(model, tokens)
  assert state == {}
  assert np.isfinite(value) and abs(float(value) - np.log(259)) < 1.0  # ~uniform at init
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and min(norms) > 0


def test_bad_inputs_raise_value_error_before_compilation():
  model = nnx.eval_shape(_model)  # abstract: any computation would fail, so checks come first
  good = jnp.zeros((2, 5), jnp.int32)
  with pytest.raises(ValueError, match=r"tokens ids must lie in \[0, 259\)"):
    model(good.at[0, 1].set(259))
  with pytest.raises(ValueError, match=r"tokens ids must lie"):
    model(good.at[0, 1].set(-1))
  with pytest.raises(ValueError, match="rank 2"):
    model(jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match="integer"):
    model(jnp.zeros((2, 5), jnp.float32))
  with pytest.raises(ValueError, match="segment_ids has shape"):
    model(good, segment_ids=jnp.ones((2, 4), jnp.int32))
  with pytest.raises(ValueError, match="memory_state"):
    model(good, {"foreign": jnp.zeros((2,))})
  # Shape errors are trace-time errors: jit raises them before compiling anything.
  graphdef, params = nnx.split(_model())
  fwd = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t)[0])
  with pytest.raises(ValueError, match="rank 2"):
    fwd(params, jnp.zeros((2, 5, 1), jnp.int32))


def test_conv_width_adds_a_short_conv_and_is_checked():
  tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, 259)
  plain, conv = _model(), _model(conv_width=4)
  assert conv.blocks[0].conv.kernel.shape == (4, 32)
  assert not np.allclose(plain(tokens)[0], conv(tokens)[0])
  with pytest.raises(ValueError, match="conv_width"):
    registry.model_config("transformer_pp", "tiny", conv_width=-1)
