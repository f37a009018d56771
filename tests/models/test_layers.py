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
"""Baseline layers against plain references: RMSNorm, SwiGLU, attention masking, RoPE, conv."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.layers import attention, conv, mlp, norms


def test_rms_norm_matches_formula_and_keeps_dtype():
  x = jax.random.normal(jax.random.key(0), (2, 3, 8), jnp.bfloat16)
  layer = norms.RMSNorm(8)
  layer.scale[...] = jnp.arange(1.0, 9.0)
  y = nnx.jit(lambda m, x: m(x))(layer, x)
  assert y.dtype == jnp.bfloat16
  x64 = np.asarray(x, np.float64)
  want = x64 / np.sqrt(np.mean(x64**2, -1, keepdims=True) + 1e-6) * np.arange(1.0, 9.0)
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-2, atol=1e-2)


def test_swiglu_matches_formula():
  layer = mlp.SwiGLU(6, 10, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 6))
  g, u, d = layer.w_gate[...], layer.w_up[...], layer.w_down[...]
  want = (jax.nn.silu(x @ g) * (x @ u)) @ d
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, x), want, rtol=1e-5, atol=1e-5)


def _reference_attention(q, k, v, seg, window):
  """Token-by-token float64 softmax attention with the documented mask (numpy)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  seg = np.asarray(seg)
  b, t, h, d = q.shape
  out = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      for i in range(t):
        js = [j for j in range(i + 1)
              if seg[bi, j] == seg[bi, i] and (window is None or i - j < window)]
        s = np.array([q[bi, i, hi] @ k[bi, j, hi] for j in js]) / np.sqrt(d)
        p = np.exp(s - s.max())
        p /= p.sum()
        out[bi, i, hi] = sum(pj * v[bi, j, hi] for pj, j in zip(p, js, strict=True))
  return out


@pytest.mark.parametrize("window", [pytest.param(None, marks=pytest.mark.slow), 3])
def test_attention_matches_masked_reference_blocked_and_unblocked(window):
  ks = jax.random.split(jax.random.key(2), 3)
  b, t, h, d = 2, 11, 2, 4
  q, k, v = (jax.random.normal(kk, (b, t, h, d)) for kk in ks)
  seg = jnp.array([[1] * 5 + [2] * 6, [0] * 2 + [3] * 9])  # packed documents and padding
  want = _reference_attention(q, k, v, seg, window)
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a), jnp.float64) for a in (q, k, v)]
    def loss(q, k, v, block):
      o = attention.causal_attention(q, k, v, seg, sliding_window=window, block_size=block)
      return jnp.sum(o * jnp.cos(o)), o

    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    g_plain, o_plain = fn(*args, None)
    g_block, o_block = fn(*args, 4)  # 4 does not divide 11: the ragged last block is exercised
    np.testing.assert_allclose(o_plain, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(o_block, want, rtol=1e-10, atol=1e-12)
    for a, c in zip(g_plain, g_block, strict=True):
      np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)


