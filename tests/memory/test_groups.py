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
"""Memory groups (nl_jax.memory.groups): one batched write of G memories that share keys and
gates equals each memory written on its own (MLPMemory.scan), the token loop equals the chunk,
padding writes nothing, and resets restore the initial state per sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.memory import MLPMemory, groups
from nl_jax.memory.aligned_chunks import ScanChunks
from tests.memory.helpers import assert_trees_close, random_inputs

B, G, H, C, D = 2, 3, 2, 4, 5


def _group(seed, momentum, dtype=jnp.float64):
  mem = MLPMemory(in_dim=D, hidden_dim=6, rule="dgd", semantics="anchored", chunk_size=C,
                  momentum=momentum, read_at="pre")
  params = mem.init_params(jax.random.key(seed), (G, H), dtype=dtype)
  state = mem.init_state(params, (B, G, H))
  inp = random_inputs(jax.random.key(seed + 1), (B, H), C, D, D, dtype, momentum=momentum)
  v = jax.random.normal(jax.random.key(seed + 2), (B, G, H, C, D), dtype)
  return mem, params, state, inp, v


@pytest.mark.parametrize("momentum", [False, True])
def test_group_write_equals_each_memory_alone(momentum):
  with jax.enable_x64(True):
    mem, params, state, inp, v = _group(0, momentum)
    valid = jnp.ones((B, C), jnp.float64)
    reads, new = groups.write_chunk(mem, state, inp.keys, v, inp.eta, inp.alpha, inp.momentum,
                                    inp.queries, valid)
    for g in range(G):
      one = jax.tree.map(lambda x, g=g: x[:, g], state)
      ref_reads, ref = mem.scan(params, one, inp._replace(values=v[:, g]),
                                implementation="chunked", start_aligned=True)
      assert_trees_close(reads[:, g], ref_reads, 1e-12, f"reads of memory {g}")
      got = jax.tree.map(lambda x, g=g: x[:, g], new)
      assert_trees_close((got.memory, got.momentum, got.anchor),
                         (ref.memory, ref.momentum, ref.anchor), 1e-12, f"state of memory {g}")


@pytest.mark.parametrize("momentum", [False, True])
def test_token_writes_equal_the_chunk(momentum):
  """C token_write calls at a fixed anchor reach the chunk's closed-form weights."""
  with jax.enable_x64(True):
    mem, _, state, inp, v = _group(3, momentum)
    _, new = groups.write_chunk(mem, state, inp.keys, v, inp.eta, inp.alpha, inp.momentum,
                                None, jnp.ones((B, C), jnp.float64))
    for b in range(B):
      carry = jax.tree.map(lambda x, b=b: x[b], (state.memory, state.momentum, state.anchor))
      mu = inp.momentum if momentum else jnp.ones_like(inp.eta)
      for t in range(C):
        w, s = groups.token_write(mem, carry, inp.keys[b, :, t], v[b, :, :, t], inp.eta[b, :, t],
                                  inp.alpha[b, :, t], mu[b, :, t])
        carry = (w, s, carry[2])
      want = jax.tree.map(lambda x, b=b: x[b], (new.memory, new.momentum))
      assert_trees_close(carry[:2], want, 1e-12, f"sequence {b}")


def test_padding_writes_nothing_and_keeps_the_anchor():
  with jax.enable_x64(True):
    mem, _, state, inp, v = _group(5, momentum=False)
    valid = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], jnp.float64)
    eta, alpha, _ = groups.mask_padding(valid, inp.eta, inp.alpha, None)
    _, padded = groups.write_chunk(mem, state, inp.keys, v, eta, alpha, None, None, valid)
    short = lambda x: x[..., :2, :]  # noqa: E731
    _, two = groups.write_chunk(mem, state, short(inp.keys), short(v), inp.eta[..., :2],
                                inp.alpha[..., :2], None, None, jnp.ones((B, 2), jnp.float64))
    assert_trees_close(jax.tree.map(lambda x: x[0], padded.memory),
                       jax.tree.map(lambda x: x[0], two.memory), 1e-12, "padded row")
    # the incomplete chunk keeps its anchor, the complete one moves it to the new weights
    assert_trees_close(jax.tree.map(lambda x: x[0], padded.anchor),
                       jax.tree.map(lambda x: x[0], state.anchor), 0.0, "anchor kept")
    assert_trees_close(jax.tree.map(lambda x: x[1], padded.anchor),
                       jax.tree.map(lambda x: x[1], padded.memory), 0.0, "anchor moved")


