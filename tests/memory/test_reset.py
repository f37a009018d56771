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
"""Document resets (MemoryInputs.reset): packed documents never read each other's writes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.memory import MatrixMemory, MLPMemory
from tests.memory.helpers import assert_trees_close, loss_and_grads, random_inputs

B, T, C = 2, 24, 4
# Document starts per sequence: aligned to C (the chunked path's contract); row 1 has three.
STARTS = ((0, 8), (0, 4, 16))


def _reset_mask():
  reset = np.zeros((B, T), bool)
  for b, starts in enumerate(STARTS):
    reset[b, list(starts)] = True
  return jnp.asarray(reset)


def _memory(kind, **cfg):
  if kind == "matrix":
    return MatrixMemory(key_dim=5, value_dim=5, chunk_size=C, **cfg)
  return MLPMemory(in_dim=5, hidden_dim=7, chunk_size=C, semantics="anchored", **cfg)


def _params(mem, key, dtype):
  if isinstance(mem, MatrixMemory):
    return mem.init_params(key, scale=1.0, dtype=dtype)
  return mem.init_params(key, dtype=dtype)


CASES = [("matrix", dict(rule="dgd")),
         pytest.param("matrix", dict(rule="gd", momentum=True), marks=pytest.mark.slow),
         pytest.param("matrix", dict(rule="dgd", semantics="anchored"), marks=pytest.mark.slow),
         ("mlp", dict(rule="dgd", momentum=True))]


@pytest.mark.parametrize("kind,cfg", CASES)
def test_reset_equals_separate_documents_and_chunked_equals_sequential(kind, cfg):
  with jax.enable_x64(True):
    mem = _memory(kind, **cfg)
    params = _params(mem, jax.random.PRNGKey(0), jnp.float64)
    inputs = random_inputs(jax.random.PRNGKey(1), (B,), T, 5, 5, jnp.float64,
                           momentum=mem.momentum)._replace(reset=_reset_mask())
    _, out_seq, state_seq, grads_seq = loss_and_grads(mem, params, inputs, "sequential")
    _, out_ch, state_ch, grads_ch = loss_and_grads(mem, params, inputs, "chunked")
    assert_trees_close(out_ch, out_seq, 1e-10, "outputs chunked vs sequential")
    assert_trees_close(state_ch.memory, state_seq.memory, 1e-10, "state chunked vs sequential")
    assert_trees_close(grads_ch, grads_seq, 1e-9, "grads chunked vs sequential")
    # Each document alone, from a fresh state, gives the same reads: nothing crosses a boundary.
    for b, starts in enumerate(STARTS):
      bounds = list(starts) + [T]
      for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        doc = jax.tree.map(lambda x, s=s, e=e, b=b: None if x is None else x[b:b + 1, s:e],
                           inputs._replace(reset=None))
        state = mem.init_state(params, (1,))
        out, _ = mem.scan(params, state, doc, implementation="sequential")
        np.testing.assert_allclose(out_seq[b, s:e], out[0], rtol=1e-10, atol=1e-12)


def test_reset_streaming_split_equals_one_call():
  with jax.enable_x64(True):
    mem = _memory("matrix", rule="dgd", momentum=True)
    params = _params(mem, jax.random.PRNGKey(2), jnp.float64)
    inputs = random_inputs(jax.random.PRNGKey(3), (B,), T, 5, 5, jnp.float64,
                           momentum=True)._replace(reset=_reset_mask())
    state0 = mem.init_state(params, (B,))
    out, state = mem.scan(params, state0, inputs, implementation="chunked")
    split = 10  # not a multiple of C: the second call starts mid-chunk
    first = jax.tree.map(lambda x: x[:, :split], inputs)
    second = jax.tree.map(lambda x: x[:, split:], inputs)
    out1, mid = mem.scan(params, state0, first, implementation="chunked")
    out2, end = mem.scan(params, mid, second, implementation="chunked")
    np.testing.assert_allclose(jnp.concatenate([out1, out2], 1), out, rtol=1e-10, atol=1e-12)
    assert_trees_close(end.memory, state.memory, 1e-10, "final state")


def test_misaligned_reset_is_rejected_by_chunked_path():
  mem = _memory("matrix", rule="dgd")
  params = _params(mem, jax.random.PRNGKey(0), jnp.float32)
  reset = np.zeros((B, T), bool)
  reset[1, 6] = True
  inputs = random_inputs(jax.random.PRNGKey(1), (B,), T, 5, 5)._replace(reset=jnp.asarray(reset))
  state = mem.init_state(params, (B,))
  with pytest.raises(ValueError, match=r"reset is set at index \(1, 6\).*chunk_size=4"):
    mem.scan(params, state, inputs, implementation="chunked")
  mem.scan(params, state, inputs, implementation="sequential")  # exact anywhere
  with pytest.raises(ValueError, match="inputs.reset has shape"):
    mem.scan(params, state, inputs._replace(reset=jnp.zeros((B, T + 1), bool)))
  with pytest.raises(ValueError, match="reset must be bool or integer"):
    mem.scan(params, state, inputs._replace(reset=jnp.zeros((B, T), jnp.float32)))


@pytest.mark.parametrize("kind,cfg", [
    ("matrix", dict(rule="dgd")),  # gated_delta_scan's path
    pytest.param("matrix", dict(rule="gd", momentum=True), marks=pytest.mark.slow),
    ("mlp", dict(rule="dgd", momentum=True))])
def test_reset_off_the_chunk_grid_under_jit_is_causal(kind, cfg):
  """Under jit a misaligned reset cannot be refused: it changes no output before it, and the
  memory restarts at the next chunk start (row 1: a document at 6, chunks of 4), or after the
  call when it falls in the last chunk (row 0: at 22)."""
  mem = _memory(kind, **cfg)
  params = _params(mem, jax.random.PRNGKey(0), jnp.float32)
  inputs = random_inputs(jax.random.PRNGKey(1), (B,), T, 5, 5, momentum=mem.momentum)
  state = mem.init_state(params, (B,))
  scan = jax.jit(lambda inp: mem.scan(params, state, inp, implementation="chunked"))
  reset = jnp.zeros((B, T), bool)
  base, _ = scan(inputs._replace(reset=reset))
  out, end = scan(inputs._replace(reset=reset.at[1, 6].set(True).at[0, 22].set(True)))
  np.testing.assert_array_equal(out[1, :6], base[1, :6])
  np.testing.assert_array_equal(out[0], base[0])
  tail = jax.tree.map(lambda x: None if x is None else x[1:, 8:], inputs)
  fresh_out, _ = mem.scan(params, mem.init_state(params, (1,)), tail, implementation="chunked")
  np.testing.assert_allclose(out[1, 8:], fresh_out[0], rtol=1e-5, atol=1e-6)
  init = mem.init_state(params, (B,))
  assert_trees_close(jax.tree.map(lambda x: x[0], end.memory),
                     jax.tree.map(lambda x: x[0], init.memory), 0.0, "row 0 restarts after")
