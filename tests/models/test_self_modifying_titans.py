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
"""SelfModifyingTitans: chunk-parallel == token-by-token reference (float64, forward and
gradient), per-sequence memory, resets, bad configs."""

import dataclasses

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.layers.self_modifying_titans import (
  SelfModifyingTitans,
  SelfModifyingTitansConfig,
  SMTInputs,
  init_memory_state,
  memory_scan,
)
from nl_jax.models import registry


def _setup(seed, b=2, t=11, dtype="float64", **opts):
  cfg = SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, param_dtype=dtype,
                                  dtype=dtype, **opts)
  layer = SelfModifyingTitans(cfg, rngs=nnx.Rngs(seed))
  params = layer.params()
  # Larger memory weights than at init, so every memory's state matters to the outputs.
  params = params._replace(proj_init=jax.tree.map(lambda w: 2.0 * w, params.proj_init),
                           gate_init=jax.tree.map(lambda w: 4.0 * w, params.gate_init),
                           out_init=jax.tree.map(lambda w: 3.0 * w, params.out_init))
  ks = jax.random.split(jax.random.key(seed + 100), 4)
  xk, xv, xq = (jax.random.normal(k, (b, 2, t, 4), dtype) for k in ks[:3])
  mu = (0.8 * jax.nn.sigmoid(jax.random.normal(ks[3], (b, 2, t), dtype))
        if cfg.momentum else None)
  return cfg, params, SMTInputs(xk, xv, xq, mu, jnp.zeros((b, t), bool))


def _compare(cfg, params, inp, state):
  def run(impl):
    def loss(params, xk, xv, xq):
      o, st, stats = memory_scan(cfg, params, state, inp._replace(xk=xk, xv=xv, xq=xq), impl)
      w = jnp.cos(jnp.arange(o.size, dtype=o.dtype)).reshape(o.shape)
      return jnp.sum(o * w) + 0.1 * stats["inner_loss_sum"], (o, st)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
        params, inp.xk, inp.xv, inp.xq)

  (l1, (o1, s1)), g1 = run("chunked")
  (l2, (o2, s2)), g2 = run("sequential")
  np.testing.assert_allclose(o1, o2, rtol=1e-10, atol=1e-10)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
  assert float(jnp.max(jnp.abs(o1))) > 0.1
  return o1


def test_chunked_equals_sequential_all_options_float64():
  """Momentum, adaptive q, paper_l2, post reads, two different chunk sizes, a stream that
  starts mid-chunk and a reset on a chunk start."""
  with jax.enable_x64(True):
    cfg, params, inp = _setup(0, momentum=True, adaptive_q=True, rule="paper_l2",
                              read_at="post", chunk_size=4, proj_chunk_size=2, eta_max=0.4)
    state = init_memory_state(cfg, params, 2)
    state = state._replace(position=jnp.array([3, 3], jnp.int32))  # mid-chunk start
    inp = inp._replace(reset=inp.reset.at[0, 5].set(True))  # global position 8
    _compare(cfg, params, inp, state)


def test_output_error_current_and_mean_all_chunked_equals_sequential_float64():
  """w1's delta-rule writes (no 1/C) and the erase divided by C, in closed form == the token
  loop, every memory."""
  with jax.enable_x64(True):
    cfg, params, inp = _setup(3, output_error="current", anchored_step="mean_all",
                              momentum=True, chunk_size=4, proj_chunk_size=2, eta_max=0.8)
    o = _compare(cfg, params, inp, init_memory_state(cfg, params, 2))
    base = dataclasses.replace(cfg, output_error="anchor", anchored_step="mean")
    o_anchor = memory_scan(base, params, init_memory_state(base, params, 2), inp, "chunked")[0]
    assert float(jnp.max(jnp.abs(o - o_anchor))) > 1e-3  # the option reaches the memories