def test_reset_rows():
  mem, params, state, inp, v = _group(7, momentum=True, dtype=jnp.float32)
  _, written = groups.write_chunk(mem, state, inp.keys, v, inp.eta, inp.alpha, inp.momentum,
                                  None, jnp.ones((B, C), jnp.float32))
  reset = groups.reset_rows(written, params.initial, jnp.array([True, False]))
  for x, init in zip(reset.memory, params.initial, strict=True):
    np.testing.assert_array_equal(x[0], init)
  for x in reset.momentum:
    np.testing.assert_array_equal(x[0], 0.0)
  assert_trees_close(jax.tree.map(lambda x: x[1], reset),
                     jax.tree.map(lambda x: x[1], written), 0.0, "untouched row")


@pytest.mark.parametrize("time_axis", [1, 2])
def test_scan_chunks_round_trip(time_axis):
  t, c = 7, 3
  shape = (2, t, 4) if time_axis == 1 else (2, 3, t, 4)
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  for aligned in (True, False):
    chunks = ScanChunks.make(c, t, jnp.array([0, 2 * c], jnp.int32), aligned)
    y = chunks.split(x, -1.0, time_axis)
    assert y.shape[0] == chunks.n and y.shape[1] == 2 and y.shape[time_axis + 1] == c
    np.testing.assert_array_equal(chunks.join(y, time_axis), x)


@pytest.mark.parametrize("rule,momentum,step", [("dgd", False, "mean_all"), ("dgd", True, "mean"),
                                               ("gd", False, "mean")])
def test_groups_sharing_one_chunk_solve_equal_groups_alone_with_gradients(rule, momentum, step):
  """Two groups of different shapes (vector memories with reads; scalar, non-residual ones, as
  the self-modifying Titans' gates) written with one shared_chunk: the same reads, states and
  gradients (keys, gates, targets, states) as each group computing its own."""
  with jax.enable_x64(True):
    vec = MLPMemory(in_dim=D, hidden_dim=6, rule=rule, semantics="anchored", chunk_size=C,
                    momentum=momentum, read_at="post", anchored_step=step)
    sca = MLPMemory(in_dim=D, hidden_dim=3, out_dim=1, residual=False, rule=rule,
                    semantics="anchored", chunk_size=C, momentum=momentum, anchored_step=step)
    states = [m.init_state(m.init_params(jax.random.key(i), (g, H), dtype=jnp.float64),
                           (B, g, H))._replace(position=None)  # differentiable leaves only
              for i, (m, g) in enumerate(((vec, G), (sca, 2)))]
    inp = random_inputs(jax.random.key(5), (B, H), C, D, D, jnp.float64, momentum=momentum)
    vs = (jax.random.normal(jax.random.key(6), (B, G, H, C, D), jnp.float64),
          jax.random.normal(jax.random.key(7), (B, 2, H, C, 1), jnp.float64))
    valid = jnp.ones((B, C), jnp.float64).at[1, -1].set(0.0)
    eta, alpha, mu = groups.mask_padding(valid, inp.eta, inp.alpha, inp.momentum)

    def run(diff, share):
      states, k, eta, alpha, vs = diff
      shared = (groups.shared_chunk(vec, k, eta, alpha, mu, valid, jnp.float64) if share
                else None)
      outs = [groups.write_chunk(m, st, k, v, eta, alpha, mu, q, valid, shared)
              for m, st, v, q in zip((vec, sca), states, vs, (inp.queries, None), strict=True)]
      loss = jnp.sum(outs[0][0] ** 2) + sum(
          jnp.sum(jax.tree.leaves(o[1].memory)[0] ** 2) for o in outs)
      return loss, outs

    diff = (states, inp.keys, eta, alpha, vs)
    (_, shared_out), shared_grad = jax.value_and_grad(run, has_aux=True)(diff, True)
    (_, alone_out), alone_grad = jax.value_and_grad(run, has_aux=True)(diff, False)
    assert_trees_close(shared_out, alone_out, 1e-12, "reads and states")
    assert_trees_close(shared_grad, alone_grad, 1e-12, "gradients")
