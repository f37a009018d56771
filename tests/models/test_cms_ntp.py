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
"""CMS with the paper's next-token objective (cms.objective="ntp", nl_jax.models.cms_ntp).

The model's scan over segments is checked against a segment loop written here from eq. 71
(jax.grad of each segment's next-token loss, the step summed over the chunk), forward and
gradient w.r.t. every parameter, including the second-order path through the in-context
updates. The model-level comparison runs in float32: the models' RMSNorm and read-out compute
in float32 whatever the input dtype, so float64 inputs would not make it exact; the updates
are made large (lr 0.5) so a wrong step moves logits far beyond the float32 tolerance (the
test checks that too). The pure step rule is checked in float64.
"""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nl_jax.layers import cms as cms_lib
from nl_jax.layers.attention import Attention
from nl_jax.layers.cms import CMSConfig, SwiGLUWeights
from nl_jax.models import registry
from tests.models import helpers

_BASE = dict(vocab_size=32, d_model=16, n_layers=1, n_heads=2, head_dim=8, mlp_hidden=24,
             **{"cms.chunk_sizes": (4, 8), "cms.objective": "ntp",
                "cms.learning_rates": (0.5, 0.3)})


def _model(name, **overrides):
  extra = {"smt.chunk_size": 4, "smt.proj_chunk_size": 4} if name == "hope" else {}
  cfg = registry.model_config(name, "tiny", **{**_BASE, **extra, **overrides})
  return registry.build_model(cfg, rngs=nnx.Rngs(0))


def _tokens(b, t, seed=1):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, _BASE["vocab_size"], jnp.int32)


def _rms(x, scale, eps):
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _swiglu(w, x):
  g = jnp.einsum("bsd,bdf->bsf", x, w.w_gate)
  u = jnp.einsum("bsd,bdf->bsf", x, w.w_up)
  return jnp.einsum("bsf,bfd->bsd", jax.nn.silu(g) * u, w.w_down)


