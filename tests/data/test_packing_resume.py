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
"""Exact resume of the packed data stream at every step boundary (issue 20, defect 1).

grain 0.2.18's concat-then-split state writes ``(-1, -1)`` both for "no leftover" and for
"a whole leftover document" and compares it as a tuple, which a JSON round trip (every
checkpoint) turns into a list; restoring such a boundary skipped or emptied a document.
"""

import numpy as np
import pytest

from nl_jax import data
from nl_jax.data import pipeline


def _mismatches(alignment: int, seq_len: int, batch_size: int, boundaries: int) -> list[int]:
  """Boundaries k where an iterator restored from state k (JSON bytes) differs."""
  cfg = data.DataConfig(seq_len=seq_len, batch_size=batch_size, shard_index=0, shard_count=1,
                        seed=0, alignment=alignment, num_threads=0, prefetch_buffer_size=0)
  it = pipeline.make_process_iterator(cfg, 0, 1)
  states, batches = [], []
  for _ in range(boundaries + 2):
    states.append(it.get_state())  # JSON bytes, exactly what the checkpoint stores.
    batches.append(next(it))
  bad = []
  for k in range(boundaries):
    restored = pipeline.make_process_iterator(cfg, 0, 1)
    restored.set_state(states[k])
    for j in range(2):
      got = next(restored)
      if not all(np.array_equal(got[x], batches[k + j][x]) for x in got):
        bad.append(k)
        break
  return bad


@pytest.mark.parametrize("alignment,seq_len,batch_size", [(16, 64, 2), (1, 64, 2)])
def test_restore_at_every_boundary_gives_the_uninterrupted_stream(alignment, seq_len,
                                                                   batch_size):
  assert _mismatches(alignment, seq_len, batch_size, boundaries=300) == []