@pytest.mark.parametrize("opts, against_tokens", [
    (dict(momentum=True, adaptive_q=True, rule="paper_l2", read_at="post", eta_max=0.4,
          chunk_size=4, proj_chunk_size=4), True),
    # 7 chunks grouped in 2s: one scan against two only (a grouped scan equals the flat one,
    # tests/memory/test_remat_scan.py), to keep the default suite short.
    (dict(targets="shared", output_error="current", chunk_size=2, proj_chunk_size=2,
          remat_group=2), False),
])
def test_one_scan_equals_two_scans_and_sequential_float64(opts, against_tokens):
  """Equal chunk sizes run the projection and output memories in one scan; forward, state,
  statistics and gradient equal the two scans' (and the token loop's), with a stream that
  starts mid-chunk, a reset on a chunk start and padded slots at both ends."""
  with jax.enable_x64(True):
    cfg, params, inp = _setup(4, **opts)
    state = init_memory_state(cfg, params, 2)
    state = state._replace(position=jnp.array([3, 3], jnp.int32))
    inp = inp._replace(reset=inp.reset.at[1, 1].set(True))  # global position 4
    if against_tokens:
      _compare(cfg, params, inp, state)

    def run(one_scan):
      c = dataclasses.replace(cfg, one_scan=one_scan)

      def loss(params, xk, xv):
        o, st, stats = memory_scan(c, params, state, inp._replace(xk=xk, xv=xv), "chunked")
        w = jnp.cos(jnp.arange(o.size, dtype=o.dtype)).reshape(o.shape)
        return jnp.sum(o * w) + 0.1 * stats["inner_loss_sum"], (o, st, stats)
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
          params, inp.xk, inp.xv)

    one, two = run(True), run(False)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("opts", [
    dict(),                                                      # dgd, pre reads
    dict(rule="gd", read_at="anchor", chunk_size=2, proj_chunk_size=4),
    dict(chunk_size=1, proj_chunk_size=1),                       # per-token recurrence
    dict(stop_target_grad=True, momentum=True, chunk_size=4, proj_chunk_size=4),
    dict(anchored_step="sum", value_norm="none", momentum=True, chunk_size=4,  # no 1/C
         proj_chunk_size=2),
    dict(output_error="current", adaptive_q=True, rule="gd", chunk_size=4, proj_chunk_size=4),
    dict(anchored_step="mean_all", rule="paper_l2", chunk_size=4, proj_chunk_size=2),
])
def test_chunked_equals_sequential_options_float64(opts):
  with jax.enable_x64(True):
    cfg, params, inp = _setup(1, **opts)
    _compare(cfg, params, inp, init_memory_state(cfg, params, 2))


@pytest.mark.slow
def test_per_sequence_memory_and_reset():
  """Changing sequence 1 leaves sequence 0 unchanged; after a reset on a chunk start the
  outputs equal those of a fresh state on the new document."""
  cfg, params, inp = _setup(2, b=2, t=12, dtype="float32", chunk_size=4, proj_chunk_size=4)
  state = init_memory_state(cfg, params, 2)
  fn = jax.jit(lambda inp: memory_scan(cfg, params, state, inp, "chunked")[0])
  o = fn(inp)
  changed = inp._replace(xk=inp.xk.at[1].add(1.0))
  o2 = fn(changed)
  np.testing.assert_array_equal(o[0], o2[0])
  assert float(jnp.max(jnp.abs(o[1] - o2[1]))) > 1e-3
  reset = inp.reset.at[:, 8].set(True)
  o3 = fn(inp._replace(reset=reset))
  # a fresh stream on tokens 8.. (their chunks are aligned the same way: 8 % 4 == 0)
  tail = jax.tree.map(lambda x: x[..., 8:, :] if x.ndim == 4 else x, inp)
  tail = tail._replace(reset=jnp.zeros((2, 4), bool))
  o4 = jax.jit(lambda inp: memory_scan(cfg, params, state, inp, "chunked")[0])(tail)
  np.testing.assert_allclose(o3[..., 8:, :], o4, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(o3[..., :8, :], o[..., :8, :])


def test_reset_off_the_chunk_grid_is_causal():
  """A document that starts inside a chunk (position 6, chunks of 4; under jit, where it cannot
  be refused) changes no output before it, and the memories start afresh at the next chunk.
  Before the fix the chunk's state was reset at the chunk's start, so tokens 4 and 5 read the
  initial memories: a reset changed outputs before it (padding after an MQAR example wiped the
  memory its last queries read)."""
  cfg, params, inp = _setup(3, b=2, t=12, dtype="float32", chunk_size=4, proj_chunk_size=4)
  state = init_memory_state(cfg, params, 2)
  fn = jax.jit(lambda inp: memory_scan(cfg, params, state, inp, "chunked")[0])
  o = fn(inp)
  o_mid = fn(inp._replace(reset=inp.reset.at[0, 6].set(True)))
  np.testing.assert_array_equal(o_mid[0, :, :6], o[0, :, :6])
  np.testing.assert_array_equal(o_mid[1], o[1])
  tail = jax.tree.map(lambda x: x[..., 8:, :] if x.ndim == 4 else x, inp)
  o_tail = fn(tail._replace(reset=jnp.zeros((2, 4), bool)))
  np.testing.assert_allclose(o_mid[0, :, 8:], o_tail[0], rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(o_mid[0, :, 8:] - o[0, :, 8:]))) > 1e-3


