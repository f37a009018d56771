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
"""A call that creates its own memory state (memory_state=None, as the trainer's step does)
knows it starts at position 0 (SequenceContext.start_aligned): its chunked scans run no padded
chunk, with the results of a call given the same fresh state explicitly."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.models import registry
from tests.memory.test_aligned_chunks import _scan_lengths


@pytest.mark.parametrize("name,overrides", [
    ("hope", dict(n_layers=1, cms=dict(chunk_sizes=(4, 8)),
                  smt=dict(chunk_size=8, proj_chunk_size=4))),
    # The next-token CMS driver (~35 s; its own default tests: test_cms_ntp.py).
    pytest.param("hope", dict(n_layers=1, cms=dict(objective="ntp", chunk_sizes=(8, 16)),
                              smt=dict(chunk_size=8, proj_chunk_size=4)),
                 marks=pytest.mark.slow),
    ("titans", dict(n_layers=1)),
    # Scanned blocks build a fresh state inside the layer scan (CausalLM._fresh_block_state).
    ("hope", dict(n_layers=2, scan_layers=True, remat=True, cms=dict(chunk_sizes=(4, 8)),
                  smt=dict(chunk_size=8, proj_chunk_size=4))),
    ("titans", dict(n_layers=2, scan_layers=True))])
def test_fresh_call_equals_explicit_fresh_state_with_fewer_chunks(name, overrides):
  cfg = registry.model_config(name, "tiny", **overrides)
  model = registry.build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  b, t = 2, 16
  tokens = jax.random.randint(jax.random.key(1), (b, t), 0, cfg.vocab_size, jnp.int32)
  seg = jnp.ones((b, t), jnp.int32).at[1, 8:].set(2)  # a document starts at 8 in row 1

  def run(params, explicit):
    m = nnx.merge(graphdef, params)
    state = m.init_memory(b) if explicit else None
    return m(tokens, state, segment_ids=seg)[:2]

  # Outputs, states and gradients from one program per call kind (half the compiles).
  def run_and_grad(params, explicit):
    def loss(p):
      out = run(p, explicit)
      return jnp.mean(out[0] ** 2), out
    (_, out), grad = jax.value_and_grad(loss, has_aux=True)(params)
    return out, grad

  fn = jax.jit(run_and_grad, static_argnums=1)
  ((la, sa), ga), ((lb, sb), gb) = fn(params, False), fn(params, True)
  np.testing.assert_allclose(la, lb, rtol=2e-5, atol=2e-5)
  for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
    np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-5)
  # Gradients too. (Not a check of the gradient through the fresh state itself: a call's
  # first token resets every memory to its initial parameters, so that gradient is zero.)
  for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
    np.testing.assert_allclose(u, v, rtol=2e-4, atol=1e-6)
  fresh, explicit = (sum(_scan_lengths(lambda p, e=e: run(p, e), params)) for e in (False, True))
  assert fresh < explicit, (fresh, explicit)
