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
"""MLP memory: anchored chunks == anchored token loop, C = 1 == exact, streaming, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.memory import MemoryInputs, MLPMemory
from tests.memory.helpers import assert_trees_close, loss_and_grads, random_inputs

D, H, B, T = 6, 10, 2, 45


def _setup(dtype, seed, **cfg):
  mem = MLPMemory(in_dim=D, hidden_dim=H, **cfg)
  params = mem.init_params(jax.random.PRNGKey(seed), dtype=dtype)
  inputs = random_inputs(jax.random.PRNGKey(seed + 1), (B,), T, D, D, dtype,
                         momentum=mem.momentum, eta_range=(0.05, 0.5))
  return mem, params, inputs


def _check_anchored_chunked_against_sequential(rule, cases, **cfg):
  with jax.enable_x64(True):
    for c, momentum, read_at in cases:
      mem, params, inputs = _setup(jnp.float64, c, rule=rule, semantics="anchored",
                                   momentum=momentum, chunk_size=c, read_at=read_at, **cfg)
      _, o1, s1, g1 = loss_and_grads(mem, params, inputs, "chunked")
      _, o2, s2, g2 = loss_and_grads(mem, params, inputs, "sequential")
      what = f"{rule} C={c} momentum={momentum} read_at={read_at}"
      assert_trees_close((o1, s1), (o2, s2), 1e-10, f"forward {what}")
      assert_trees_close(g1, g2, 1e-9, f"grads {what}")


@pytest.mark.parametrize("rule", ("dgd", pytest.param("paper_l2", marks=pytest.mark.slow),
                                  pytest.param("gd", marks=pytest.mark.slow)))
def test_anchored_chunked_equals_sequential_f64(rule):
  _check_anchored_chunked_against_sequential(
      rule, [(4, True, "pre"), (64, True, "post"), (16, False, "anchor")])


@pytest.mark.slow
@pytest.mark.parametrize("rule,momentum", list(itertools.product(
    ("dgd", "paper_l2", "gd"), (False, True))))
def test_anchored_chunked_equals_sequential_f64_every_chunk_size(rule, momentum):
  _check_anchored_chunked_against_sequential(
      rule, [(c, momentum, r) for c in (1, 4, 16, 64) for r in ("post", "pre", "anchor")])


@pytest.mark.parametrize("rule", ("dgd", pytest.param("gd", marks=pytest.mark.slow)))
def test_output_error_current_chunked_equals_sequential_f64(rule):
  """w1's delta-rule step (error at its current value) in closed form == the token loop."""
  _check_anchored_chunked_against_sequential(
      rule, [(4, True, "pre"), (16, False, "post"), (8, True, "anchor")],
      output_error="current")


def test_mean_all_chunked_equals_sequential_f64():
  _check_anchored_chunked_against_sequential(
      "dgd", [(4, True, "pre"), (16, False, "post")], anchored_step="mean_all")


def test_mean_all_keeps_the_input_side_weight_on_repeated_tokens():
  """C copies of one key: 'mean' erases w2 k C times (factor (1 - c)^C) but writes it once, so
  the hidden features vanish; 'mean_all' erases it as one step (about e^-c)."""
  c = 16
  with jax.enable_x64(True):
    x = random_inputs(jax.random.PRNGKey(7), (), 1, D, D, jnp.float64, alpha_range=(1.0, 1.0))
    rep = jax.tree.map(lambda a: jnp.repeat(a, c, axis=0), x)
    rep = rep._replace(eta=jnp.full((c,), 2.0))
    k = rep.keys[0]
    kept = {}
    for step in ("mean", "mean_all"):
      mem = MLPMemory(in_dim=D, hidden_dim=H, rule="dgd", semantics="anchored", chunk_size=c,
                      anchored_step=step)
      params = mem.init_params(jax.random.PRNGKey(3), dtype=jnp.float64)
      for impl in ("chunked", "sequential"):
        _, st = mem.scan(params, mem.init_state(params, ()), rep, implementation=impl)
        kept[step, impl] = float(jnp.linalg.norm(st.memory.w2 @ k)
                                 / jnp.linalg.norm(params.initial.w2 @ k))
      np.testing.assert_allclose(kept[step, "chunked"], kept[step, "sequential"], rtol=1e-9)
    assert kept["mean", "chunked"] < 0.05, kept
    assert kept["mean_all", "chunked"] > 0.3, kept