def _reference(model, tokens, segment_ids, targets, loss_mask, stop_inner=False):
  """Eq. 71 with the whole model's next-token loss, as a plain loop over segments.

  Fresh stream. Attention blocks re-run ``Attention.__call__`` on the prefix (earlier
  segments' inputs kept as they were computed), SMT blocks carry their state.
  cms.variant="nested" (eq. 72): level l < k - 1 also carries phi (its start) and macc (its
  gradients since level l + 1's last step); at a chunk end of level l + 1, phi takes level
  l + 1's step on macc and level l restarts from it. No retention here.
  Returns (logits [B, T, V], final fast weights per block, final accumulators per block,
  final phi per block).
  """
  cfg = model.config
  s, chunks, lrs = min(cfg.cms.chunk_sizes), cfg.cms.chunk_sizes, cfg.cms.learning_rates
  max_norm = cfg.cms_config().max_step_norm
  b, t = tokens.shape
  x_all = model.embed(tokens)
  prev = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), segment_ids[:, :-1]], axis=1)
  reset = segment_ids != prev
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  blocks = list(model.blocks)
  params = [blk.cms.params() for blk in blocks]
  bcast = lambda w: jax.tree.map(lambda a: jnp.broadcast_to(a, (b,) + a.shape), w)  # noqa: E731
  weights = [[bcast(w) for w in p.init] for p in params]
  acc = [[jax.tree.map(jnp.zeros_like, w) for w in ws] for ws in weights]
  n_meta = len(chunks) - 1 if cfg.cms.variant == "nested" else 0
  phi = [ws[:n_meta] for ws in weights]
  macc = [a[:n_meta] for a in acc]

  def clipped(lr, a):  # the step's learning rate, its norm clipped to max_step_norm per row
    norm = lr * jnp.sqrt(sum(jnp.sum(x * x, axis=(1, 2)) for x in a))
    clip = norm > max_norm
    return (lr * jnp.where(clip, max_norm / jnp.where(clip, norm, 1.0), 1.0))[:, None, None]
  smt = [blk.smt.init_memory(b) if hasattr(blk, "smt") else None for blk in blocks]
  hist = [[] for _ in blocks]
  out = []
  for start in range(0, t, s):
    end = min(start + s, t)
    sl = slice(start, end)
    flag = jnp.any(reset[:, sl], axis=1)
    def sel(new, old, flag=flag):
      return jnp.where(flag.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

    for i, p in enumerate(params):
      weights[i] = [jax.tree.map(sel, bcast(init), w)
                    for init, w in zip(p.init, weights[i], strict=True)]
      acc[i] = [jax.tree.map(lambda a: sel(jnp.zeros_like(a), a), a) for a in acc[i]]
      phi[i] = [jax.tree.map(sel, bcast(init), w) for init, w in zip(p.init, phi[i])]
      macc[i] = [jax.tree.map(lambda a: sel(jnp.zeros_like(a), a), a) for a in macc[i]]

    def seg_loss(ws, sl=sl, end=end, start=start, smt=smt):
      x = x_all[:, sl]
      new_smt, new_hist = [], []
      for i, blk in enumerate(blocks):
        if hasattr(blk, "smt"):
          y, st, _ = blk.smt(blk.smt_norm(x), smt[i], segment_ids[:, sl], reset[:, sl])
          new_smt.append(st)
        else:
          h = blk.attn_norm(x)
          prefix = jnp.concatenate(hist[i] + [h], axis=1)
          y = blk.attn(prefix, positions[:, :end], segment_ids[:, :end])[:, start:]
          new_smt.append(None)
          new_hist.append(h)
        x = x + y
        for lvl in range(len(chunks)):
          x = x + _swiglu(ws[i][lvl], _rms(x, params[i].norm[lvl], cfg.norm_eps))
      logits = model.head(x)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets[:, sl])
      return jnp.sum(ce * loss_mask[:, sl]), (logits, new_smt, new_hist)

    (_, (logits, new_smt, new_hist)), g = jax.value_and_grad(seg_loss, has_aux=True)(weights)
    if stop_inner:
      g = jax.lax.stop_gradient(g)
    out.append(logits)
    smt = new_smt
    for i in range(len(blocks)):
      if new_hist:
        hist[i].append(new_hist[i])
      for lvl, c in enumerate(chunks):
        a = jax.tree.map(jnp.add, acc[i][lvl], g[i][lvl])
        if end // c > start // c:  # the level's own step
          lr = clipped(lrs[lvl], a)
          weights[i][lvl] = jax.tree.map(lambda w, a, lr=lr: w - lr * a, weights[i][lvl], a)
          a = jax.tree.map(jnp.zeros_like, a)
        acc[i][lvl] = a
        if lvl < n_meta:
          macc[i][lvl] = jax.tree.map(jnp.add, macc[i][lvl], g[i][lvl])
          if end // chunks[lvl + 1] > start // chunks[lvl + 1]:  # end of level lvl's context
            lr = clipped(lrs[lvl + 1], macc[i][lvl])
            phi[i][lvl] = jax.tree.map(lambda p, a, lr=lr: p - lr * a, phi[i][lvl],
                                       macc[i][lvl])
            weights[i][lvl] = phi[i][lvl]
            macc[i][lvl] = jax.tree.map(jnp.zeros_like, macc[i][lvl])
  return jnp.concatenate(out, axis=1), weights, acc, phi


def _shifted(tokens):
  b, t = tokens.shape
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros((b, 1), jnp.int32)], axis=1)
  return targets, jnp.ones((b, t), jnp.float32).at[:, -1].set(0.0)


def _close(got, want, rtol, what):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert np.all(np.isfinite(got)) and np.all(np.isfinite(want)), f"{what}: not finite"
  scale = max(np.abs(want).max(), 1e-30)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------

