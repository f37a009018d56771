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
"""generate / memorize: greedy decoding equals the full forward; memory keeps being written."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.models import generate as generate_lib
from nl_jax.models import registry
from nl_jax.models.generate import generate, memorize

SMALL = dict(n_layers=1, d_model=32, n_heads=2, head_dim=16, mlp_hidden=64)


@pytest.mark.parametrize("name,extra", [("transformer_pp", {}), ("titans", dict(chunk_size=4))])
def test_greedy_generate_matches_forward_and_memorize(name, extra):
  model = registry.build_model(registry.model_config(name, "tiny", **SMALL, **extra),
                               rngs=nnx.Rngs(0))
  prompt = jax.random.randint(jax.random.key(0), (2, 6), 0, 259)
  tokens, state = generate(model, prompt, 4)
  assert tokens.shape == (2, 4) and tokens.dtype == jnp.int32
  full = jnp.concatenate([prompt, tokens], axis=1)
  # The decoder's own jitted forward (cached by shape, so memorize below reuses it).
  graphdef, params = nnx.split(model)
  logits, full_state = generate_lib._forward_jit(graphdef, params, full,  # pylint: disable=protected-access
                                                 model.init_memory(2))
  # Greedy: every generated token is the argmax after everything before it.
  np.testing.assert_array_equal(jnp.argmax(logits[:, 5:-1], -1), tokens)
  # The returned state covers prompt + generated tokens, like memorize of the whole text.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               state, full_state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               memorize(model, full), full_state)
  if name == "titans":
    assert jax.tree.leaves(state)
    # Sampling uses the rng and stays in range.
    sampled, _ = generate(model, prompt, 3, rng=jax.random.key(1), temperature=1.0)
    assert sampled.shape == (2, 3) and int(sampled.min()) >= 0 and int(sampled.max()) < 259
  else:
    assert state == {}


def test_generate_rejects_bad_arguments():
  model = nnx.eval_shape(lambda: registry.build_model(
      registry.model_config("titans", "tiny", **SMALL), rngs=nnx.Rngs(0)))
  prompt = np.zeros((1, 3), np.int32)
  with pytest.raises(ValueError, match="num_steps"):
    generate(model, prompt, 0)
  with pytest.raises(ValueError, match="rng"):
    generate(model, prompt, 2, temperature=0.7)
  with pytest.raises(ValueError, match="prompt must have shape"):
    generate(model, prompt[0], 2)
  with pytest.raises(ValueError, match="ids must lie"):
    memorize(model, prompt + 1000)