def test_output_error_current_contracts_on_repeated_tokens():
  """C copies of one token: w1's delta steps converge on the target; anchored 'sum' adds C
  copies of the anchor's step and overshoots; 'mean' barely moves (1/C)."""
  c = 64
  with jax.enable_x64(True):
    x = random_inputs(jax.random.PRNGKey(7), (), 1, D, D, jnp.float64, alpha_range=(1.0, 1.0))
    rep = jax.tree.map(lambda a: jnp.repeat(a, c, axis=0), x)
    rep = rep._replace(eta=jnp.full((c,), 0.5))
    err = {}
    for name, cfg in (("current", dict(output_error="current")),
                      ("sum", dict(anchored_step="sum")), ("mean", {})):
      # gd: no erase of w2 k (dgd's would shrink h itself over C repeats), so w1 is isolated.
      mem = MLPMemory(in_dim=D, hidden_dim=H, rule="gd", semantics="anchored", chunk_size=c,
                      **cfg)
      params = mem.init_params(jax.random.PRNGKey(3), dtype=jnp.float64)
      for impl in ("chunked", "sequential"):
        _, st = mem.scan(params, mem.init_state(params, ()), rep, implementation=impl)
        y = mem._apply(st.memory, rep.keys[:1])[0]  # noqa: SLF001
        err[name, impl] = float(jnp.linalg.norm(y - rep.values[0]))
      np.testing.assert_allclose(err[name, "chunked"], err[name, "sequential"], rtol=1e-9)
    y0 = mem._apply(params.initial, rep.keys[:1])[0]  # noqa: SLF001
    before = float(jnp.linalg.norm(y0 - rep.values[0]))
    assert err["current", "chunked"] < 0.5 * before, (err, before)
    assert err["sum", "chunked"] > before, (err, before)
    assert err["mean", "chunked"] > 0.5 * before, (err, before)


@pytest.mark.parametrize("activation,residual", [
    ("gelu", True), pytest.param("tanh", False, marks=pytest.mark.slow)])
def test_first_order_activation_and_no_residual(activation, residual):
  with jax.enable_x64(True):
    mem = MLPMemory(in_dim=D, hidden_dim=H, out_dim=None if residual else 4, activation=activation,
                    residual=residual, semantics="anchored", chunk_size=8, momentum=True,
                    first_order=True)
    params = mem.init_params(jax.random.PRNGKey(0), dtype=jnp.float64)
    inputs = random_inputs(jax.random.PRNGKey(1), (B,), T, D, mem.d_out, jnp.float64,
                           momentum=True, eta_range=(0.05, 0.5))
    _, o1, s1, g1 = loss_and_grads(mem, params, inputs, "chunked")
    _, o2, s2, g2 = loss_and_grads(mem, params, inputs, "sequential")
    assert_trees_close((o1, s1), (o2, s2), 1e-10, "forward")
    assert_trees_close(g1, g2, 1e-9, "grads")
    assert float(jnp.abs(g1[1].keys).sum()) == 0.0 and float(jnp.abs(g1[1].queries).sum()) > 0


def test_inner_gradient_matches_autodiff_of_the_inner_loss():
  """One token from the initial state: the update is W - step * grad(0.5||M(k)-v||^2).

  gd: step eta (anchored_step='sum') or eta / C (the default 'mean'); dgd: the input-side
  weight gets the rank-1 erase and step c = eta / (1 + eta ||k||^2), the output-side weight
  step c1 = eta / (1 + eta ||h||^2) with h = silu(w2 k), both divided by C.
  """
  c = 4
  with jax.enable_x64(True):
    x = random_inputs(jax.random.PRNGKey(4), (), 1, D, D, jnp.float64, alpha_range=(1.0, 1.0))
    k, eta = x.keys[0], x.eta[0]

    def inner(w):
      h = jax.nn.silu(w.w2 @ k)
      return 0.5 * jnp.sum((k + w.w1 @ h - x.values[0]) ** 2)

    for rule, step_mode in (("gd", "sum"), ("gd", "mean"), ("dgd", "mean")):
      mem = MLPMemory(in_dim=D, hidden_dim=H, rule=rule, semantics="anchored", chunk_size=c,
                      anchored_step=step_mode)
      params = mem.init_params(jax.random.PRNGKey(3), dtype=jnp.float64)
      _, state = mem.scan(params, mem.init_state(params, ()), x, implementation="chunked")
      w0 = params.initial
      g = jax.grad(inner)(w0)
      scale = 1.0 if step_mode == "sum" else 1.0 / c
      if rule == "gd":
        want = jax.tree.map(lambda w, gv, s=scale: w - s * eta * gv, w0, g)
      else:
        h = jax.nn.silu(w0.w2 @ k)
        c2 = eta / (1 + eta * k @ k)
        c1 = eta / (1 + eta * h @ h)
        want = type(w0)(w1=w0.w1 - scale * c1 * g.w1,
                        w2=w0.w2 - c2 * jnp.outer(w0.w2 @ k, k) - scale * c2 * g.w2)
      assert_trees_close(state.memory, want, 1e-12, f"one step {rule}/{step_mode}")