def test_attention_segments_do_not_see_each_other():
  layer = attention.Attention(16, 2, 8, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (1, 10, 16))
  seg = jnp.array([[1] * 4 + [2] * 6])
  pos = jnp.array([list(range(4)) + list(range(6))])
  call = nnx.jit(lambda m, x, p, s: m(x, p, s))
  y = call(layer, x, pos, seg)
  y_changed = call(layer, x.at[:, :4].set(7.0), pos, seg)  # rewrite the whole first document
  np.testing.assert_allclose(y[:, 4:], y_changed[:, 4:], rtol=1e-6, atol=1e-6)
  assert not np.allclose(y[:, :4], y_changed[:, :4])
  # The second document alone (its own positions) gives the same outputs.
  np.testing.assert_allclose(call(layer, x[:, 4:], pos[:, 4:], seg[:, 4:]), y[:, 4:], rtol=1e-5,
                             atol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
  ks = jax.random.split(jax.random.key(4), 2)
  q = jax.random.normal(ks[0], (1, 1, 1, 8))
  k = jax.random.normal(ks[1], (1, 1, 1, 8))

  @jax.jit
  def score_fn(m, n):
    return jnp.sum(attention.rope(q, m[None, None]) * attention.rope(k, n[None, None]))

  def score(m, n):
    return float(score_fn(jnp.int32(m), jnp.int32(n)))

  np.testing.assert_allclose(score(5, 2), score(105, 102), rtol=1e-4)
  np.testing.assert_allclose(score(0, 7), score(30, 37), rtol=1e-4)
  assert abs(score(5, 2) - score(5, 3)) > 1e-3  # and it does depend on the offset
  np.testing.assert_allclose(jax.jit(attention.rope)(q, jnp.zeros((1, 1), jnp.int32)), q,
                             rtol=1e-6)


def _reference_conv(x, kernel, seg):
  x, kernel, seg = np.asarray(x, np.float64), np.asarray(kernel, np.float64), np.asarray(seg)
  b, t, _ = x.shape
  w = kernel.shape[0]
  y = np.zeros_like(x)
  for bi in range(b):
    for i in range(t):
      for j in range(w):
        src = i - (w - 1) + j
        if src >= 0 and seg[bi, src] == seg[bi, i]:
          y[bi, i] += kernel[j] * x[bi, src]
  return y


def test_causal_conv_refuses_an_unknown_activation():
  with pytest.raises(ValueError, match="activation='gelu'"):
    conv.CausalConv(5, 4, activation="gelu", rngs=nnx.Rngs(0))


def test_causal_conv_matches_reference_and_streams():
  layer = conv.CausalConv(5, 4, rngs=nnx.Rngs(0))
  layer.kernel[...] = jax.random.normal(jax.random.key(5), (4, 5))
  x = jax.random.normal(jax.random.key(6), (2, 9, 5))
  seg = jnp.array([[1] * 3 + [2] * 6, [1] * 9])
  call = nnx.jit(lambda m, x, s, st: m(x, s, st))
  y, state = call(layer, x, seg, None)
  np.testing.assert_allclose(y, _reference_conv(x, layer.kernel[...], seg), rtol=1e-5,
                             atol=1e-5)
  for split in (1, 2, 5):  # splits inside and across the segment boundary
    y1, s1 = call(layer, x[:, :split], seg[:, :split], None)
    y2, s2 = call(layer, x[:, split:], seg[:, split:], s1)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, c: np.testing.assert_array_equal(a, c), s2, state)


@pytest.mark.parametrize("activation", ["identity", "silu"])
@pytest.mark.parametrize("b,t,d,w", [(2, 9, 5, 4), (2, 2, 3, 4), (1, 7, 4, 1), (3, 16, 6, 3)])
def test_causal_conv_hand_written_backward_equals_autodiff_float64(b, t, d, w, activation):
  """Gradients wrt x, kernel and the carried inputs, through y and the new state, with
  segment boundaries inside the call and in the state, T < W - 1 included; the fused SiLU's
  forward is the unfused conv followed by jax.nn.silu."""
  with jax.enable_x64(True):
    ks = jax.random.split(jax.random.key(t * d + w), 5)
    x = jax.random.normal(ks[0], (b, t, d), jnp.float64)
    kernel = jax.random.normal(ks[1], (w, d), jnp.float64)
    rng = np.random.RandomState(t)
    seg = jnp.asarray(rng.randint(0, 2, (b, t)).cumsum(1), jnp.int32)
    state_seg = jnp.asarray(rng.randint(-1, 1, (b, w - 1)), jnp.int32)
    w_y = jax.random.normal(ks[3], (b, t, d), jnp.float64)
    w_s = jax.random.normal(ks[4], (b, w - 1, d), jnp.float64)

    def loss(fn):
      def f(x, kernel, state_x):
        y, new = fn(x, kernel, seg, conv.ConvState(state_x, state_seg), activation)
        return jnp.sum(y * w_y) + jnp.sum(new.x * w_s)
      return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    state_x = jax.random.normal(ks[2], (b, w - 1, d), jnp.float64)
    value, grads = loss(conv.causal_conv)(x, kernel, state_x)

    def reference(x, kernel, seg, state, activation):  # autodiff of the unfused forward
      y, new = conv._conv_forward(x, kernel, seg, state)  # noqa: SLF001
      return (jax.nn.silu(y) if activation == "silu" else y), new

    ref_value, ref_grads = loss(reference)(x, kernel, state_x)
    np.testing.assert_allclose(value, ref_value, rtol=1e-13)
    for g, r in zip(grads, ref_grads, strict=True):
      np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)
