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
"""Block sizes and execution options of the memory-scan kernels."""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryScanConfig:
  """Static options of `memory_scan` (hashable: it is a jit static argument).

  Attributes:
    chunk_size: tokens per chunk C (a power of two >= 8). Exact semantics do not depend on it;
      it trades the O(C^2) intra-chunk work against the number of sequential chunk steps.
    block_v: rows of the state (value dimension) one kernel instance owns; None = all of them
      on TPU and min(d_v, 64) on GPU (where the block lives in registers). Rows of a matrix
      memory evolve independently, so the value axis splits across cores.
    interpret: run the Pallas kernels in interpret mode (CPU tests). True, False, or a
      ``pltpu.InterpretParams`` for the TPU kernels.
    num_warps: Triton warps per program (GPU kernel).
    num_stages: Triton software-pipelining stages (GPU kernel).
  """
  chunk_size: int = 64
  block_v: int | None = None
  interpret: Any = False
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    c = self.chunk_size
    if not isinstance(c, int) or c < 8 or c & (c - 1):
      raise ValueError(f"MemoryScanConfig: chunk_size must be a power of two >= 8, got {c!r}")
    if self.block_v is not None and (not isinstance(self.block_v, int) or self.block_v < 1):
      raise ValueError(f"MemoryScanConfig: block_v must be a positive int or None, got "
                       f"{self.block_v!r}")
    for name in ("num_warps", "num_stages"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise ValueError(f"MemoryScanConfig: {name} must be a positive int, got "
                         f"{getattr(self, name)!r}")

  def value_block(self, value_dim: int) -> int:
    """The value-block size for a state with value_dim rows; raises if it does not divide."""
    bv = value_dim if self.block_v is None else self.block_v
    if value_dim % bv:
      raise ValueError(f"MemoryScanConfig: block_v={bv} must divide value_dim={value_dim}")
    return bv
