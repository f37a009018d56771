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
"""The hand-written backward of the MLP memory's anchored chunk (nl_jax.memory.mlp_chunk).

Checked in float64 against autodiff of chunk_ops' algebra (chunk_backward='autodiff', the
path it replaces) for one chunk under every option it covers, against finite differences,
and through whole scans (ragged last chunk, resets, streaming) against autodiff and the token
loop. The token-loop comparisons of test_mlp_memory go through it too (it is the default).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nl_jax.memory import MLPMemory, gates, mlp_chunk
from nl_jax.memory.mlp import ACTIVATIONS, MLPWeights
from nl_jax.memory.types import rule_coefficients
from tests.memory.helpers import assert_trees_close, loss_and_grads, random_inputs

C, K, H = 8, 6, 5


def _chunk_args(rule, residual, seed):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s))  # noqa: E731
  v_dim = K if residual else 1
  anchor = MLPWeights(0.5 * f(v_dim, H), 0.5 * f(H, K))
  w0 = MLPWeights(0.5 * f(v_dim, H), 0.5 * f(H, K))
  k = f(C, K)
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  eta = jax.nn.sigmoid(f(C))
  coef = rule_coefficients(rule, eta, jnp.sum(k * k, axis=-1))
  log_a = gates.safe_log_gate(0.5 + 0.5 * jax.nn.sigmoid(f(C) + 2.0))
  return (anchor, w0, k, f(C, v_dim), coef.lr, eta, coef.erase, log_a, f(C, K))


def _memory(rule, read_at, residual, step, activation="silu", backward="manual", **cfg):
  return MLPMemory(in_dim=K, hidden_dim=H, out_dim=None if residual else 1,
                   activation=activation, residual=residual, rule=rule, semantics="anchored",
                   chunk_size=C, read_at=read_at, remat=False, implementation="chunked",
                   anchored_step=step, chunk_backward=backward, **cfg)


def _chunk_fn(mem, with_q):
  def fn(anchor, w0, k, v, lr, eta, erase, log_a, q):
    ch = dict(k=k, v=v, lr=lr, erase=erase, eta=eta, log_a=log_a, valid=jnp.ones(C))
    if with_q:
      ch["q"] = q
    out, (w_end, _) = mem._chunk((w0, None, anchor), ch)
    return out, w_end
  return fn


# By default four combinations that between them take every rule, read, residual form and step
# scale; the other 68 are marked slow.
_DEFAULT = {("dgd", "pre", True, "mean"), ("paper_l2", "post", False, "mean_all"),
            ("gd", None, True, "sum"), ("dgd", "anchor", False, "sum")}
CASES = [pytest.param(*c, marks=() if c in _DEFAULT else pytest.mark.slow)
         for c in itertools.product(("dgd", "paper_l2", "gd"), ("pre", "post", "anchor", None),
                                    (True, False), ("mean", "sum", "mean_all"))]


@pytest.mark.parametrize("rule,read_at,residual,step", CASES)
def test_one_chunk_equals_autodiff_of_chunk_ops(rule, read_at, residual, step):
  with jax.enable_x64(True):
    args = _chunk_args(rule, residual, seed=len(rule) + 3 * residual)
    with_q = read_at is not None
    manual = _memory(rule, read_at or "post", residual, step)
    assert manual._manual_chunk
    auto = _memory(rule, read_at or "post", residual, step, backward="autodiff")
    o1, vjp1 = jax.vjp(_chunk_fn(manual, with_q), *args)
    o2, vjp2 = jax.vjp(_chunk_fn(auto, with_q), *args)
    assert_trees_close(o1, o2, 1e-13, "forward")
    ct = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape), o1)
    g1, g2 = vjp1(ct), vjp2(ct)
    if not with_q:  # q is not an input of a write-only chunk (its cotangent is zero or None)
      g1, g2 = g1[:-1], g2[:-1]
    assert_trees_close(g1, g2, 1e-12, "cotangents")


@pytest.mark.parametrize("activation", [
    pytest.param(a, marks=() if a == "gelu" else pytest.mark.slow) for a in ACTIVATIONS])
def test_every_activation_equals_autodiff(activation):
  with jax.enable_x64(True):
    args = _chunk_args("dgd", True, seed=11)
    manual = _memory("dgd", "pre", True, "mean", activation)
    auto = _memory("dgd", "pre", True, "mean", activation, backward="autodiff")
    o1, vjp1 = jax.vjp(_chunk_fn(manual, True), *args)
    o2, vjp2 = jax.vjp(_chunk_fn(auto, True), *args)
    ct = jax.tree.map(lambda x: jnp.sin(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape), o1)
    assert_trees_close(o1, o2, 1e-13, "forward")
    assert_trees_close(vjp1(ct), vjp2(ct), 1e-12, f"cotangents ({activation})")


@pytest.mark.parametrize("rule", ("dgd", "gd"))
def test_finite_differences(rule):
  with jax.enable_x64(True):
    args = _chunk_args(rule, True, seed=5)
    spec = mlp_chunk.ChunkSpec(jax.nn.silu, True, rule == "dgd", 1.0 / C, 1.0, rule != "gd",
                               "pre")
    fn = lambda *a: mlp_chunk.anchored_chunk(spec, *a)  # noqa: E731
    check_grads(fn, args, order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_options_outside_the_form_use_autodiff():
  assert not _memory("dgd", "pre", True, "mean", momentum=True)._manual_chunk
  assert not _memory("dgd", "pre", True, "mean", output_error="current")._manual_chunk
  assert not _memory("dgd", "pre", True, "mean", first_order=True)._manual_chunk
  assert not _memory("dgd", "pre", True, "mean", backward="autodiff")._manual_chunk
  with pytest.raises(ValueError, match="chunk_backward"):
    _memory("dgd", "pre", True, "mean", backward="hand")


@pytest.mark.parametrize("read_at,with_reset", [
    ("pre", True), pytest.param("post", False, marks=pytest.mark.slow),
    pytest.param("anchor", True, marks=pytest.mark.slow)])
def test_whole_scan_equals_autodiff_and_token_loop(read_at, with_reset):
  """Ragged T (a padded last chunk), resets at chunk starts, then the token loop."""
  b, t, c = 2, 45, 8
  with jax.enable_x64(True):
    mems = {bw: MLPMemory(in_dim=K, hidden_dim=H, rule="dgd", semantics="anchored",
                          chunk_size=c, read_at=read_at, chunk_backward=bw)
            for bw in ("manual", "autodiff")}
    params = mems["manual"].init_params(jax.random.PRNGKey(0), dtype=jnp.float64)
    inputs = random_inputs(jax.random.PRNGKey(1), (b,), t, K, K, jnp.float64,
                           eta_range=(0.05, 0.5))
    if with_reset:
      reset = jnp.zeros((b, t), bool).at[0, 16].set(True).at[1, 24].set(True)
      inputs = inputs._replace(reset=reset)
    _, o1, s1, g1 = loss_and_grads(mems["manual"], params, inputs, "chunked")
    _, o2, s2, g2 = loss_and_grads(mems["autodiff"], params, inputs, "chunked")
    _, o3, s3, g3 = loss_and_grads(mems["manual"], params, inputs, "sequential")
    assert_trees_close((o1, s1), (o2, s2), 1e-12, "forward vs autodiff")
    assert_trees_close(g1, g2, 1e-11, "grads vs autodiff")
    assert_trees_close((o1, s1), (o3, s3), 1e-10, "forward vs token loop")
    assert_trees_close(g1, g3, 1e-9, "grads vs token loop")