def _first_token_by_hand(cfg, params, inp):
  """The memories after one token, written from eqs. 79-85 directly (gd rule, chunk 1, one
  sequence): every memory takes alpha W - eta grad 0.5 ||M(k) - target||^2 at its initial
  weights, the target being v ("shared", eqs. 79-82) or the memory's own M(v) ("self")."""
  silu = jax.nn.silu
  l2 = lambda x: x / jnp.sqrt(jnp.sum(x * x) + 1e-6)  # noqa: E731

  def mem(w, x, residual=True):
    y = w.w1 @ silu(w.w2 @ x)
    return y + x if residual else y

  def pick(tree, *idx):
    return jax.tree.map(lambda z: z[idx], tree)

  def write(w, k, target, eta, alpha, residual=True):
    g = jax.grad(lambda w_: 0.5 * jnp.sum((mem(w_, k, residual) - target) ** 2))(w)
    return jax.tree.map(lambda a, b: alpha * a - eta * b, w, g)

  out = {"proj": [], "gates": [], "out": []}
  for h in range(cfg.n_heads):
    xk, xv = inp.xk[0, h, 0], inp.xv[0, h, 0]
    wk, wv = pick(params.proj_init, 0, h), pick(params.proj_init, 1, h)
    we, wa = pick(params.gate_init, 0, h), pick(params.gate_init, 1, h)
    wo = pick(params.out_init, h)
    k, v = l2(mem(wk, xk)), l2(mem(wv, xv))
    eta = cfg.eta_max * jax.nn.sigmoid(mem(we, xk, False)[0] + params.gate_bias[0, h])
    alpha = cfg.alpha_min + (1 - cfg.alpha_min) * jax.nn.sigmoid(
        mem(wa, xk, False)[0] + params.gate_bias[1, h])
    target = (lambda w: v) if cfg.targets == "shared" else (lambda w: mem(w, v))  # noqa: E731
    out["proj"].append([write(w, k, target(w), eta, alpha) for w in (wk, wv)])
    out["gates"].append([write(w, k, mem(w, v, False), eta, alpha, False) for w in (we, wa)])
    out["out"].append(write(wo, k, target(wo), eta, alpha))
  return out


@pytest.mark.parametrize("targets", ["shared", "self"])
def test_fully_adaptive_targets_match_eqs_79_to_82_by_hand(targets):
  """targets='shared' (the fully adaptive memory, eqs. 79-82) regresses every vector memory
  and the output memory onto v; 'self' onto the memory's own M(v) (eqs. 84-85). Both checked
  against a direct transcription, for the sequential reference and the chunked path."""
  with jax.enable_x64(True):
    cfg, params, inp = _setup(5, b=1, t=1, targets=targets, rule="gd", chunk_size=1,
                              proj_chunk_size=1)
    want = _first_token_by_hand(cfg, params, inp)
    for impl in ("sequential", "chunked"):
      scan = jax.jit(lambda p, i, impl=impl: memory_scan(  # noqa: E731
          cfg, p, init_memory_state(cfg, p, 1), i, impl)[1])
      st = scan(params, inp)
      for h in range(cfg.n_heads):
        for name, group in (("proj", st.proj), ("gates", st.gates)):
          for i in range(2):
            got = jax.tree.map(lambda z: z[0, i, h], group.memory)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want[name][h][i]),
                            strict=True):
              np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=(impl, name))
        got = jax.tree.map(lambda z: z[0, h], st.out.memory)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want["out"][h]), strict=True):
          np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=(impl, "out"))


@pytest.mark.slow
def test_fully_adaptive_chunked_equals_sequential_float64():
  with jax.enable_x64(True):
    cfg, params, inp = _setup(6, targets="shared", adaptive_q=True, momentum=True, chunk_size=4,
                              proj_chunk_size=2)
    state = init_memory_state(cfg, params, 2)
    o_shared = _compare(cfg, params, inp, state)
    o_self = memory_scan(dataclasses.replace(cfg, targets="self"), params, state, inp)[0]
    assert float(jnp.max(jnp.abs(o_shared - o_self))) > 1e-3


def test_bad_config_raises():
  with pytest.raises(ValueError, match="rule"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, rule="hebbian")
  with pytest.raises(ValueError, match="alpha_min"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, alpha_min=1.5)
  with pytest.raises(ValueError, match="proj_chunk_size"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, proj_chunk_size=0)
  with pytest.raises(ValueError, match="read_at"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, read_at="later")
  with pytest.raises(ValueError, match="static_projections"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, static_projections=("q",))
  with pytest.raises(ValueError, match="memory_hidden must be a positive int"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, memory_hidden=0)
  SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, memory_hidden=None)  # default
  with pytest.raises(ValueError, match="'k', 'v' or 'gates'"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, static_projections=("eta",))
  with pytest.raises(ValueError, match=r"anchored_step='max' is not one of "
                     r"\('mean', 'sum', 'mean_all'\)"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, anchored_step="max")
  with pytest.raises(ValueError, match=r"targets='given' is not one of \('self', 'shared'\)"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, targets="given")


