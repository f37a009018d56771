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
"""A scan over chunks whose backward keeps the carried state of only some chunks.

A chunked memory's scan (a CMS level, a self-modifying Titans memory) carries fast weights
from chunk to chunk. With each chunk rematerialised (``jax.checkpoint`` of the body), the
backward still saves the carry that enters every chunk: n copies of the fast state for n
chunks, a share of the step's memory that grows with T. ``group=g`` nests the scan
(two-level checkpointing): an outer scan over n // g groups saves the carry at group starts
only; in the backward each group's g chunks run forward again from their saved carry before
their own backward. The saved state falls from n copies to about n / g + g (2 sqrt(n) at
``group=0``, which picks g = sqrt(n) per scan) for one more forward of the chunk loop. The
chunks, their order and every operation are those of the flat scan, so the outputs and
gradients are the same.

Inside a block that is itself rematerialised (``LMConfig.remat``), the block's backward first
runs its forward again, chunk loops included, only to rebuild the states that the chunk
scans' own backward then reruns from. The scans name those states (`STATE_NAME`: the carry
at each point their backward keeps one, and the last) and their outputs (`OUTPUT_NAME`); the
block remat policy `save_scan_states` keeps exactly these, so the block's recomputation skips
the chunk loops (``LMConfig.remat_policy="memory_states"``). Without that policy the names do
nothing.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

STATE_NAME = "memory_scan_state"
OUTPUT_NAME = "memory_scan_outputs"


def save_scan_states():
  """The ``jax.checkpoint`` policy that keeps the chunk scans' named states and outputs (and
  nothing else) for the backward of an enclosing rematerialised block."""
  return jax.checkpoint_policies.save_only_these_names(STATE_NAME, OUTPUT_NAME)


def check_group(owner: str, group: int) -> None:
  """Raises a ValueError naming ``owner`` unless group is an int >= 0."""
  if isinstance(group, bool) or not isinstance(group, int) or group < 0:
    raise ValueError(f"{owner}={group!r} must be 1 (keep every chunk's state), an int >= 2 "
                     "(chunks between two kept states) or 0 (about sqrt(chunks) per scan)")


def group_size(group: int, n: int) -> int | None:
  """Chunks per group for a scan of n chunks, or None when nesting would not save memory.

  Nested, the backward holds the n // g group-start states, the states of the chunks past
  the last whole group, and one group's g states while it runs that group: fewer than the
  flat scan's n, or the flat scan is kept."""
  if group == 1:
    return None
  g = max(2, round(math.sqrt(n))) if group == 0 else group
  m = n // g
  return g if m + (n - m * g) + g < n else None


def remat_scan(body: Callable, carry: Any, xs: Any, *, remat: bool, group: int = 1):
  """``jax.lax.scan(body, carry, xs)`` with each chunk rematerialised (``remat``) and, with a
  ``group``, the carry saved every ``group`` chunks only (module docstring). The chunks past
  the last whole group run as a flat scan after the groups."""
  if not remat:
    return jax.lax.scan(body, carry, xs)
  chunk = jax.checkpoint(body)

  def kept(f):  # f's carry is one the backward keeps: named for an enclosing remat policy
    return lambda c, x: f(checkpoint_name(c, STATE_NAME), x)

  n = jax.tree.leaves(xs)[0].shape[0]
  g = group_size(group, n)
  if g is None:
    carry, ys = jax.lax.scan(kept(chunk), carry, xs)
    return checkpoint_name(carry, STATE_NAME), checkpoint_name(ys, OUTPUT_NAME)
  m = n // g
  head = jax.tree.map(lambda x: x[:m * g].reshape((m, g) + x.shape[1:]), xs)
  tail = jax.tree.map(lambda x: x[m * g:], xs)

  @jax.checkpoint
  def one_group(c, xs_g):
    return jax.lax.scan(chunk, c, xs_g)

  carry, ys = jax.lax.scan(kept(one_group), carry, head)
  ys = jax.tree.map(lambda y: y.reshape((m * g,) + y.shape[2:]), ys)
  if n > m * g:
    carry, ys_tail = jax.lax.scan(kept(chunk), carry, tail)
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), ys, ys_tail)
  return checkpoint_name(carry, STATE_NAME), checkpoint_name(ys, OUTPUT_NAME)
