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
"""remat_scan: a grouped (two-level checkpointed) chunk scan gives the flat scan's outputs and
gradients, in a toy scan and in Hope's chunk scans (CMS levels, self-modifying Titans), and
saves less."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.layers.cms import CMSConfig, ContinuumMemorySystem, cms_scan, init_state
from nl_jax.memory import remat_scan
from nl_jax.models import registry
from tests.models.helpers import cms_run


def _toy(c0, xs, group, remat=True):
  def body(c, x):
    c = jnp.tanh(c @ x["w"]) + x["i"]
    return c, jnp.sum(c * c)

  c, ys = remat_scan.remat_scan(body, c0, xs, remat=remat, group=group)
  return jnp.sum(c ** 2) + jnp.sum(ys * jnp.arange(ys.shape[0], dtype=ys.dtype))


@pytest.mark.parametrize("group", [1, 2, 3, 5, 0])
def test_grouped_scan_equals_flat_scan(group):
  with jax.enable_x64(True):
    n = 11  # groups of 2, 3, 5 leave a tail of 1, 2, 1 chunks
    xs = {"w": jax.random.normal(jax.random.key(0), (n, 4, 4), jnp.float64) / 2,
          "i": jnp.arange(n, dtype=jnp.float64)[:, None] * 0.01}
    c0 = jnp.linspace(-1.0, 1.0, 4, dtype=jnp.float64)
    want = jax.value_and_grad(_toy, argnums=(0, 1))(c0, xs, 1, False)
    got = jax.jit(jax.value_and_grad(_toy, argnums=(0, 1)), static_argnums=2)(c0, xs, group)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-15)


def test_group_size_nests_only_when_it_saves():
  assert remat_scan.group_size(1, 64) is None
  assert remat_scan.group_size(0, 16) == 4 and remat_scan.group_size(0, 64) == 8
  assert remat_scan.group_size(4, 16) == 4
  # 4 chunks: 2 groups of 2 would save 2 + 2 states, no fewer than the flat scan's 4.
  assert remat_scan.group_size(0, 4) is None and remat_scan.group_size(2, 4) is None
  assert remat_scan.group_size(8, 12) is None  # one group of 8 + 4 left: 1 + 4 + 8 > 12
  for bad in (-1, True, None, "sqrt", 2.5):
    with pytest.raises(ValueError, match="remat_group"):
      remat_scan.check_group("X.remat_group", bad)
  with pytest.raises(ValueError, match="HopeConfig.chunk_remat_group"):
    registry.model_config("hope", "tiny", chunk_remat_group=-1)


def test_chunk_remat_group_default_chooses_per_layer():
  """None: the CMS levels group (about sqrt(n)), the self-modifying Titans keep every chunk
  (the tiny presets set 1); an int applies to both (the command line's spelling:
  tests/models/test_paper_profile.py)."""
  for name in ("hope", "hope_attention"):
    assert registry.model_config(name, "small").cms_config().remat_group == 0
    assert registry.model_config(name, "tiny").cms_config().remat_group == 1  # preset's
  cfg = registry.model_config("hope", "small")
  assert cfg.chunk_remat_group is None and cfg.smt_config().remat_group == 1
  for group in (0, 1, 3):
    cfg = registry.model_config("hope", "small", chunk_remat_group=group)
    assert cfg.cms_config().remat_group == cfg.smt_config().remat_group == group


@pytest.mark.parametrize("group", [3, pytest.param(0, marks=pytest.mark.slow)])
def test_cms_levels_grouped_equal_flat_float64(group):
  """A CMS of chunks (2, 6) over 25 tokens from position 1 with a document start inside:
  13 chunks of level 0 (grouped, with a tail) and 5 of level 1."""
  with jax.enable_x64(True):
    outs = []
    for g in (1, group):
      cfg = CMSConfig(d_model=8, hidden=12, chunk_sizes=(2, 6), learning_rates=(0.05, 0.02),
                      remat_group=g)
      params = ContinuumMemorySystem(cfg, param_dtype=jnp.float64, rngs=nnx.Rngs(0)).params()
      x = jax.random.normal(jax.random.key(1), (2, 25, 8), jnp.float64)
      reset = jnp.zeros(x.shape[:2], bool).at[1, 9].set(True)
      st = init_state(cfg, params, 2)._replace(position=jnp.array([1, 1], jnp.int32))
      outs.append(cms_run(cms_scan, cfg, params, st, x, reset))
    for a, b in zip(jax.tree.leaves(outs[1]), jax.tree.leaves(outs[0]), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


def _hope_grads(group, tokens, split):
  cfg = registry.model_config("hope", "tiny", n_layers=1, chunk_remat_group=group)
  model = registry.build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    m = nnx.merge(graphdef, params, rest)
    # Two calls, the state carried: the second starts mid-chunk (front-padded chunks).
    la, st, _ = m(tokens[:, :split], m.init_memory(tokens.shape[0]))
    lb, st, _ = m(tokens[:, split:], st)
    out = jnp.concatenate([la, lb], axis=1)
    return jnp.mean(jax.nn.logsumexp(out, axis=-1) - out[..., 0]), st

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.mark.slow
def test_hope_chunk_scans_grouped_equal_flat():
  """Hope tiny (SMT chunks 8, CMS chunks 8 and 32) over 8 + 120 tokens: 15-16 chunks per
  SMT scan and CMS level 0 in the second call, grouped in 2s and ~4s (with tails)."""
  tokens = jax.random.randint(jax.random.key(3), (2, 128), 0, 259, jnp.int32)
  (want_loss, want_state), want = _hope_grads(1, tokens, 8)
  for group in (2, 0):
    (loss, state), grads = _hope_grads(group, tokens, 8)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves((grads, state)), jax.tree.leaves((want, want_state)),
                    strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


def _loops(lowered) -> int:
  return lowered.as_text().count("stablehlo.while")


@pytest.mark.parametrize("group", [1, 3])
def test_block_policy_keeps_scan_states_instead_of_rerunning_the_scan(group):
  """Inside an enclosing jax.checkpoint, `save_scan_states` keeps the named states and outputs:
  the same values and gradients (float64), and the backward runs no forward of the chunk loop
  only to rebuild them (fewer loops in the program than with the enclosing remat's default)."""
  with jax.enable_x64(True):
    n = 11
    xs = {"w": jax.random.normal(jax.random.key(4), (n, 4, 4), jnp.float64) / 2,
          "i": jnp.arange(n, dtype=jnp.float64)[:, None] * 0.01}
    c0 = jnp.linspace(-1.0, 1.0, 4, dtype=jnp.float64)

    def block(policy):
      # sin(c0) so that the scan's inputs are themselves recomputed in the backward.
      f = jax.checkpoint(lambda c, xs: _toy(jnp.sin(c), xs, group), policy=policy)
      return jax.value_and_grad(f, argnums=(0, 1))

    want = jax.value_and_grad(lambda c, xs: _toy(jnp.sin(c), xs, 1, False),
                              argnums=(0, 1))(c0, xs)
    kept = block(remat_scan.save_scan_states())
    for a, b in zip(jax.tree.leaves(jax.jit(kept)(c0, xs)), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-15)
    assert (_loops(jax.jit(kept).lower(c0, xs))
            < _loops(jax.jit(block(None)).lower(c0, xs)))


def _hope_policy_step(policy, scan_layers, tokens):
  cfg = registry.model_config("hope", "tiny", n_layers=1, scan_layers=scan_layers, remat=True,
                              remat_policy=policy)
  graphdef, params = nnx.split(registry.build_model(cfg, rngs=nnx.Rngs(0)))

  def loss(params, tokens):
    logits = nnx.merge(graphdef, params)(tokens, None)[0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0])

  return jax.jit(jax.value_and_grad(loss)).lower(params, tokens), params