def test_static_projections_chunked_equals_sequential_and_skip_memory():
  """Static k and v: chunked == sequential, and the k / v memories no longer matter."""
  with jax.enable_x64(True):
    cfg, params, inp = _setup(3, static_projections=("k", "v"), chunk_size=4,
                              proj_chunk_size=2)
    state = init_memory_state(cfg, params, 2)
    o = _compare(cfg, params, inp, state)
    # k_t = l2norm(xk_t), v_t = xv_t: scaling the k/v memories' initial weights changes nothing.
    scaled = params._replace(proj_init=jax.tree.map(lambda w: 3.0 * w, params.proj_init))
    o2, _, _ = memory_scan(cfg, scaled, init_memory_state(cfg, scaled, 2), inp, "chunked")
    np.testing.assert_allclose(o, o2, rtol=1e-12, atol=1e-12)
    dyn_cfg, _, _ = _setup(3, chunk_size=4, proj_chunk_size=2)
    o3, _, _ = memory_scan(dyn_cfg, params, state, inp, "chunked")
    assert float(jnp.max(jnp.abs(o3 - o))) > 1e-3


def test_static_gates_read_the_initial_gate_memories():
  """static_projections 'gates': chunked == sequential, and eta / alpha are the gate memories'
  initial weights applied to xk, whatever state the gate memories are in."""
  with jax.enable_x64(True):
    cfg, params, inp = _setup(4, static_projections=("gates",), chunk_size=4, proj_chunk_size=2)
    state = init_memory_state(cfg, params, 2)
    o = _compare(cfg, params, inp, state)
    moved = state._replace(gates=state.gates._replace(
        memory=jax.tree.map(lambda w: 5.0 * w, state.gates.memory),
        anchor=jax.tree.map(lambda w: 5.0 * w, state.gates.anchor)))
    _, _, stats = memory_scan(cfg, params, moved, inp, "chunked")
    _, _, stats0 = memory_scan(cfg, params, state, inp, "chunked")
    np.testing.assert_allclose(stats["eta"], stats0["eta"], rtol=1e-12)
    np.testing.assert_allclose(stats["alpha"], stats0["alpha"], rtol=1e-12)
    dyn_cfg, _, _ = _setup(4, chunk_size=4, proj_chunk_size=2)
    o2, _, _ = memory_scan(dyn_cfg, params, state, inp, "chunked")
    assert float(jnp.max(jnp.abs(o2 - o))) > 1e-6


def test_memory_init_scale_scales_the_vector_memories_w1_only():
  """memory_init_scale sets the initial w1 of k, v and out (not of the gate memories, whose
  initial gates stay at the biases) relative to the default 0.1; w2 is unchanged."""
  cfg = SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4)
  p0 = SelfModifyingTitans(cfg, rngs=nnx.Rngs(0)).params()
  p1 = SelfModifyingTitans(dataclasses.replace(cfg, memory_init_scale=1.0),
                           rngs=nnx.Rngs(0)).params()
  for a, b in ((p0.proj_init, p1.proj_init), (p0.out_init, p1.out_init)):
    np.testing.assert_allclose(b.w1, 10.0 * a.w1, rtol=1e-6)
    np.testing.assert_array_equal(b.w2, a.w2)
  np.testing.assert_array_equal(p1.gate_init.w1, p0.gate_init.w1)
  with pytest.raises(ValueError, match="memory_init_scale"):
    SelfModifyingTitansConfig(d_model=8, n_heads=2, head_dim=4, memory_init_scale=-1.0)


def test_hand_written_chunk_backward_equals_sequential_float64():
  """chunk_backward='manual' (nl_jax.memory.mlp_chunk) through every memory of the layer: a
  stream that starts mid-chunk, a reset on a chunk start, two chunk sizes; and the Hope field
  reaches it."""
  with jax.enable_x64(True):
    cfg, params, inp = _setup(5, chunk_backward="manual", chunk_size=4, proj_chunk_size=2,
                              eta_max=0.8)
    assert cfg.out_memory._manual_chunk and cfg.proj_memory._manual_chunk
    state = init_memory_state(cfg, params, 2)
    state = state._replace(position=jnp.array([1, 1], jnp.int32))
    inp = inp._replace(reset=inp.reset.at[1, 7].set(True))  # global position 8
    _compare(cfg, params, inp, state)
  hope = registry.model_config("hope", "tiny", smt=dict(chunk_backward="manual"))
  assert hope.smt_config().out_memory._manual_chunk
  with pytest.raises(ValueError, match="chunk_backward"):
    registry.model_config("hope", "tiny", smt=dict(chunk_backward="hand"))
