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


@pytest.mark.parametrize("name,extra", [
    ("transformer_pp", dict(**SMALL)),
    ("titans", dict(**SMALL, titans=dict(chunk_size=4))),
    pytest.param("hope_attention", {}, marks=pytest.mark.slow),  # re-runs its context window
    pytest.param("hope", {}, marks=pytest.mark.slow),             # token by token
])
def test_greedy_generate_matches_forward_and_memorize(name, extra):
  try:
    config = registry.model_config(name, "tiny", **extra)
  except ValueError as e:  # nl_jax.models.hope absent from this checkout
    pytest.skip(str(e))
  model = registry.build_model(config, rngs=nnx.Rngs(0))
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
  # Token-by-token decoding takes the memories' sequential path, the one-call forward their
  # chunk-parallel path: equal in exact arithmetic (float64 tests of each memory pin that), here
  # float32 with another summation order, hence 1e-4 (Hope's deep memories reach ~1.4e-5).
  close = lambda a, b: np.testing.assert_allclose(  # noqa: E731
      np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=1e-4)
  jax.tree.map(close, state, full_state)
  jax.tree.map(close, memorize(model, full), full_state)
  if name != "transformer_pp":
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
