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
"""Blocks under one scan (LMConfig.scan_layers): the same model as the unrolled blocks."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.models import registry
from nl_jax.optim import partition
from nl_jax.train import config as config_lib
from nl_jax.train import mesh as mesh_lib

_SMALL_HOPE = {"cms.chunk_sizes": (4, 8), "smt.chunk_size": 8, "smt.proj_chunk_size": 4}


def _stack_blocks(pure, n):
  return jax.tree.map(lambda *xs: np.stack(xs), *[pure["blocks"][i] for i in range(n)])


def _run(cfg, tokens, seg, carry):
  """Logits, states and aux of a call (and, with ``carry``, of a second call from the first's
  state), and the gradient of the first call's loss; the parameters as a pure dict."""
  graphdef, params = nnx.split(registry.build_model(cfg, rngs=nnx.Rngs(0)))

  def loss(params):
    m = nnx.merge(graphdef, params)
    logits, state, aux = m(tokens, None, segment_ids=seg)
    return jnp.mean(jnp.square(logits)), (logits, state, aux)

  def run(params):
    (_, outs), grads = jax.value_and_grad(loss, has_aux=True)(params)
    if carry:
      outs += nnx.merge(graphdef, params)(tokens, outs[1], segment_ids=seg)
    return outs, grads

  outs, grads = jax.jit(run)(params)
  return outs, nnx.to_pure_dict(grads), nnx.to_pure_dict(params)


# The carried-state call only where it costs little to compile; Hope's blocks and the CMS
# next-token driver (its own scan over the stacked blocks inside each segment) once.
@pytest.mark.parametrize("name,overrides,carry", [
    ("transformer_pp", {}, False),
    ("titans", {}, True),
    ("hope_attention", {"cms.chunk_sizes": (4, 8)}, True),
    pytest.param("hope", _SMALL_HOPE, False, marks=pytest.mark.slow),
    ("hope_attention", {"cms.chunk_sizes": (8, 16), "cms.objective": "ntp"}, False),
])
def test_scanned_blocks_equal_unrolled_blocks(name, overrides, carry):
  n = 2  # different layers: a wrong order or a shared slice would show
  base = dict(n_layers=n, d_model=32, n_heads=2, head_dim=16, mlp_hidden=64, **overrides)
  b, t = 2, 16
  key = jax.random.key(3)
  tokens = jax.random.randint(key, (b, t), 0, 259, jnp.int32)
  seg = jnp.ones((b, t), jnp.int32).at[1, 8:].set(2)
  unrolled = _run(registry.model_config(name, "tiny", **base), tokens, seg, carry)
  scanned = _run(registry.model_config(name, "tiny", scan_layers=True, remat=True, **base),
                 tokens, seg, carry)
  (outs_u, grads_u, params_u), (outs_s, grads_s, params_s) = unrolled, scanned
  assert "blocks" not in params_s
  # The same initial values, stacked on a leading layer axis.
  stacked = _stack_blocks(params_u, n)
  for u, v in zip(jax.tree.leaves(stacked), jax.tree.leaves(params_s["scanned_blocks"]),
                  strict=True):
    assert v.shape[0] == n
    np.testing.assert_array_equal(u, v)
  np.testing.assert_array_equal(params_u["embed"]["embedding"], params_s["embed"]["embedding"])
  # Outputs, states (in the same block_<i> layout), aux keys and gradients.
  assert jax.tree.structure(outs_u) == jax.tree.structure(outs_s)
  for u, v in zip(jax.tree.leaves(outs_u), jax.tree.leaves(outs_s), strict=True):
    np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=2e-5,
                               atol=2e-5)
  grads_stacked = _stack_blocks(grads_u, n)
  for u, v in zip(jax.tree.leaves(grads_stacked), jax.tree.leaves(grads_s["scanned_blocks"]),
                  strict=True):
    np.testing.assert_allclose(v, u, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(u).max()))


def _program_lines(name, **overrides):
  """StableHLO lines of the gradient of a tiny model's mean logit (abstract parameters)."""
  cfg = registry.model_config(name, "tiny", **overrides)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: registry.build_model(
      cfg, rngs=nnx.Rngs(0))))
  tokens = jnp.zeros((1, 16), jnp.int32)

  def loss(params):
    return jnp.mean(nnx.merge(graphdef, params)(tokens)[0])

  return len(jax.jit(jax.grad(loss)).lower(params).as_text().splitlines())