def test_step_levels_sums_over_the_chunk_and_steps_at_boundaries():
  with jax.enable_x64(True):
    cfg = CMSConfig(d_model=3, hidden=2, chunk_sizes=(2, 4), learning_rates=(0.5, 0.0),
                    objective="ntp", max_step_norm=None)
    keys = iter(jax.random.split(jax.random.key(0), 32))
    rnd = lambda *s: jax.random.normal(next(keys), s, jnp.float64)  # noqa: E731
    w = lambda: SwiGLUWeights(rnd(2, 3, 2), rnd(2, 3, 2), rnd(2, 2, 3))  # noqa: E731
    init = (w(), w())
    st = cms_lib.CMSState((w(), w()), (w(), w()), jnp.zeros((2, 2, 3)), jnp.zeros((2,), bool),
                          jnp.array([0, 1], jnp.int32))
    grads = (w(), w())
    new, norms = cms_lib.step_levels(cfg, st, grads, 2, init)
    # row 0: [0, 2) ends a chunk of level 0 (C=2), not of level 1 (C=4); row 1: [1, 3)
    # contains the end of [0, 2) (misaligned call: steps at the segment's end).
    for f in range(3):
      a0 = st.acc[0][f] + grads[0][f]
      np.testing.assert_allclose(new.weights[0][f], st.weights[0][f] - 0.5 * a0, rtol=1e-14)
      np.testing.assert_array_equal(new.acc[0][f], 0.0)
      np.testing.assert_array_equal(new.weights[1][f], st.weights[1][f])  # lr 0 and no boundary
      np.testing.assert_allclose(new.acc[1][f], st.acc[1][f] + grads[1][f], rtol=1e-14)
    np.testing.assert_array_equal(new.position, [2, 3])
    assert norms.shape == (2, 2) and np.all(np.asarray(norms[:, 1]) == 0)
    # a segment inside a chunk only accumulates
    new2, _ = cms_lib.step_levels(cfg, st._replace(position=jnp.array([4, 4])), grads, 1, init)
    np.testing.assert_array_equal(new2.weights[0][0], st.weights[0][0])
    # with max_step_norm the step lr * acc is shrunk to that norm (per sequence)
    clipped = CMSConfig(d_model=3, hidden=2, chunk_sizes=(2, 4), learning_rates=(0.5, 0.0),
                        objective="ntp", max_step_norm=0.25)
    new3, norms3 = cms_lib.step_levels(clipped, st, grads, 2, init)
    for row in range(2):
      a0 = [st.acc[0][f][row] + grads[0][f][row] for f in range(3)]
      raw = 0.5 * np.sqrt(sum(float(jnp.sum(x * x)) for x in a0))
      assert raw > 0.25
      for f in range(3):
        np.testing.assert_allclose(new3.weights[0][f][row],
                                   st.weights[0][f][row] - 0.5 * (0.25 / raw) * a0[f],
                                   rtol=1e-12)
      np.testing.assert_allclose(norms3[row, 0], 0.25, rtol=1e-12)


