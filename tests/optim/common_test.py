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
"""Shared battery run on every optimizer alias of nl_jax.optim (cf. optax contrib/_common_test.py).

For each alias: jitted init/update, finite state, update shapes/dtypes, convergence on a toy
quadratic and on a small MLP regression, `optax.inject_hyperparams`, abstract (`ShapeDtypeStruct`)
init, and state sharding preserved by a jitted update on an 8-device CPU mesh.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.optim import _helpers as h

P = jax.sharding.PartitionSpec


@pytest.fixture(params=h.SPECS, ids=h.SPEC_IDS)
def spec(request):
  return request.param


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


def test_jit_init_update_shapes_dtypes_finite(spec):
  params, loss, inputs_fn = h.mlp_problem()
  params = {k: v.astype(jnp.bfloat16) if k == "b1" else v for k, v in params.items()}
  tx = spec.make()
  state = jax.jit(tx.init)(params)
  grads = jax.jit(jax.grad(lambda p: loss(jax.tree.map(lambda x: x.astype(jnp.float32), p))))(
      params)
  upd = jax.jit(lambda g, s, p: h.update(spec, tx, g, s, p, inputs_fn(
      jax.tree.map(lambda x: x.astype(jnp.float32), p))))
  for _ in range(4):  # Crosses the M3 slow-memory refresh (f=3).
    updates, state = upd(grads, state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
    assert u.shape == p.shape and u.dtype == p.dtype
  assert _finite(state) and _finite(updates)


def test_converges_on_quadratic(spec):
  params, loss, inputs_fn = h.quadratic_problem()
  tx = spec.make(optax.cosine_decay_schedule(spec.lr, 150))
  l0, l1, _, state = h.train(spec, tx, params, loss, inputs_fn, 150)
  assert _finite(state)
  assert l1 < 0.3 * l0, (l0, l1)


def test_mlp_regression_loss_falls(spec):
  params, loss, inputs_fn = h.mlp_problem()
  l0, l1, _, _ = h.train(spec, spec.make(), params, loss, inputs_fn, 150)
  assert l1 < 0.3 * l0, (l0, l1)


def test_inject_hyperparams(spec):
  params, loss, inputs_fn = h.mlp_problem()
  tx = spec.make_injected()
  state = jax.jit(tx.init)(params)
  assert np.isclose(state.hyperparams["learning_rate"], spec.lr)
  grads = jax.jit(jax.grad(loss))(params)
  upd = jax.jit(lambda g, s, p: h.update(spec, tx, g, s, p, inputs_fn(p)))
  updates, new_state = upd(grads, state, params)
  plain = spec.make()
  ref, _ = jax.jit(lambda g, s, p: h.update(spec, plain, g, s, p, inputs_fn(p)))(
      grads, jax.jit(plain.init)(params), params)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # A zero learning rate injected into the state must silence every update (or, where the
  # rate is an inner step, leave only the retained memory: the update of a zero gradient).
  new_state.hyperparams["learning_rate"] = jnp.zeros_like(new_state.hyperparams["learning_rate"])
  updates, _ = upd(grads, new_state, params)
  if spec.zero_lr_silences:
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
  else:
    zero = jax.tree.map(jnp.zeros_like, grads)
    retained, _ = upd(zero, new_state, params)
    assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(retained))
    assert _finite(updates)


def test_abstract_init(spec):
  params, _, _ = h.mlp_problem()
  tx = spec.make()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  state = tx.init(abstract)
  concrete = jax.jit(tx.init)(params)
  assert jax.tree.structure(state) == jax.tree.structure(concrete)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(concrete), strict=True):
    assert a.shape == b.shape and a.dtype == b.dtype
  shapes = jax.eval_shape(tx.init, abstract)
  for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(concrete), strict=True):
    assert a.shape == b.shape and a.dtype == b.dtype


@pytest.mark.parametrize("axis_type", ["explicit", pytest.param("auto", marks=pytest.mark.slow)])
def test_state_sharding_preserved(spec, axis_type):
  """State leaf shardings after a jitted update equal those after init (8 CPU devices).

  Explicit mode: init is jitted too (sharding types propagate through `zeros_like`). Auto mode:
  init runs eagerly, where `zeros_like` of a committed array keeps its sharding; under jit the
  output sharding of an input-independent constant is XLA's choice, so users pass out_shardings.
  """
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (simulated) devices")
  if axis_type == "auto" and spec.auto_sharding_skip:
    pytest.skip(spec.auto_sharding_skip)
  kind = jax.sharding.AxisType.Explicit if axis_type == "explicit" else jax.sharding.AxisType.Auto
  mesh = jax.make_mesh((8,), ("x",), axis_types=(kind,))
  def named(spec_):
    return jax.sharding.NamedSharding(mesh, spec_)
  shapes = {"w1": (16, 64), "b1": (64,), "w2": (64, 32), "b2": (32,)}
  shard = {"w1": P(None, "x"), "b1": P("x"), "w2": P("x", None), "b2": P()}
  keys = dict(zip(shapes, jax.random.split(jax.random.key(0), 4), strict=True))
  params = {k: jax.device_put(jax.random.normal(keys[k], v) * 0.1, named(shard[k]))
            for k, v in shapes.items()}
  grads = {k: jax.device_put(jax.random.normal(jax.random.fold_in(keys[k], 1), v), named(shard[k]))
           for k, v in shapes.items()}
  inputs = {"w1": jax.device_put(jnp.ones((24, 16)), named(P())), "b1": None,
            "w2": jax.device_put(jnp.ones((24, 64)), named(P())), "b2": None}
  tx = spec.make()
  with jax.set_mesh(mesh):
    state = jax.jit(tx.init)(params) if axis_type == "explicit" else tx.init(params)
    before = [x.sharding for x in jax.tree.leaves(state)]
    upd = jax.jit(lambda g, s, p: h.update(spec, tx, g, s, p, inputs))
    for _ in range(4):  # Crosses the M3 slow-memory refresh (f=3).
      updates, state = upd(grads, state, params)
  after = [x.sharding for x in jax.tree.leaves(state)]
  for leaf, b, a in zip(jax.tree.leaves(state), before, after, strict=True):
    assert b.is_equivalent_to(a, leaf.ndim), (b, a)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
    assert u.shape == p.shape
  assert _finite(updates)
