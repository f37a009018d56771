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
"""No padded chunk for a call that starts on a chunk boundary (start_aligned): the same results
as the general path (which pads for a traced start position), with fewer chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nl_jax.memory import MatrixMemory, aligned_chunks
from tests.memory.helpers import assert_trees_close, random_inputs


def _scan_lengths(fn, *args):
  """Trip counts of every scan in fn's program (nested ones included)."""
  out = []

  def walk(jaxpr):
    for e in jaxpr.eqns:
      if e.primitive.name == "scan":
        out.append(e.params["length"])
      for v in e.params.values():
        for sub in v if isinstance(v, (tuple, list)) else (v,):
          sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
          if hasattr(sub, "eqns"):
            walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return out


@pytest.mark.parametrize("t,c", [(8, 4), (7, 4), (3, 4)])
def test_layout_round_trip(t, c):
  x = jnp.arange(2 * t, dtype=jnp.float32).reshape(2, t)
  pos = jnp.array([0, 4 * c], jnp.int32)
  for aligned in (True, False):
    offset, n = aligned_chunks.layout(t, c, pos, aligned)
    assert n == (-(-t // c) if aligned else -(-(t + c - 1) // c))
    chunks = aligned_chunks.to_chunks(x, offset, n, c, -1.0)
    assert chunks.shape == (2, n, c)
    np.testing.assert_array_equal(aligned_chunks.from_chunks(chunks, offset, t), x)
  # a traced start mid-chunk: the first token sits at slot position % C
  offset, n = aligned_chunks.layout(t, c, jnp.array([1, c + 2], jnp.int32), False)
  chunks = aligned_chunks.to_chunks(x, offset, n, c, -1.0).reshape(2, -1)
  assert float(chunks[0, 1]) == float(x[0, 0]) and float(chunks[1, 2]) == float(x[1, 0])


@pytest.mark.parametrize("semantics", ["exact", "anchored"])
def test_matrix_memory_start_aligned(semantics):
  """Resets given (aligned chunks): start_aligned drops the extra chunk, same outputs."""
  b, t, c = 2, 16, 4
  mem = MatrixMemory(key_dim=5, value_dim=5, chunk_size=c, rule="dgd", semantics=semantics)
  params = mem.init_params(jax.random.key(0), scale=1.0)
  inputs = random_inputs(jax.random.key(1), (b,), t, 5, 5, jnp.float32, momentum=False)
  inputs = inputs._replace(reset=jnp.zeros((b, t), bool).at[1, 8].set(True))
  state = mem.init_state(params, (b,))

  def run(aligned):
    return mem.scan(params, state, inputs, implementation="chunked", start_aligned=aligned)

  assert_trees_close(jax.jit(lambda: run(True))(), jax.jit(lambda: run(False))(), rtol=1e-6)
  assert _scan_lengths(lambda: run(True)) == [t // c]
  assert _scan_lengths(lambda: run(False)) == [t // c + 1]


def test_reset_flags_split_chunk_starts_from_resets_inside():
  # rows: a document at the first slot; one at the first valid slot after front padding; one
  # inside the chunk; a reset on a padded slot (no document there); none.
  reset = jnp.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]],
                    bool)
  valid = jnp.array([[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]],
                    jnp.float32)
  at_start, inside = aligned_chunks.reset_flags(reset, valid)
  np.testing.assert_array_equal(at_start, [True, True, False, False, False])
  np.testing.assert_array_equal(inside, [False, False, True, False, False])