def test_hope_remat_policy_memory_states_leaves_chunk_loops_out_of_the_backward():
  """Hope tiny, blocks scanned and rematerialised: with remat_policy="memory_states" the
  step's program has fewer loops (the block's recomputation runs no chunk loop)."""
  tokens = jax.ShapeDtypeStruct((2, 40), jnp.int32)
  loops = [_loops(_hope_policy_step(p, True, tokens)[0]) for p in ("full", "memory_states")]
  assert loops[1] < loops[0], loops


@pytest.mark.slow  # two compiles of a Hope step per layout: ~30 s each case
@pytest.mark.parametrize("scan_layers", [True, False])
def test_hope_remat_policy_memory_states_same_loss_and_gradients(scan_layers):
  """The same loss and gradients under both policies, scanned or unrolled (nnx.remat)."""
  tokens = jax.random.randint(jax.random.key(5), (2, 40), 0, 259, jnp.int32)
  runs = []
  for policy in ("full", "memory_states"):
    lowered, params = _hope_policy_step(policy, scan_layers, tokens)
    runs.append(jax.tree.map(np.asarray, lowered.compile()(params, tokens)))
  want, got = runs
  # float32, two programs that XLA fuses differently: the largest difference seen was 1.2e-7
  # on an entry of 1.5e-4 (rounding, not a different computation).
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_remat_policy_is_checked():
  with pytest.raises(ValueError, match=r"remat_policy='memory_states'.*remat=True"):
    registry.model_config("hope", "tiny", remat_policy="memory_states")
  with pytest.raises(ValueError, match=r"HopeConfig.remat_policy='all' is not one of"):
    registry.model_config("hope", "tiny", remat=True, remat_policy="all")