def test_attend_with_buffer_equals_one_call():
  with jax.enable_x64(True):
    attn = Attention(16, 2, 8, sliding_window=5, block_size=None, dtype=jnp.float64,
                     param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    b, t, s = 2, 11, 4
    x = jax.random.normal(jax.random.key(1), (b, t, 16), jnp.float64)
    pos = jnp.broadcast_to(jnp.arange(t) + 3, (b, t))
    seg = jnp.array([[1] * 6 + [2] * 5, [1] * 11], jnp.int32)

    def run(x):
      kb = jnp.zeros((b, t, 2, 8), jnp.float64)
      vb = jnp.zeros_like(kb)
      ys = []
      for start in range(0, t, s):
        end = min(start + s, t)
        y, kb, vb = attn.attend_with_buffer(x[:, start:end], pos[:, start:end], start, kb, vb,
                                            seg)
        ys.append(y)
      return jnp.concatenate(ys, axis=1)

    one_call = lambda x: attn(x, pos, seg)  # noqa: E731
    want = jax.jit(one_call)(x)
    np.testing.assert_allclose(jax.jit(run)(x), want, rtol=1e-12, atol=1e-12)
    r = jax.random.normal(jax.random.key(2), want.shape, jnp.float64)
    g_got = jax.jit(jax.grad(lambda x: jnp.sum(run(x) * r)))(x)
    g_want = jax.jit(jax.grad(lambda x: jnp.sum(one_call(x) * r)))(x)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The model against the reference loop
# ---------------------------------------------------------------------------------------------

def _model_vs_reference(name, tokens, segment_ids, rtol, **overrides):
  model = _model(name, **overrides)
  targets, mask = _shifted(tokens)
  mask = mask * (segment_ids == jnp.concatenate([segment_ids[:, 1:], segment_ids[:, -1:]],
                                                axis=1))  # no target across documents
  graphdef, params = nnx.split(model)
  r = jax.random.normal(jax.random.key(7), tokens.shape + (model.config.vocab_size,))

  def run_model(params):
    m = nnx.merge(graphdef, params)
    logits, state, _ = m(tokens, segment_ids=segment_ids, targets=targets, loss_mask=mask)
    states = [st["cms"] for k, st in sorted(state.items()) if k.startswith("block_")]
    return logits, ([s.weights for s in states], [s.acc for s in states],
                    [list(s.meta_init) for s in states])

  def run_ref(params, stop_inner=False):
    logits, w, acc, phi = _reference(nnx.merge(graphdef, params), tokens, segment_ids, targets,
                                     mask, stop_inner)
    return logits, (w, acc, phi)

  def loss(f):  # outer loss on the logits; the fast weights ride along as aux
    def fn(p):
      logits, fast = f(p)
      return jnp.sum(logits * r), (logits, fast)
    return jax.jit(jax.value_and_grad(fn, has_aux=True))

  (_, (logits, (w, acc, phi))), g = loss(run_model)(params)
  (_, (ref_logits, (ref_w, ref_acc, ref_phi))), g_ref = loss(run_ref)(params)
  _close(logits, ref_logits, rtol, "logits")
  for i in range(len(w)):
    for lvl in range(len(w[i])):
      for f in range(3):
        _close(w[i][lvl][f], ref_w[i][lvl][f], rtol, f"block {i} level {lvl} weights")
        _close(acc[i][lvl][f], ref_acc[i][lvl][f], rtol, f"block {i} level {lvl} acc")
    assert len(phi[i]) == len(ref_phi[i])
    for lvl in range(len(phi[i])):
      for f in range(3):
        _close(phi[i][lvl][f], ref_phi[i][lvl][f], rtol, f"block {i} level {lvl} phi")
  # the in-context updates matter far beyond the tolerance
  init = model.blocks[0].cms.params().init[0].w_gate
  assert np.abs(np.asarray(w[0][0].w_gate) - np.asarray(init)).max() > 1e-2
  # a level with learning rate 0 keeps its initial weights (it still accumulates)
  for lvl, lr in enumerate(model.config.cms.learning_rates):
    if lr == 0.0:
      init = model.blocks[0].cms.params().init[lvl]
      for f in range(3):
        np.testing.assert_array_equal(w[0][lvl][f], jnp.broadcast_to(init[f], w[0][lvl][f].shape))
  flat, flat_ref = nnx.to_flat_state(g), dict(nnx.to_flat_state(g_ref))
  for path, v in flat:
    _close(v[...], flat_ref[path][...], 10 * rtol, f"gradient {path}")
  # the outer gradient reaches the initial CMS weights through the updates (second order):
  # dropping that path (stop_gradient on the inner gradients) changes it far beyond tolerance
  _, g_first = loss(lambda p: run_ref(p, stop_inner=True))(params)
  path = ("blocks", 0, "cms", "level_0_init", "w_gate")
  full = np.asarray(dict(flat)[path][...])
  first = np.asarray(dict(nnx.to_flat_state(g_first))[path][...])
  ratio = np.abs(full - first).max() / np.abs(full).max()
  assert ratio > 10 * 10 * rtol, f"second-order path changes the gradient by only {ratio:.3g}"


def test_hope_attention_matches_reference_with_remainder_reset_and_zero_lr():
  # T = 10 = 2 segments of 4 + 2; document 2 starts at 4 (a multiple of S); level 2 has lr 0.
  tokens = _tokens(2, 10)
  seg = jnp.array([[1] * 4 + [2] * 6, [1] * 10], jnp.int32)
  _model_vs_reference("hope_attention", tokens, seg, 2e-5, **{"cms.chunk_sizes": (4, 8, 8),
                      "cms.learning_rates": (0.5, 0.3, 0.0)})


def test_nested_hope_attention_matches_reference():
  """cms.variant="nested" with the next-token objective (eq. 72 over eq. 71): level 0's context
  ends at 8 and 16 (level 1's chunk ends), level 1's at 16; row 0 starts a document at 12.
  The parents move more slowly than their children (lr 0.5 > 0.3 > 0.2), so restarting from
  phi is not a no-op."""
  tokens = _tokens(2, 16)
  seg = jnp.array([[1] * 12 + [2] * 4, [1] * 16], jnp.int32)
  _model_vs_reference("hope_attention", tokens, seg, 2e-5, **{"cms.chunk_sizes": (4, 8, 16),
                      "cms.learning_rates": (0.5, 0.3, 0.2), "cms.variant": "nested"})


@pytest.mark.slow
def test_hope_attention_two_layers_matches_reference():
  tokens = _tokens(2, 14)
  seg = jnp.array([[1] * 8 + [2] * 6, [1] * 14], jnp.int32)
  _model_vs_reference("hope_attention", tokens, seg, 2e-5, n_layers=2)


@pytest.mark.slow
def test_hope_matches_reference():
  tokens = _tokens(2, 10)
  seg = jnp.array([[1] * 4 + [2] * 6, [1] * 10], jnp.int32)
  _model_vs_reference("hope", tokens, seg, 2e-5, n_layers=2)


# ---------------------------------------------------------------------------------------------
# Model properties
# ---------------------------------------------------------------------------------------------

def test_hope_ntp_streaming_and_causality():
  model = _model("hope")
  graphdef, params = nnx.split(model)

  @jax.jit
  def call(tokens, state, targets, mask):
    return nnx.merge(graphdef, params)(tokens, state, targets=targets, loss_mask=mask)

  # Streaming: one call == two calls of 4 tokens (level 1, C = 8, straddles the split), the
  # target of the first call's last token given.
  tokens = _tokens(1, 8)
  targets, mask = _shifted(tokens)
  logits, state, _ = call(tokens, model.init_memory(1), targets, mask)
  l1, s1, _ = call(tokens[:, :4], model.init_memory(1), targets[:, :4], mask[:, :4])
  l2, s2, _ = call(tokens[:, 4:], s1, targets[:, 4:], mask[:, 4:])
  _close(jnp.concatenate([l1, l2], axis=1), logits, 2e-5, "logits")
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(s2),
                          strict=True):
    _close(b, a, 2e-5, jax.tree_util.keystr(path))
  assert np.abs(np.asarray(s1["block_0"]["cms"].acc[1].w_up)).max() > 0  # level 1 straddles

  # Causality through the targets too (the next-token loss reads token t + 1): changing the
  # tokens after t (and so the targets) leaves the logits up to t exactly unchanged.
  base = np.asarray(logits)
  for t in (2, 3, 5):
    other = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % _BASE["vocab_size"])
    got = np.asarray(call(other, model.init_memory(1), *_shifted(other))[0])
    np.testing.assert_array_equal(got[:, :t + 1], base[:, :t + 1])
    assert np.abs(got[:, t + 1:] - base[:, t + 1:]).max() > 0