def test_one_block_program_for_any_depth():
  """The scanned step's program does not grow with depth (the unrolled one does)."""
  def lines(scan, n):
    return _program_lines("transformer_pp", n_layers=n, scan_layers=scan)

  assert lines(True, 8) == lines(True, 2)
  assert lines(False, 8) > 2 * lines(False, 2)


def test_next_token_cms_driver_scans_the_blocks_too():
  """With scan_layers the CMS next-token driver runs a segment's blocks under one scan and
  vmaps their resets and steps: two more blocks add only their state entries and aux keys
  (~100 lines each), where the unrolled driver adds a whole block (~2,000 lines each)."""
  def lines(n, scan):
    return _program_lines("hope_attention", n_layers=n, scan_layers=scan,
                          cms=dict(chunk_sizes=(8, 16), objective="ntp"), d_model=32, n_heads=2,
                          head_dim=16, mlp_hidden=64)

  scanned = lines(4, True) - lines(2, True)
  unrolled = lines(4, False) - lines(2, False)
  assert scanned < 0.1 * unrolled, (scanned, unrolled)


def test_stacked_parameters_get_a_layers_axis_in_sharding_and_matrix_view():
  cfg = registry.model_config("hope", "tiny", n_layers=2, scan_layers=True, **_SMALL_HOPE)
  abstract = nnx.eval_shape(lambda: registry.build_model(cfg, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  flat_cfg = registry.model_config("hope", "tiny", n_layers=2, **_SMALL_HOPE)
  flat = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: registry.build_model(flat_cfg, rngs=nnx.Rngs(0))), nnx.Param))
  rules = config_lib.PARAM_RULES
  wq = partition.assign_one("scanned_blocks/smt/wq", params["scanned_blocks"]["smt"]["wq"].shape,
                            rules)
  wq0 = partition.assign_one("blocks/0/smt/wq", flat["blocks"][0]["smt"]["wq"].shape, rules)
  assert wq.logical == ("layers",) + wq0.logical
  assert wq.kind == wq0.kind == "projection"
  assert wq.matrix_shape == wq0.matrix_shape  # the layers axis is a batch axis
  # Every stacked parameter has the assignment of its layer-0 counterpart, one axis more.
  by_path = {a.path: a for a in jax.tree.leaves(partition.assign(params, rules),
                                                 is_leaf=partition.is_assignment)}
  by_path0 = {a.path: a for a in jax.tree.leaves(partition.assign(flat, rules),
                                                  is_leaf=partition.is_assignment)}
  stacked_paths = [p for p in by_path if p.startswith("scanned_blocks/")]
  assert stacked_paths
  for p in stacked_paths:
    a, a0 = by_path[p], by_path0[p.replace("scanned_blocks/", "blocks/0/")]
    assert (a.kind, a.matrix_shape, a.reason) == (a0.kind, a0.matrix_shape, a0.reason), p
    assert a.logical == (None if a0.logical is None else ("layers",) + a0.logical), p
  # Sharding: the unrolled spec with the (replicated) layers axis in front.
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices()[:8])
  sh_cfg = config_lib.default_config("hope").sharding
  sh = mesh_lib.param_shardings(params, mesh, sh_cfg)
  sh0 = mesh_lib.param_shardings(flat, mesh, sh_cfg)
  def full(spec, rank):  # P() and P(None, None) place an array alike
    return tuple(spec) + (None,) * (rank - len(spec))

  for (path, s), s0, x in zip(jax.tree_util.tree_leaves_with_path(sh["scanned_blocks"]),
                              jax.tree.leaves(sh0["blocks"][0]),
                              jax.tree.leaves(params["scanned_blocks"]), strict=True):
    assert full(s.spec, x.ndim) == (None,) + full(s0.spec, x.ndim - 1), path
  assert any(any(e is not None for e in s.spec) for s in jax.tree.leaves(sh["scanned_blocks"]))


def test_blocks_that_differ_cannot_be_stacked():
  from nl_jax.models import common  # pylint: disable=g-import-not-at-top
  from nl_jax.layers.mlp import SwiGLU  # pylint: disable=g-import-not-at-top

  rngs = nnx.Rngs(0)
  with pytest.raises(ValueError, match=r"scan_layers: block 1 differs in structure from block 0"):
    common.stack_modules([SwiGLU(8, 16, rngs=rngs), SwiGLU(8, 32, rngs=rngs)])
