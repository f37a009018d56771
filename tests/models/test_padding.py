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
"""Right padding is a new segment (nl_jax.eval.examples.make_batch); under jit its start falls
anywhere in a chunk. It must not change one logit of the example before it, in any model: the
self-modifying Titans once emptied its memories from the start of the chunk that held the
padding's first token, so the last queries of every MQAR example read a wiped memory
(experiments/in_context/README.md, "The reset that wiped the SMT")."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.models import registry

_HOPE = dict(n_layers=1, cms=dict(chunk_sizes=(4, 8)), smt=dict(chunk_size=8,
                                                                   proj_chunk_size=4))


@pytest.mark.parametrize("name,overrides", [
    ("hope", _HOPE),
    pytest.param("hope", dict(_HOPE, cms=dict(objective="ntp", chunk_sizes=(4, 8))),
                 marks=pytest.mark.slow),
    pytest.param("hope_attention", dict(n_layers=1), marks=pytest.mark.slow),
    pytest.param("titans", dict(n_layers=1), marks=pytest.mark.slow),
    pytest.param("transformer_pp", dict(n_layers=1), marks=pytest.mark.slow)])
def test_right_padding_changes_no_logit_of_the_example(name, overrides):
  cfg = registry.model_config(name, "tiny", **overrides)
  graphdef, params = nnx.split(registry.build_model(cfg, rngs=nnx.Rngs(0)))
  t, n = 24, 13  # the padding starts at 13, inside a chunk of every memory
  tokens = jax.random.randint(jax.random.key(1), (1, t), 0, cfg.vocab_size, jnp.int32)
  padded = tokens.at[:, n:].set(0)
  seg = jnp.ones((1, t), jnp.int32)
  fwd = jax.jit(lambda tok, seg: nnx.merge(graphdef, params)(tok, None, segment_ids=seg)[0])
  alone = fwd(tokens, seg)
  with_padding = fwd(padded, seg.at[:, n:].set(0))
  np.testing.assert_allclose(with_padding[:, :n], alone[:, :n], rtol=1e-6, atol=1e-6)