@pytest.mark.slow
def test_hope_ntp_causal_by_gradient():
  model = _model("hope")
  helpers.assert_causal(helpers.causal_gradients(model, _tokens(1, 10)))


@pytest.mark.slow
def test_hope_ntp_reset_at_document_start():
  # document 2 starts at 8 (a multiple of every chunk): packed, it behaves as on its own
  model = _model("hope")
  fwd = helpers.jitted_forward(model)
  tokens = _tokens(1, 16, seed=3)
  seg = jnp.array([[1] * 8 + [2] * 8], jnp.int32)
  packed, packed_state, _ = fwd(tokens, None, seg)
  alone, alone_state, _ = fwd(tokens[:, 8:], None, seg[:, 8:])
  _close(packed[:, 8:], alone, 2e-5, "document 2 logits")
  for lvl in range(2):
    for f in range(3):
      _close(packed_state["block_0"]["cms"].weights[lvl][f],
             alone_state["block_0"]["cms"].weights[lvl][f], 2e-5, f"level {lvl}")
  assert np.abs(np.asarray(packed[:, :8]) - np.asarray(alone)).max() > 1e-3


def test_hope_ntp_reset_off_the_segment_grid_is_causal():
  """A document starting inside a segment (position 6, segments of 4; under jit, where it
  cannot be refused) changes no logit before it; the levels restart after that segment.
  Before the fix the whole segment restarted from its start (a reset changed the past)."""
  fwd = helpers.jitted_forward(_model("hope"))
  tokens = _tokens(1, 16, seed=3)
  one_doc, _, _ = fwd(tokens, None, jnp.ones((1, 16), jnp.int32))
  two_docs, _, _ = fwd(tokens, None, jnp.array([[1] * 6 + [2] * 10], jnp.int32))
  np.testing.assert_array_equal(np.asarray(two_docs[:, :6]), np.asarray(one_doc[:, :6]))
  assert np.abs(np.asarray(two_docs[:, 8:]) - np.asarray(one_doc[:, 8:])).max() > 1e-3


def test_ntp_state_and_the_layer_refuses_to_run_alone():
  model = _model("hope_attention")
  state = model.init_memory(2)
  assert isinstance(state["block_0"]["cms"], cms_lib.CMSState)
  assert state["block_0"]["cms"].weights[0].w_gate.shape == (2, 16, 24)
  with pytest.raises(ValueError, match="objective='ntp'"):
    model.blocks[0].cms(jnp.zeros((2, 4, 16)), state["block_0"]["cms"], jnp.zeros((2, 4), bool))
  with pytest.raises(ValueError, match=r"cms: CMSConfig.objective='next_token'"):
    registry.model_config("hope", "tiny", **{"cms.objective": "next_token"})


def test_a_document_start_inside_a_segment_is_refused():
  # S = 4: a reset at position 6 would reset the whole segment [4, 8) (cms.reset_levels); the
  # model refuses it, with the memory layers' error, before any work is done.
  model = _model("hope_attention")
  tokens = _tokens(1, 8)
  seg = jnp.array([[1] * 6 + [2] * 2], jnp.int32)
  with pytest.raises(ValueError, match=r"global position 6\), which is not a multiple of "
                     r"min\(cms.chunk_sizes\)=4.*cms.objective='local'"):
    model(tokens, segment_ids=seg)
  model(tokens, segment_ids=jnp.array([[1] * 4 + [2] * 4], jnp.int32))  # on a boundary: runs