def test_anchored_with_chunk_one_equals_exact():
  with jax.enable_x64(True):
    for rule in ("dgd", "paper_l2", "gd"):
      ex, params, inputs = _setup(jnp.float64, 2, rule=rule, momentum=True, chunk_size=1)
      anch = MLPMemory(in_dim=D, hidden_dim=H, rule=rule, semantics="anchored", momentum=True,
                       chunk_size=1)
      o1, s1 = anch.scan(params, anch.init_state(params, (B,)), inputs)
      o2, s2 = ex.scan(params, ex.init_state(params, (B,)), inputs)
      assert_trees_close((o1, s1.memory), (o2, s2.memory), 1e-12, rule)


@pytest.mark.parametrize("semantics", ("exact", "anchored"))
def test_streaming_split_equals_one_call(semantics):
  with jax.enable_x64(True):
    mem, params, inputs = _setup(jnp.float64, 6, semantics=semantics, momentum=True,
                                 chunk_size=8)
    state0 = mem.init_state(params, (B,))
    out, state = mem.scan(params, state0, inputs)
    for split in (3, 8, 21):
      out1, mid = mem.scan(params, state0, jax.tree.map(lambda x, s=split: x[:, :s], inputs))
      out2, end = mem.scan(params, mid, jax.tree.map(lambda x, s=split: x[:, s:], inputs))
      assert_trees_close(jnp.concatenate([out1, out2], 1), out, 1e-11, f"outputs {split}")
      assert_trees_close(end, state, 1e-11, f"state {split}")


def test_sequences_never_share_memory_and_state_is_f32():
  mem, params, inputs = _setup(jnp.float32, 7, semantics="anchored", chunk_size=8)
  out, st = mem.scan(params, mem.init_state(params, (B,)), inputs)
  changed = inputs._replace(values=inputs.values.at[1].add(1.0))
  out2, _ = mem.scan(params, mem.init_state(params, (B,)), changed)
  np.testing.assert_array_equal(out[0], out2[0])
  assert not np.allclose(out[1], out2[1])
  x16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), inputs)
  o16, s16 = mem.scan(params, mem.init_state(params, (B,)), x16)
  assert s16.memory.w1.dtype == jnp.float32 and o16.dtype == jnp.bfloat16
  assert float(jnp.linalg.norm(o16.astype(jnp.float32) - out) / jnp.linalg.norm(out)) < 3e-2


def test_bad_configs_and_inputs_raise():
  with pytest.raises(ValueError, match="hebbian"):
    MLPMemory(in_dim=D, hidden_dim=H, rule="hebbian")
  with pytest.raises(ValueError, match="residual=True needs out_dim == in_dim"):
    MLPMemory(in_dim=D, hidden_dim=H, out_dim=3)
  with pytest.raises(ValueError, match="activation='swish'"):
    MLPMemory(in_dim=D, hidden_dim=H, activation="swish")
  with pytest.raises(ValueError, match="output_error='last' is not one of"):
    MLPMemory(in_dim=D, hidden_dim=H, semantics="anchored", output_error="last")
  with pytest.raises(ValueError, match="output_error='current' is for semantics='anchored'"):
    MLPMemory(in_dim=D, hidden_dim=H, output_error="current")
  mem, params, inputs = _setup(jnp.float32, 8, chunk_size=8)
  with pytest.raises(ValueError, match="no chunk-parallel form"):
    mem.scan(params, mem.init_state(params, (B,)), inputs, implementation="chunked")
  with pytest.raises(ValueError, match="inputs.keys has shape"):
    bad = inputs._replace(keys=inputs.keys[..., :4], queries=None)
    mem.scan(params, mem.init_state(params, (B,)), bad)
  with pytest.raises(TypeError, match="MemoryInputs"):
    mem.scan(params, mem.init_state(params, (B,)), tuple(inputs))
  assert isinstance(inputs, MemoryInputs)
