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
"""Matrix memory: chunk-parallel == sequential reference, identities, streaming, numerics."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.memory import RULES, SEMANTICS, MatrixMemory, MemoryInputs
from tests.memory.helpers import assert_trees_close, loss_and_grads, random_inputs, rel_err

D_K, D_V, B, T = 8, 6, 2, 67  # T = 67 is ragged for every chunk size below.


def _setup(dtype, seed, **cfg):
  mem = MatrixMemory(key_dim=D_K, value_dim=D_V, **cfg)
  params = mem.init_params(jax.random.PRNGKey(seed), head_shape=(), scale=1.0, dtype=dtype)
  inputs = random_inputs(jax.random.PRNGKey(seed + 1), (B,), T, D_K, D_V, dtype,
                         momentum=mem.momentum)
  return mem, params, inputs


def _check_chunked_against_sequential(rule, semantics, cases):
  """Forward and gradient of the closed-form chunks equal the token loop (float64)."""
  with jax.enable_x64(True):
    references = {}
    for c, momentum in cases:
      mem, params, inputs = _setup(jnp.float64, 0, rule=rule, semantics=semantics,
                                   momentum=momentum, chunk_size=c)
      _, o1, s1, g1 = loss_and_grads(mem, params, inputs, "chunked")
      # The exact recurrence does not depend on C; anchored semantics anchors every C tokens.
      ref_key = (momentum, c if semantics == "anchored" else None)
      if ref_key not in references:
        references[ref_key] = loss_and_grads(mem, params, inputs, "sequential")
      _, o2, s2, g2 = references[ref_key]
      what = f"{rule}/{semantics} C={c} momentum={momentum}"
      assert_trees_close(o1, o2, 1e-10, f"outputs {what}")
      assert_trees_close(s1, s2, 1e-10, f"state {what}")
      assert_trees_close(g1, g2, 1e-9, f"grads {what}")


# Three representative pairs run by default; the rest are slow (CI time), all are exercised by -m slow.
_DEFAULT_PAIRS = {("dgd", "exact"), ("paper_l2", "anchored"), ("hebbian", "exact")}


def _maybe_slow(*args, default):
  return pytest.param(*args, marks=() if default else pytest.mark.slow)


@pytest.mark.parametrize("rule,semantics", [
    _maybe_slow(r, s, default=(r, s) in _DEFAULT_PAIRS) for r, s in itertools.product(RULES, SEMANTICS)])
def test_chunked_equals_sequential_f64(rule, semantics):
  # C = 64 > T / 2 leaves a ragged, padded last chunk; C = 1 runs in the slow sweep below.
  _check_chunked_against_sequential(rule, semantics, [(4, True), (64, True), (16, False)])


@pytest.mark.slow
@pytest.mark.parametrize("rule,semantics,momentum",
                         list(itertools.product(RULES, SEMANTICS, (False, True))))
def test_chunked_equals_sequential_f64_every_chunk_size(rule, semantics, momentum):
  _check_chunked_against_sequential(rule, semantics, [(c, momentum) for c in (1, 4, 16, 64)])


_DEFAULT_OPTIONS = {("pre", "after", False, "exact"), ("post", "before", False, "anchored"),
                    ("anchor", "before", True, "anchored")}


@pytest.mark.parametrize("read_at,order,first_order,semantics", [
    _maybe_slow(*o, sem, default=(*o, sem) in _DEFAULT_OPTIONS) for o, sem in itertools.product(
        [("pre", "after", False), ("post", "before", False), ("anchor", "after", False),
         ("anchor", "before", True), ("post", "after", True), ("pre", "before", True)],
        SEMANTICS)])
def test_options_chunked_equals_sequential_f64(read_at, order, first_order, semantics):
  if read_at == "anchor" and semantics == "exact":
    pytest.skip("anchor reads exist only in anchored semantics")
  with jax.enable_x64(True):
    # Alternate the rule across cases (both erase rules get every option between them).
    for rule in (("dgd", "paper_l2")[(len(read_at) + len(order)) % 2],):
      mem, params, inputs = _setup(jnp.float64, 3, rule=rule, semantics=semantics, momentum=True,
                                   chunk_size=16, read_at=read_at, retention_order=order,
                                   first_order=first_order)
      _, o1, s1, g1 = loss_and_grads(mem, params, inputs, "chunked")
      _, o2, s2, g2 = loss_and_grads(mem, params, inputs, "sequential")
      assert_trees_close((o1, s1), (o2, s2), 1e-10, f"forward {rule}")
      assert_trees_close(g1, g2, 1e-9, f"grads {rule}")


@pytest.mark.parametrize("c", (pytest.param(16, marks=pytest.mark.slow), 64))
def test_chunked_equals_sequential_f32(c):
  mem, params, inputs = _setup(jnp.float32, 7, rule="dgd", semantics="exact", momentum=True,
                               chunk_size=c)
  _, o1, s1, g1 = loss_and_grads(mem, params, inputs, "chunked")
  _, o2, s2, g2 = loss_and_grads(mem, params, inputs, "sequential")
  assert_trees_close((o1, s1), (o2, s2), 2e-5, "forward f32")
  assert_trees_close(g1, g2, 1e-4, "grads f32")


def _delta_rule_reference(s0, k, v, q, beta, alpha):
  """Independent plain-jnp DeltaNet / Gated DeltaNet: S <- alpha S (I - b k k^T) + b v k^T."""
  def step(s, x):
    kt, vt, qt, bt, at = x
    s = at * s @ (jnp.eye(kt.shape[0]) - bt * jnp.outer(kt, kt)) + bt * jnp.outer(vt, kt)
    return s, s @ qt
  return jax.lax.scan(step, s0, (k, v, q, beta, alpha))


@pytest.mark.parametrize("implementation", ("chunked", "sequential"))
def test_dgd_is_delta_rule_and_gd_is_gated_delta_rule(implementation):
  with jax.enable_x64(True):
    _, params, inputs = _setup(jnp.float64, 11, chunk_size=16)
    k, v, q, eta, alpha = (x[0] for x in (inputs.keys, inputs.values, inputs.queries,
                                            inputs.eta, inputs.alpha))
    s0 = params.initial
    # dgd with alpha = 1 is DeltaNet with beta_t = eta_t / (1 + eta_t ||k_t||^2).
    mem = MatrixMemory(key_dim=D_K, value_dim=D_V, rule="dgd", chunk_size=16)
    ones = jnp.ones_like(eta)
    out, st = mem.scan(params, mem.init_state(params, ()),
                       MemoryInputs(k, v, eta, q, ones), implementation=implementation)
    beta = eta / (1.0 + eta * jnp.sum(k * k, -1))
    s_ref, out_ref = _delta_rule_reference(s0, k, v, q, beta, ones)
    assert rel_err(out, out_ref) < 1e-12 and rel_err(st.memory, s_ref) < 1e-12
    # gd with retention applied before the write is Gated DeltaNet with beta_t = eta_t.
    mem = MatrixMemory(key_dim=D_K, value_dim=D_V, rule="gd", retention_order="before",
                       chunk_size=16)
    out, st = mem.scan(params, mem.init_state(params, ()),
                       MemoryInputs(k, v, eta, q, alpha), implementation=implementation)
    s_ref, out_ref = _delta_rule_reference(s0, k, v, q, eta, alpha)
    assert rel_err(out, out_ref) < 1e-12 and rel_err(st.memory, s_ref) < 1e-12


@pytest.mark.parametrize("semantics,momentum,split", [
    _maybe_slow(sem, mom, split, default=(sem, mom, split) in {("exact", True, 40),
                                                               ("anchored", True, 5)})
    for (sem, mom), split in itertools.product(
        [("exact", True), ("anchored", True), ("anchored", False)], (5, 40))])
def test_streaming_split_equals_one_call(semantics, momentum, split):
  """x[:, :T1] then x[:, T1:] with the carried state == x at once (chunks straddle the split)."""
  with jax.enable_x64(True):
    mem, params, inputs = _setup(jnp.float64, 5, rule="paper_l2", semantics=semantics,
                                 momentum=momentum, chunk_size=16)
    state0 = mem.init_state(params, (B,))
    out, state = mem.scan(params, state0, inputs)
    first = jax.tree.map(lambda x: x[:, :split], inputs)
    second = jax.tree.map(lambda x: x[:, split:], inputs)
    out1, mid = mem.scan(params, state0, first)
    out2, end = mem.scan(params, mid, second)
    assert_trees_close(jnp.concatenate([out1, out2], axis=1), out, 1e-11, "outputs")
    assert_trees_close(end, state, 1e-11, "state")
    np.testing.assert_array_equal(end.position, np.full((B,), T))


def test_token_by_token_decode_equals_one_call():
  with jax.enable_x64(True):
    mem, params, inputs = _setup(jnp.float64, 8, rule="dgd", semantics="anchored",
                                 momentum=True, chunk_size=4, read_at="anchor")
    inputs = jax.tree.map(lambda x: x[:, :13], inputs)
    out, state = mem.scan(params, mem.init_state(params, (B,)), inputs)
    step = jax.jit(mem.scan)
    st, outs = mem.init_state(params, (B,)), []
    for t in range(13):
      o, st = step(params, st, jax.tree.map(lambda x, t=t: x[:, t:t + 1], inputs))
      outs.append(o)
    assert_trees_close(jnp.concatenate(outs, axis=1), out, 1e-11, "outputs")
    assert_trees_close(st, state, 1e-11, "state")


def test_anchored_with_chunk_one_equals_exact():
  with jax.enable_x64(True):
    for rule in RULES:
      exact, params, inputs = _setup(jnp.float64, 2, rule=rule, momentum=True, chunk_size=1)
      for read_at, exact_read in (("post", "post"), ("pre", "pre"), ("anchor", "pre")):
        anch = MatrixMemory(key_dim=D_K, value_dim=D_V, rule=rule, semantics="anchored",
                            momentum=True, chunk_size=1, read_at=read_at)
        ex = MatrixMemory(key_dim=D_K, value_dim=D_V, rule=rule, momentum=True, chunk_size=1,
                          read_at=exact_read)
        o1, s1 = anch.scan(params, anch.init_state(params, (B,)), inputs)
        o2, s2 = ex.scan(params, ex.init_state(params, (B,)), inputs)
        assert_trees_close((o1, s1.memory), (o2, s2.memory), 1e-12, f"{rule} {read_at}")


def test_sequences_never_share_memory():
  mem, params, inputs = _setup(jnp.float32, 4, momentum=True, chunk_size=16)
  out, _ = mem.scan(params, mem.init_state(params, (B,)), inputs)
  changed = inputs._replace(values=inputs.values.at[1].add(1.0), keys=inputs.keys.at[1].mul(-1))
  out2, _ = mem.scan(params, mem.init_state(params, (B,)), changed)
  np.testing.assert_array_equal(out[0], out2[0])
  assert not np.allclose(out[1], out2[1])
  # vmap over an extra batch axis == the batched call.
  per_seq = jax.vmap(lambda x: mem.scan(params, mem.init_state(params, ()), x)[0])(inputs)
  np.testing.assert_allclose(per_seq, out, rtol=1e-5, atol=1e-6)


def test_heads_as_batch_axes_and_per_head_initial_state():
  mem = MatrixMemory(key_dim=D_K, value_dim=D_V, chunk_size=8)
  params = mem.init_params(jax.random.PRNGKey(0), head_shape=(3,), scale=1.0)
  inputs = random_inputs(jax.random.PRNGKey(1), (B, 3), 20, D_K, D_V)
  state = mem.init_state(params, (B, 3))
  assert state.memory.shape == (B, 3, D_V, D_K)
  out, _ = mem.scan(params, state, inputs)
  for h in range(3):
    p_h = params._replace(initial=params.initial[h])
    x_h = jax.tree.map(lambda x, h=h: x[:, h], inputs)
    o_h, _ = mem.scan(p_h, mem.init_state(p_h, (B,)), x_h)
    np.testing.assert_allclose(out[:, h], o_h, rtol=1e-5, atol=1e-6)


def test_jit_and_no_jit_agree():
  mem, params, inputs = _setup(jnp.float32, 9, rule="paper_l2", semantics="anchored",
                               momentum=True, chunk_size=16)
  state = mem.init_state(params, (B,))
  o1, s1 = mem.scan(params, state, inputs)
  o2, s2 = jax.jit(mem.scan)(params, state, inputs)
  assert_trees_close((o1, s1.memory), (o2, s2.memory), 1e-6, "jit")


def test_bf16_inputs_keep_f32_state_and_track_f32():
  mem, params, inputs = _setup(jnp.float32, 10, momentum=True, chunk_size=16)
  state = mem.init_state(params, (B,))
  o32, s32 = mem.scan(params, state, inputs)
  x16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), inputs)
  o16, s16 = mem.scan(params, state, x16)
  assert s16.memory.dtype == jnp.float32 and s16.momentum.dtype == jnp.float32
  assert o16.dtype == jnp.bfloat16
  assert rel_err(o16, o32) < 3e-2 and rel_err(s16.memory, s32.memory) < 3e-2


def test_gradients_flow_through_writes_and_first_order_stops_them():
  for first_order in (False, True):
    mem, params, inputs = _setup(jnp.float32, 12, momentum=True, chunk_size=16,
                                 first_order=first_order)
    _, _, _, (gp, gi) = loss_and_grads(mem, params, inputs, "chunked")
    assert float(jnp.abs(gp.initial).sum()) > 0 and float(jnp.abs(gi.queries).sum()) > 0
    for name in ("keys", "values", "eta", "alpha", "momentum"):
      total = float(jnp.abs(getattr(gi, name)).sum())
      assert (total == 0.0) == first_order, (name, first_order, total)


def test_gates_near_zero_stay_finite():
  """alpha and mu at 0 (log = -inf) must not produce NaN values or gradients."""
  mem, params, inputs = _setup(jnp.float32, 13, momentum=True, chunk_size=16)
  inputs = inputs._replace(alpha=inputs.alpha.at[:, ::3].set(0.0),
                           momentum=inputs.momentum.at[:, ::2].set(0.0))
  _, o1, s1, g1 = loss_and_grads(mem, params, inputs, "chunked")
  _, o2, s2, g2 = loss_and_grads(mem, params, inputs, "sequential")
  for leaf in jax.tree.leaves((o1, s1, g1)):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  assert_trees_close((o1, s1.memory), (o2, s2.memory), 1e-5, "zero gates")


def test_long_sequence_decay_does_not_underflow_to_nan():
  """Retention near alpha_min over thousands of tokens: no exp of a global cumulative sum."""
  mem = MatrixMemory(key_dim=D_K, value_dim=D_V, chunk_size=64)
  params = mem.init_params(jax.random.PRNGKey(0), scale=1.0)
  inputs = random_inputs(jax.random.PRNGKey(1), (1,), 4096, D_K, D_V, alpha_range=(0.01, 0.02))
  out, state = mem.scan(params, mem.init_state(params, (1,)), inputs)
  assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(jnp.isfinite(state.memory)))


def test_bad_inputs_raise_clear_errors():
  mem, params, inputs = _setup(jnp.float32, 14, chunk_size=16)
  state = mem.init_state(params, (B,))
  with pytest.raises(ValueError, match=r"inputs.values has shape \(2, 67, 5\)"):
    mem.scan(params, state, inputs._replace(values=inputs.values[..., :5]))
  with pytest.raises(ValueError, match="inputs.eta has shape"):
    mem.scan(params, state, inputs._replace(eta=inputs.eta[:, :-1]))
  with pytest.raises(ValueError, match="batch axes"):
    mem.scan(params, mem.init_state(params, (3,)), inputs)
  with pytest.raises(ValueError, match="must be floating point"):
    mem.scan(params, state, inputs._replace(eta=jnp.ones((B, T), jnp.int32)))
  with pytest.raises(ValueError, match="momentum=True needs inputs.momentum"):
    m2 = MatrixMemory(key_dim=D_K, value_dim=D_V, momentum=True)
    m2.scan(params, m2.init_state(params, (B,)), inputs)
  with pytest.raises(ValueError, match="rule='nope'"):
    MatrixMemory(key_dim=D_K, value_dim=D_V, rule="nope")
  with pytest.raises(ValueError, match="read_at='anchor' needs semantics='anchored'"):
    MatrixMemory(key_dim=D_K, value_dim=D_V, read_at="anchor")
  with pytest.raises(ValueError, match="chunk_size must be a positive int"):
    MatrixMemory(key_dim=D_K, value_dim=D_V, chunk_size=0)
  with pytest.raises(ValueError, match="params.initial has shape"):
    mem.init_state(params._replace(initial=jnp.zeros((D_K, D_V))), (B,))
  with pytest.raises(ValueError, match="queries have shape"):
    mem.read(params, state, inputs.queries[..., :3])


def test_read_and_update_compose_to_scan():
  mem, params, inputs = _setup(jnp.float32, 15, chunk_size=16)
  state = mem.init_state(params, (B,))
  _, after = mem.scan(params, state, inputs)
  updated = mem.update(params, state, inputs)
  assert_trees_close(updated, after, 1e-6, "update")
  np.testing.assert_allclose(mem.read(params, updated, inputs.queries),
                             jnp.einsum("bvk,btk->btv", after.memory, inputs.queries),
                             rtol=1e-5, atol=1e-6)
