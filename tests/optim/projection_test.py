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
"""The projection helper records layer inputs in the loss's own forward; DGD reads them."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax import optim
from nl_jax.layers import projection
from nl_jax.optim.dgd import InputStats


class _Net(nnx.Module):
  """wq [D, H, K] under nnx.remat, wo [H, K, D] under jax.checkpoint inside a scan."""

  def __init__(self, rngs):
    self.wq = nnx.Param(jax.random.normal(rngs.params(), (6, 2, 3), jnp.float64))
    self.wo = nnx.Param(jax.random.normal(rngs.params(), (2, 3, 6), jnp.float64))

  def __call__(self, x_BxTxD):
    h = nnx.remat(lambda m, z: jnp.tanh(projection.project("btd,dhk->bthk", z, m.wq)))(
        self, x_BxTxD)

    def body(carry, h_BxHxK):
      y = jax.checkpoint(lambda z: projection.project("bhk,hkd->bd", z, self.wo))(h_BxHxK)
      return carry + jnp.sum(y ** 2), None

    total, _ = jax.lax.scan(body, 0.0, jnp.moveaxis(h, 1, 0))
    return total, h


def _loss_and_stats(model, x, probes):
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params, probes):
    m = nnx.merge(graphdef, params)
    projection.tag_param_paths(m)
    with projection.recording(probes):
      total, _ = m(x)
    return total

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, probes), params


@jax.enable_x64(True)
def test_records_input_statistics_through_remat_and_scan():
  model = _Net(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, 5, 6), jnp.float64)
  probes = {"wq": projection.zero_stats(6), "wo": projection.zero_stats(6)}
  (value, (grads, stats)), params = _loss_and_stats(model, x, probes)
  _, h = model(x)
  x_rows = np.asarray(x).reshape(-1, 6)
  h_rows = np.asarray(h).reshape(-1, 6)
  # The statistics are float32 (what DGD consumes); the model runs in float64.
  np.testing.assert_allclose(stats["wq"].gram, x_rows.T @ x_rows, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["wq"].count, 20.0)
  np.testing.assert_allclose(stats["wo"].gram, h_rows.T @ h_rows, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["wo"].count, 20.0)  # 5 scan steps x 4 rows, summed
  # Recording changes nothing else: same value and parameter gradients as without it.
  graphdef, _ = nnx.split(model, nnx.Param)
  plain = jax.value_and_grad(lambda p: nnx.merge(graphdef, p)(x)[0])(params)
  np.testing.assert_allclose(value, plain[0], rtol=1e-12)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@jax.enable_x64(True)
def test_lists_recorded_weights_without_probes():
  model = _Net(nnx.Rngs(0))
  projection.tag_param_paths(model)
  with projection.recording() as seen:
    model(jnp.ones((2, 3, 6), jnp.float64))
  assert seen == {"wq": 6, "wo": 6}
  # Outside `recording` the helper is the plain einsum.
  x = jnp.ones((2, 3, 6), jnp.float64)
  np.testing.assert_array_equal(projection.project("btd,dhk->bthk", x, model.wq),
                                jnp.einsum("btd,dhk->bthk", x, model.wq[...]))


def test_project_rejects_non_trailing_contraction():
  with pytest.raises(ValueError, match="trailing axes"):
    projection.project("dbt,dhk->bthk", jnp.ones((6, 2, 3)), jnp.ones((6, 2, 3)))


def test_dgd_from_statistics_equals_dgd_from_rows_on_a_matrix_view():
  """DGD on wq [D, H, K] with (X^T X, N) == DGD on the 2-D kernel [D, H*K] with rows X."""
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(2), 3)
    w = jax.random.normal(keys[0], (6, 2, 3), jnp.float64)
    g = jax.random.normal(keys[1], (6, 2, 3), jnp.float64)
    x = jax.random.normal(keys[2], (40, 6), jnp.float64)
    dims = optim.DimensionNumbers(0, (1, 2))
    tx = optim.scale_by_dgd(0.3, weight_dimension_numbers={"w": dims})
    stats = InputStats(x.T @ x, jnp.asarray(40.0))
    d_stats, _ = tx.update({"w": g}, tx.init({"w": w}), {"w": w}, layer_inputs={"w": stats})
    tx2 = optim.scale_by_dgd(0.3, solve="direct")
    d_rows, _ = tx2.update({"w": g.reshape(6, 6)}, tx2.init(None), {"w": w.reshape(6, 6)},
                           layer_inputs={"w": x})
    np.testing.assert_allclose(d_stats["w"].reshape(6, 6), d_rows["w"], rtol=1e-10)
    # And it is eq. 57's preconditioned direction, not the gradient.
    assert float(jnp.abs(d_stats["w"] - g).max()) > 1e-2


def _gram_count(layer, x, *call_args):
  """Dot products in the recorded loss's gradient program minus those without recording."""
  projection.tag_param_paths(layer)
  graphdef, params = nnx.split(layer, nnx.Param)

  def count(record):
    def loss(params, probes, x):  # x differentiated too, so both programs have its cotangent
      m = nnx.merge(graphdef, params)
      with projection.recording(probes if record else {}):
        return jnp.sum(m(x, *call_args))

    with projection.recording() as seen:
      nnx.merge(graphdef, params)(x, *call_args)
    probes = {p: projection.zero_stats(n) for p, n in seen.items()}
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(params, probes, x)
    return str(jaxpr).count("dot_general")

  return count(True) - count(False)


def test_weights_sharing_an_input_share_one_gram_matrix():
  """wq/wk/wv and w_gate/w_up read the same input: one X^T X each group, not one per weight."""
  from nl_jax.layers.attention import Attention  # pylint: disable=import-outside-toplevel
  from nl_jax.layers.mlp import SwiGLU  # pylint: disable=import-outside-toplevel
  x = jnp.ones((2, 8, 16))
  attn = Attention(16, 2, 8, block_size=None, rngs=nnx.Rngs(0))
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  assert _gram_count(attn, x, pos, jnp.ones((2, 8), jnp.int32)) == 2  # {q, k, v} and o
  assert _gram_count(SwiGLU(16, 24, rngs=nnx.Rngs(0)), x) == 2  # {gate, up} and down
  # The shared record is the same statistics for every weight of the group.
  projection.tag_param_paths(attn)
  graphdef, params = nnx.split(attn, nnx.Param)
  probes = {k: projection.zero_stats(16) for k in ("wq", "wk", "wv")}

  def loss(params, probes):
    with projection.recording(probes):
      return jnp.sum(nnx.merge(graphdef, params)(x + 0.1 * jnp.arange(16), pos,
                                                  jnp.ones((2, 8), jnp.int32)))
  _, stats = jax.grad(loss, argnums=(0, 1))(params, probes)
  rows = np.asarray(x + 0.1 * jnp.arange(16)).reshape(-1, 16)
  for k in ("wq", "wk", "wv"):
    np.testing.assert_allclose(stats[k].gram, rows.T @ rows, rtol=1e-5)
    np.testing.assert_allclose(stats[k].count, 16.0)
